"""The background core processes: their command lines, their progress and their end.

:class:`CoreJob` runs ``python -m WeakTumorSegLib <command> ... --progress json`` in a process group of its
own, turns the core's JSON progress lines into a fraction and a message, and once the process has
succeeded loads its result; :class:`SegmentationJob` is the ``segment`` run (stages :data:`STAGES`), whose
results are loaded by a callback (the training job is in :mod:`.improve`). :func:`killProcessTree` stops
such a process with its children. Nothing here touches the GUI.
"""

from __future__ import annotations

import json
import logging
import math
import os
import queue
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .core import MAX_SCALP_MARGIN_MM, SegmentationError, coreRoot, pythonExecutable, segment_outputs
from .slicerbase import _

#: Human-readable stage names and their share of the run time, for the progress bar.
STAGES = {
    "start": (_("Starting (loading the model)"), 0.05),
    "read": (_("Reading volumes"), 0.05),
    "preprocess": (_("Preprocessing"), 0.05),
    "classify": (_("Classifying patches"), 0.2),
    "segment": (_("Segmenting"), 0.25),
    "convert": (_("Computing the healthy variant"), 0.15),
    "seeds": (_("Computing seeds (RISE)"), 0.15),
    "postprocess": (_("Scoring slices"), 0.05),
    "write": (_("Writing results"), 0.05),
}
#: Output stem of a run (``--name``); the input volume's name is used for the nodes instead.
OUTPUT_NAME = "case"
#: Exit status of a core command that was interrupted (Ctrl+C).
INTERRUPTED = 130

ProgressCallback = Callable[[str, float, str], None]


@dataclass(frozen=True)
class SegmentOptions:
    """The options of one run, as ``segment`` takes them; None leaves the bundle's setting."""

    device: str = "auto"
    threshold: float | None = None
    scalpMargin: float | None = None
    seeds: bool = False
    seedMasks: int | None = None
    threads: int | None = None

    def check(self) -> None:
        """Raise :class:`SegmentationError` for a filter threshold or scalp margin the core would refuse."""
        if self.threshold is not None and not 0.0 <= float(self.threshold) <= 1.0:
            raise SegmentationError(f"filter threshold {self.threshold} is not in [0, 1]")
        if self.scalpMargin is not None and not 0.0 <= float(self.scalpMargin) < MAX_SCALP_MARGIN_MM:
            raise SegmentationError(f"scalp margin {self.scalpMargin} mm is not in [0, {MAX_SCALP_MARGIN_MM:g})")

    def arguments(self) -> list[str]:
        """The command-line options of ``segment`` for these options."""
        args = ["--device", self.device or "auto"]
        for option, value in (("--threshold", self.threshold), ("--scalp-margin", self.scalpMargin)):
            if value is not None:
                args += [option, f"{float(value):g}"]
        if self.seeds:
            args.append("--seeds")
            if self.seedMasks:
                args += ["--seed-masks", str(int(self.seedMasks))]
        if self.threads:
            args += ["--threads", str(int(self.threads))]
        return args


def segmentCommand(bundlePath: Path, outDir: Path, channelFiles: Mapping[str, Path],
                   options: SegmentOptions) -> list[str]:
    """The ``python -m WeakTumorSegLib segment`` command line for one patient."""
    channels = [arg for channel, path in channelFiles.items() for arg in ("--channel", f"{channel}={path}")]
    return coreCommand("segment", "--bundle", str(bundlePath), "--out", str(outDir), "--name", OUTPUT_NAME,
                       *channels, *options.arguments())


def coreCommand(subcommand: str, *arguments: str) -> list[str]:
    """``python -m WeakTumorSegLib <subcommand> <arguments> --progress json`` with the core's interpreter."""
    return [pythonExecutable(), "-m", "WeakTumorSegLib", subcommand, *arguments, "--progress", "json"]


def outputFiles(outDir: Path) -> dict[str, Path]:
    """The files ``segment`` writes into ``outDir``, by kind (``segmentation``, ``slices``, ``report``, ...)."""
    return {kind: outDir / name for kind, name in segment_outputs(OUTPUT_NAME).items()}


def coreEnvironment() -> dict[str, str]:
    """The environment of the core's process: this one with the core's folder first on ``PYTHONPATH``."""
    env = dict(os.environ)
    root = str(coreRoot())
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONIOENCODING"] = "utf-8"
    return env


def _readLines(stream, sink: queue.Queue, kind: str) -> None:
    for line in iter(stream.readline, ""):
        sink.put((kind, line.rstrip("\r\n")))
    stream.close()


def _startProcess(command: list[str], workdir: Path) -> subprocess.Popen:
    kwargs: dict[str, Any] = {}
    if os.name == "nt":
        kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP | getattr(subprocess, "CREATE_NO_WINDOW", 0)
    else:
        kwargs["start_new_session"] = True  # own process group: Cancel stops the whole tree
    logging.info("WeakTumorSeg: running " + " ".join(command))
    return subprocess.Popen(command, env=coreEnvironment(), cwd=str(workdir), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, encoding="utf-8",
                            errors="replace", bufsize=1, **kwargs)


def progressDisplay(bar: Any, label: Any) -> ProgressCallback:
    """A progress callback that shows the fraction on ``bar`` (a progress bar, in percent) and the message on
    ``label`` (the GUI's; anything with ``value`` and ``text`` will do)."""

    def show(stage: str, fraction: float, message: str) -> None:
        bar.value, label.text = int(round(100 * fraction)), message

    return show


class StageProgress:
    """The fraction done of a run from the stages reported so far, weighted as in ``stages`` (by default
    :data:`STAGES`, ``seeds`` left out unless the run computes them)."""

    def __init__(self, seeds: bool, stages: Mapping[str, tuple[str, float]] = STAGES) -> None:
        self.stages = stages
        self.weights = {stage: weight for stage, (_label, weight) in stages.items() if seeds or stage != "seeds"}
        self.done: list[str] = []
        self.fraction = 0.0

    def update(self, stage: str, done: int, total: int) -> str:
        """Record that ``done`` of ``total`` steps of ``stage`` are over; returns the message to show."""
        if stage in self.weights:  # the stages before it are over
            self.done += [s for s in list(self.weights)[: list(self.weights).index(stage)] if s not in self.done]
        finished = sum(self.weights[s] for s in self.done)
        current = self.weights.get(stage, 0.0) * (min(done, total) / total if total else 1.0)
        self.fraction = max(self.fraction, min(1.0, (finished + current) / sum(self.weights.values())))
        label = self.stages.get(stage, (stage, 0))[0]
        return f"{label} ({done}/{total})" if total > 1 else label


class CoreJob:
    """A running core process (``--progress json``). Call :meth:`poll` regularly (from the thread that owns
    the scene); once the process has succeeded, :meth:`_load` is called there and its value becomes ``result``.

    ``state`` is ``running``, ``succeeded``, ``failed`` or ``cancelled``; ``result`` or ``error`` (an
    :attr:`errorClass`, the core's one-line message) is set when it ends, and :meth:`_ended` runs once then.
    ``progress`` turns the core's stages into a fraction and a message (as :class:`StageProgress` does);
    ``inputNames`` maps file names in the core's messages to the names to show instead. Subclasses say what
    the job does (:attr:`what`), load the result and may tidy up when it ends.
    """

    #: What the job does, in its messages ("the segmentation was cancelled").
    what = "core process"
    #: The error a failed job raises and keeps in ``error``.
    errorClass: type[SegmentationError] = SegmentationError

    def __init__(self, command: list[str], workdir: Path, progress: StageProgress,
                 progressCallback: ProgressCallback | None = None,
                 inputNames: Mapping[str, str] | None = None) -> None:
        self.command = command
        self.workdir = workdir
        self.inputNames = dict(inputNames or {})
        self.progressCallback = progressCallback
        self.state = "running"
        self.result: Any = None
        self.error: SegmentationError | None = None
        self.stderrLines: list[str] = []
        self.doneEvent: dict = {}
        self._progress = progress
        self._lines: queue.Queue = queue.Queue()
        self.process = _startProcess(command, workdir)
        self._readers = [threading.Thread(target=_readLines, args=(stream, self._lines, kind), daemon=True)
                         for stream, kind in ((self.process.stdout, "out"), (self.process.stderr, "err"))]
        for reader in self._readers:
            reader.start()
        self._report("start", 0, 1)

    @property
    def running(self) -> bool:
        return self.state == "running"

    @property
    def fraction(self) -> float:
        """Share of the run done so far (0 to 1)."""
        return self._progress.fraction

    def _load(self) -> Any:
        """The job's result, once the process has succeeded (raise to fail the job)."""
        return self.doneEvent

    def _ended(self) -> None:
        """Called once when the job has ended (succeeded, failed or cancelled)."""

    def _report(self, stage: str, done: int, total: int) -> None:
        message = self._progress.update(stage, done, total)
        if self.progressCallback:
            self.progressCallback(stage, self.fraction, message)

    def _drain(self) -> None:
        while True:
            try:
                kind, line = self._lines.get_nowait()
            except queue.Empty:
                return
            if kind == "err" and line.strip():
                self.stderrLines.append(line)
                logging.info(f"WeakTumorSeg core: {line}")
            elif kind == "out":
                self._handleOutput(line)

    def _handleOutput(self, line: str) -> None:
        try:
            event = json.loads(line)
        except ValueError:
            event = None
        if not isinstance(event, dict):
            if line.strip():
                logging.info(f"WeakTumorSeg core: {line}")
        elif event.get("stage") == "done":
            self.doneEvent = event
        elif "stage" in event:
            self._report(str(event["stage"]), int(event.get("done", 0)), int(event.get("total", 0)))

    def poll(self) -> bool:
        """Forward progress; when the process has ended, load the result. True once the job is over."""
        if not self.running:
            return True
        self._drain()
        if self.process.poll() is None:
            return False
        for reader in self._readers:
            reader.join(timeout=5)
        self._drain()
        try:
            self._finish()
        finally:
            self._ended()
        return True

    def _finish(self) -> None:
        if self.process.returncode != 0:
            self._fail(self.errorClass(self._errorMessage(), "\n".join(self.stderrLines)))
            logging.error(f"WeakTumorSeg: {self.what} failed: {self.error}\n" + self.error.details)
            return
        try:
            self.result = self._load()
        except Exception as exc:  # loading the result failed: report it like a core error
            self._fail(exc if isinstance(exc, SegmentationError) else self.errorClass(
                f"could not load the results ({type(exc).__name__}: {exc})"))
            logging.exception(f"WeakTumorSeg: loading the {self.what}'s results failed")
            return
        self.state = "succeeded"
        if self.progressCallback:
            self.progressCallback("done", 1.0, _("Done"))

    def _fail(self, error: SegmentationError) -> None:
        self.error = error
        self.state = "failed"

    def _errorMessage(self) -> str:
        lines = [ln for ln in self.stderrLines if ln.strip()]
        errors = [ln for ln in lines if ": error:" in ln]
        message = errors[-1].split(": error:", 1)[1].strip() if errors else (lines[-1].strip() if lines else "")
        if self.process.returncode == INTERRUPTED and not errors:
            message = f"the {self.what} was interrupted"
        if not message:
            message = f"the {self.what} process ended with exit code {self.process.returncode}"
        for path, name in self.inputNames.items():  # temporary files -> node names
            message = message.replace(path, name)
        return message

    def wait(self, timeout: float | None = None) -> Any:
        """Block until the job ends; return its result or raise its error (:attr:`errorClass`)."""
        deadline = time.monotonic() + (math.inf if timeout is None else timeout)
        while not self.poll():
            if time.monotonic() > deadline:
                self.cancel()
                raise self.errorClass(f"the {self.what} took longer than {timeout:g} s and was cancelled")
            time.sleep(0.05)
        if self.state == "succeeded":
            return self.result
        if self.state == "cancelled":
            raise self.errorClass(f"the {self.what} was cancelled")
        raise self.error  # type: ignore[misc]

    def cancel(self) -> None:
        """Stop the whole process tree; no result is loaded."""
        if not self.running:
            return
        killProcessTree(self.process)
        for reader in self._readers:
            reader.join(timeout=2)
        self.state = "cancelled"
        self._ended()
        logging.info(f"WeakTumorSeg: {self.what} cancelled")


class SegmentationJob(CoreJob):
    """A running ``segment`` process in the temporary folder ``workdir`` (removed when it ends);
    ``loadResults()`` turns its outputs into nodes and becomes ``result``. ``inputNames`` maps the temporary
    input files to the names of their volume nodes (the core's messages name the files)."""

    what = "segmentation"

    def __init__(self, command: list[str], workdir: Path, loadResults: Callable[[], Any], seeds: bool = False,
                 inputNames: Mapping[str, str] | None = None, progressCallback: ProgressCallback | None = None) -> None:
        self.loadResults = loadResults
        names = {path: f"volume '{name}'" for path, name in (inputNames or {}).items()}
        super().__init__(command, workdir, StageProgress(seeds), progressCallback, names)

    def _load(self) -> Any:
        return self.loadResults()

    def _ended(self) -> None:
        """Nothing is added to the scene unless it succeeded; the temporary files go either way."""
        shutil.rmtree(self.workdir, ignore_errors=True)


def killProcessTree(process: subprocess.Popen, grace: float = 3.0) -> None:
    """Terminate a process started in its own process group (session), children included."""
    if process.poll() is not None:
        return
    if os.name == "nt":
        subprocess.run(["taskkill", "/F", "/T", "/PID", str(process.pid)], capture_output=True)
    else:
        _signalGroup(process, signal.SIGTERM)
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            pass
        _signalGroup(process, signal.SIGKILL)  # also whatever is left of the group
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        logging.error(f"WeakTumorSeg: process {process.pid} did not stop")


def _signalGroup(process: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:
        pass

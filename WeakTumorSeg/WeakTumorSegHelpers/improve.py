"""Improve the model: train a bundle's final segmenter on reviewed exports, in the background.

:func:`trainCommand` is the ``python -m WeakTumorSegLib train --from-bundle`` command line and
:class:`TrainingJob` runs it (the process handling of :class:`~.job.CoreJob`: own process group, JSON progress,
cancel), shows its stages as a fraction and a message (:class:`TrainingProgress`) and calls back with the new
bundle's folder or with the core's one-line error. :func:`train` checks the folders and starts it (the Logic's
``train``); :func:`defaultOutputPath` is where the new bundle goes unless the user says otherwise.

:class:`ImprovePanel` is the GUI section "Improve the model" (handed the module's widgets, as the other panels
are); everything above it is GUI-free.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import slicer

from .core import MODELS_DIR, SegmentationError, readBundle
from .installer import installDependencies
from .job import CoreJob, ProgressCallback, StageProgress, coreCommand, progressDisplay
from .slicerbase import _, qt

#: The training's steps and their share of its run time, for the progress bar (the per-epoch stages
#: ``final round<r> <e>/<n>`` count towards ``final``).
TRAINING_STAGES = {
    "start": (_("Starting (reading the bundle and the exports)"), 0.05),
    "final labels": (_("Labelling the patients with the bundle"), 0.3),
    "final": (_("Training the final segmenter"), 0.65),
}
#: A per-epoch stage of the final segmenter (``training/loop.py``): round, epoch, epochs.
EPOCH_STAGE = re.compile(r"final[ _]round(\d+) (\d+)/(\d+)")
#: The exports' manifests (``<volume>_manifest.csv``, written by :mod:`.export`).
EXPORT_MANIFESTS = "*_manifest.csv"
#: Where a new bundle goes when the current one's folder is not the place for it: the shipped bundles'
#: folder (replaced when the extension is updated) or a folder this user cannot write to.
USER_MODELS_DIR = Path.home() / "WeakTumorSeg" / "Models"
#: Suffix of an improved bundle's folder name (``<bundle>-improved``, then ``-improved-2``, ...).
IMPROVED_SUFFIX = "-improved"


class TrainingError(SegmentationError):
    """The training could not start or failed; ``str(error)`` is one readable line."""


class TrainingProgress(StageProgress):
    """The fraction done of a training from the stages reported so far (:data:`TRAINING_STAGES`); the
    epochs of ``rounds`` rounds (more when the core reports more) fill the ``final`` share."""

    def __init__(self, rounds: int = 1) -> None:
        super().__init__(True, TRAINING_STAGES)
        self.rounds = max(1, int(rounds))

    def update(self, stage: str, done: int, total: int) -> str:
        epoch = EPOCH_STAGE.fullmatch(stage)
        if epoch is None:
            return super().update(stage, done, total)
        run, current, epochs = (int(g) for g in epoch.groups())
        steps = max(int(total), 1)  # batches of this epoch
        super().update("final", ((run - 1) * epochs + current - 1) * steps + min(int(done), steps),
                       max(self.rounds, run) * epochs * steps)
        label = TRAINING_STAGES["final"][0] + (_(" (round {run})").format(run=run) if run > 1 else "")
        return _("{label}: epoch {epoch}/{epochs}").format(label=label, epoch=current, epochs=epochs)


def trainCommand(bundlePath: str | os.PathLike, cohortFolder: str | os.PathLike,
                 annotationsFolder: str | os.PathLike, outPath: str | os.PathLike, device: str = "auto",
                 threads: int | None = None) -> list[str]:
    """The ``python -m WeakTumorSegLib train --from-bundle`` command line: the final segmenter of the bundle
    trained on the cohort's patients with the reviewed exports, written with the bundle to ``outPath``."""
    arguments = ["--from-bundle", str(bundlePath), "--data", str(cohortFolder), "--annotations",
                 str(annotationsFolder), "--out", str(outPath)]
    if threads:
        arguments += ["--threads", str(int(threads))]
    return coreCommand("train", *arguments, "--device", device or "auto")


def defaultOutputPath(bundlePath: str | os.PathLike) -> Path:
    """Where the improved bundle goes by default: ``<bundle>-improved`` beside the bundle (``-improved-2``,
    ``-3``, ... when taken, and for a bundle improved already), or in :data:`USER_MODELS_DIR` when the bundle
    is a shipped one or its folder is not writable. Never a folder, or a run folder (``.run``), that exists."""
    bundle = Path(bundlePath).absolute()
    folder = bundle.parent
    if folder.resolve().is_relative_to(MODELS_DIR.resolve()) or not os.access(folder, os.W_OK):
        folder = USER_MODELS_DIR
    stem = re.sub(rf"{IMPROVED_SUFFIX}(-\d+)?$", "", bundle.name) + IMPROVED_SUFFIX
    for n in range(1, 10000):
        path = folder / (stem if n == 1 else f"{stem}-{n}")
        if not path.exists() and not runFolder(path).exists():
            return path
    raise TrainingError(f"{folder}: no free name for the new bundle ({stem}-<n>)")


def runFolder(outPath: Path) -> Path:
    """The core's run folder of a training that writes ``outPath`` (checkpoints and logs)."""
    return outPath.with_name(outPath.name + ".run")


class TrainingJob(CoreJob):
    """A running ``train --from-bundle`` process that writes the bundle ``outPath``; ``result`` is the new
    bundle's folder. When it ends, ``trainedCallback(path)`` is called for a success and
    ``failedCallback(message)`` for a failure (not for a cancel); the run folder it made goes unless it
    succeeded (so that training again with the same name starts afresh)."""

    what = "training"
    errorClass = TrainingError

    def __init__(self, command: list[str], outPath: str | os.PathLike, progressCallback: ProgressCallback | None = None,
                 trainedCallback: Callable[[Path], None] | None = None,
                 failedCallback: Callable[[str], None] | None = None, rounds: int = 1) -> None:
        self.outPath = Path(outPath).absolute()
        self.trainedCallback, self.failedCallback = trainedCallback, failedCallback
        self._newRunFolder = not runFolder(self.outPath).exists()
        self.outPath.parent.mkdir(parents=True, exist_ok=True)
        super().__init__(command, self.outPath.parent, TrainingProgress(rounds), progressCallback)

    def _load(self) -> Path:
        """The bundle the core reports (``--out`` if it reports none), read as the module will read it."""
        return readBundle(self.doneEvent.get("bundle") or self.outPath).path

    def _ended(self) -> None:
        if self.state != "succeeded" and self._newRunFolder:
            shutil.rmtree(runFolder(self.outPath), ignore_errors=True)
        if self.state == "succeeded" and self.trainedCallback:
            self.trainedCallback(self.result)
        elif self.state == "failed" and self.failedCallback:
            self.failedCallback(str(self.error))


def train(bundlePath: str | os.PathLike, cohortFolder: str | os.PathLike, annotationsFolder: str | os.PathLike,
          outPath: str | os.PathLike | None = None, device: str = "auto", threads: int | None = None,
          wait: bool = True, progressCallback: ProgressCallback | None = None,
          trainedCallback: Callable[[Path], None] | None = None, failedCallback: Callable[[str], None] | None = None,
          timeout: float | None = None) -> Path | TrainingJob:
    """Train the final segmenter of the bundle on the cohort folder's patients (``<id>/<id>_<channel>.nii.gz``)
    with the reviewed exports in ``annotationsFolder`` (``<volume>_mask.nii.gz`` and ``<volume>_manifest.csv``),
    into a new bundle ``outPath`` (default: :func:`defaultOutputPath`); the bundle itself is not changed.

    Before starting, raises :class:`SegmentationError` for an unusable bundle and :class:`TrainingError` when a
    folder is missing or ``outPath`` or its run folder (``<outPath>.run``) exists. With ``wait=True`` blocks and
    returns the new bundle's folder (or raises :class:`TrainingError` with the core's one-line message); with
    ``wait=False`` returns the :class:`TrainingJob` to :meth:`~TrainingJob.poll`.
    """
    bundle = readBundle(bundlePath).path
    cohort, annotations = Path(cohortFolder), Path(annotationsFolder)
    if not str(cohortFolder) or not cohort.is_dir():
        raise TrainingError(f"{cohort}: cohort folder not found")
    if not str(annotationsFolder) or not annotations.is_dir():
        raise TrainingError(f"{annotations}: export folder not found")
    if not any(annotations.glob(EXPORT_MANIFESTS)):
        raise TrainingError(f"{annotations}: no exported manifest (<volume>_manifest.csv); review and export first")
    out = Path(outPath) if outPath is not None and str(outPath) not in ("", ".") else defaultOutputPath(bundle)
    if out.exists():
        raise TrainingError(f"{out}: already exists; choose another folder for the new bundle")
    if runFolder(out).is_dir() and any(runFolder(out).iterdir()):
        raise TrainingError(f"{runFolder(out)}: an earlier training's run folder is in the way; remove it or "
                            "choose another folder for the new bundle")
    job = TrainingJob(trainCommand(bundle, cohort.absolute(), annotations.absolute(), out.absolute(), device,
                                   threads), out, progressCallback, trainedCallback, failedCallback)
    return job.wait(timeout) if wait else job


class ImprovePanel:
    """The "Improve the model" section: the export and cohort folders, the new bundle's folder (refilled with
    :func:`defaultOutputPath` whenever another bundle is chosen), Train / Cancel with a progress bar and a
    status line. A trained bundle becomes the module's bundle (the parameter node's ``bundlePath``)."""

    def __init__(self, ui: Any, logic: Any, parameterNode: Callable[[], Any]) -> None:
        self.ui = ui
        self.logic = logic
        self.parameterNode = parameterNode
        self.job: TrainingJob | None = None
        self.ui.trainProgressBar.setVisible(False)
        self.timer = qt.QTimer()
        self.timer.setInterval(200)
        self.timer.connect("timeout()", self.poll)
        self.ui.trainButton.connect("clicked(bool)", self.onTrainButton)
        self.ui.bundlePathLineEdit.connect("currentPathChanged(QString)", self.onBundleChanged)
        for folder in (self.ui.trainingExportsPathLineEdit, self.ui.trainingCohortPathLineEdit):
            folder.connect("currentPathChanged(QString)", self.update)
        self.update()

    @property
    def running(self) -> bool:
        return self.job is not None and self.job.running

    def cleanup(self) -> None:
        if self.running:
            self.job.cancel()
        self.timer.stop()

    def onBundleChanged(self, path: str = "") -> None:
        """A free folder for the improved bundle of the bundle now chosen."""
        parameterNode = self.parameterNode()
        if parameterNode and not self.running and path and Path(path).is_dir():
            parameterNode.improvedBundlePath = defaultOutputPath(path)
        self.update()

    def update(self, *args: Any) -> None:
        """Train, or Cancel while training; Train needs the bundle and both folders (as their fields show them:
        the parameter node may not have them yet)."""
        button = self.ui.trainButton
        if self.running:
            button.text, button.enabled = _("Cancel"), True
            button.toolTip = _("Stop the training; the model bundle stays as it is")
            return
        fields = (self.ui.bundlePathLineEdit, self.ui.trainingExportsPathLineEdit, self.ui.trainingCohortPathLineEdit)
        ready = all(field.currentPath and Path(field.currentPath).is_dir() for field in fields)
        button.text, button.enabled = _("Train"), ready
        button.toolTip = (_("Train the bundle's final segmenter on the reviewed exports into a new bundle (minutes)")
                          if ready else _("Choose the model bundle, the export folder and the cohort folder"))

    def onTrainButton(self) -> None:
        if self.running:
            self.job.cancel()
            self.ended(_("Training cancelled; the model bundle is unchanged."))
            return
        p = self.parameterNode()
        with slicer.util.tryWithErrorDisplay(_("Training could not start."), waitCursor=True):
            if not installDependencies(interactive=True):
                self.ui.trainStatusLabel.text = _("Dependencies are not installed; nothing was done.")
                return
            self.job = self.logic.train(p.bundlePath, p.trainingCohort, p.trainingExports, p.improvedBundlePath,
                                        device=p.device, wait=False, trainedCallback=self.onTrained,
                                        failedCallback=self.onFailed,
                                        progressCallback=progressDisplay(self.ui.trainProgressBar,
                                                                         self.ui.trainStatusLabel))
            self.ui.trainProgressBar.setVisible(True)  # the job has shown its start on it
            self.timer.start()
            self.update()

    def poll(self) -> None:
        if self.job is None or self.job.poll():  # over: the callbacks have shown how it ended
            self.ended()

    def ended(self, message: str | None = None) -> None:
        self.timer.stop()
        self.ui.trainProgressBar.setVisible(False)
        if message is not None:
            self.ui.trainStatusLabel.text = message
        self.update()

    def onTrained(self, path: Path) -> None:
        """The new bundle becomes the module's bundle (and so the one that Segment uses)."""
        self.ui.trainStatusLabel.text = _("Trained {path}; it is now the selected model bundle.").format(path=path)
        if self.parameterNode():
            self.parameterNode().bundlePath = path

    def onFailed(self, message: str) -> None:
        self.ui.trainStatusLabel.text = _("Training failed: {error}").format(error=message)
        slicer.util.errorDisplay(_("Training failed: {error}").format(error=message),
                                 detailedText=getattr(self.job.error, "details", "") or None)

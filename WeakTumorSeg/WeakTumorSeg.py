"""WeakTumorSeg: 3D Slicer module for weakly supervised brain-tumour segmentation.

The module is a thin shell around the core library ``WeakTumorSegLib``: it writes the input volume
nodes to temporary files, runs ``python -m WeakTumorSegLib segment --progress json`` in a background
process, and loads the results back as a segmentation node (segments ``Tumor`` and optionally
``Positive seeds`` / ``Negative seeds``) and a table node with one row per slice for review.
No algorithm lives here.

The Logic (:class:`WeakTumorSegLogic`) only uses MRML, VTK and the Python standard library, so it
runs both inside Slicer and against the ``slicer-core`` wheel (no Qt); it never imports ``qt``,
``ctk`` or ``slicer.app``. The GUI classes are defined with stand-in base classes when Slicer's GUI
is not available, so that importing this file in a plain Python with ``slicer-core`` works.
"""

from __future__ import annotations

import csv
import importlib.metadata
import importlib.util
import json
import logging
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import vtk

import slicer
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode

try:  # Slicer's GUI (absent with the slicer-core wheel, where only the Logic is usable)
    import qt
except ImportError:
    qt = None

if qt is not None:
    from slicer.parameterNodeWrapper import WithinRange, parameterNodeWrapper
    from slicer.ScriptedLoadableModule import (
        ScriptedLoadableModule,
        ScriptedLoadableModuleLogic,
        ScriptedLoadableModuleTest,
        ScriptedLoadableModuleWidget,
    )
    from slicer.util import VTKObservationMixin

    try:
        from slicer.i18n import tr as _
    except ImportError:  # Slicer < 5.4

        def _(text: str) -> str:
            return text

    GUI_AVAILABLE = True
else:
    GUI_AVAILABLE = False

    def _(text: str) -> str:
        return text

    class ScriptedLoadableModule:  # type: ignore[no-redef]
        """Stand-in (no Slicer GUI)."""

        def __init__(self, parent: Any) -> None:
            self.parent = parent

    class ScriptedLoadableModuleWidget:  # type: ignore[no-redef]
        """Stand-in (no Slicer GUI)."""

        def __init__(self, parent: Any = None) -> None:
            self.parent = parent

    class ScriptedLoadableModuleLogic:  # type: ignore[no-redef]
        """Stand-in (no Slicer GUI)."""

        def __init__(self, parent: Any = None) -> None:
            self.parent = parent

    class ScriptedLoadableModuleTest:  # type: ignore[no-redef]
        """Stand-in (no Slicer GUI); deliberately not a unittest.TestCase so pytest ignores it."""

    class VTKObservationMixin:  # type: ignore[no-redef]
        """Stand-in (no Slicer GUI)."""

        def __init__(self) -> None:
            pass

    class WithinRange:  # type: ignore[no-redef]
        """Stand-in (no Slicer GUI)."""

        def __init__(self, *args: Any) -> None:
            pass

    def parameterNodeWrapper(cls):  # type: ignore[no-redef]
        return cls


#: Folder of this file (the module's folder).
MODULE_DIR = Path(__file__).resolve().parent
#: Most input channels a bundle may ask for (one volume selector each in the GUI).
MAX_CHANNELS = 4
#: Largest scalp margin (mm) the GUI offers; the core accepts up to :data:`CORE_MAX_SCALP_MARGIN` (excluded).
MAX_SCALP_MARGIN = 50.0
CORE_MAX_SCALP_MARGIN = 1000.0
#: Attribute that marks the nodes this module created (value ``"WeakTumorSeg"``).
CREATED_BY = "WeakTumorSeg.CreatedBy"
#: Node reference roles linking the results to their input volume and slice table.
INPUT_VOLUME_ROLE = "WeakTumorSeg.InputVolume"
SLICE_TABLE_ROLE = "WeakTumorSeg.SliceTable"
#: Segment names written by the core (``Tumor``, ``Positive seeds``, ``Negative seeds``).
TUMOR_SEGMENT = "Tumor"
SEED_SEGMENTS = ("Positive seeds", "Negative seeds")
#: Review statuses of a slice (column ``status`` of the table, and of the export manifest).
STATUSES = ("kept", "flagged", "corrected", "excluded")
#: Columns of the slice table: the core's ``<name>_slices.csv`` plus ``status``.
SLICE_COLUMNS = ("slice", "p_tumor", "difference_score", "flagged", "flag_reason", "tumor_pixels", "status")
MANIFEST_COLUMNS = ("volume", "slice", "status", "difference_score", "tumor_pixels")
#: PyTorch requirement of the core (installed separately from Resources/requirements.txt).
TORCH_REQUIREMENT = "torch>=2.1"
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

PAPER_CITATION = (
    "J. J. Yoo, K. Namdar, M. W. Wagner, L. Nobre, U. Tabori, C. Hawkins, B. B. Ertl-Wagner, F. Khalvati: "
    "A novel GAN-based paradigm for weakly supervised brain tumor segmentation of MR images "
    "(arXiv:2211.05269)"
)
RISE_CITATION = (
    "V. Petsiuk, A. Das, K. Saenko: RISE: Randomized Input Sampling for Explanation of Black-box Models (BMVC 2018)"
)


class ExportExistsError(FileExistsError):
    """Export files exist already; ``existing`` lists their names."""

    def __init__(self, folder: Path, existing: Sequence[str]) -> None:
        super().__init__(f"{folder}: {', '.join(existing)} already exist(s); "
                         "allow overwriting or choose another folder")
        self.folder = folder
        self.existing = list(existing)


class SegmentationError(RuntimeError):
    """A segmentation or export could not be done; ``str(error)`` is one readable line."""

    def __init__(self, message: str, details: str = "") -> None:
        super().__init__(message)
        self.details = details


# ------------------------------------------------------------------------------------------------
# Where things are


def coreRoot() -> Path:
    """Folder that holds ``WeakTumorSegLib``: the module's folder once installed, the checkout root
    in a source tree."""
    for folder in (MODULE_DIR, MODULE_DIR.parent):
        if (folder / "WeakTumorSegLib" / "__init__.py").is_file():
            return folder
    raise SegmentationError(f"WeakTumorSegLib was not found next to the module ({MODULE_DIR}); reinstall the extension")


def resourcesRoot() -> Path:
    """``Resources`` folder with the model bundles (``Models``) and sample data (``SampleData``)."""
    return coreRoot() / "Resources"


def defaultBundlePath() -> Path:
    """The shipped default bundle: ``$WEAKTUMORSEG_BUNDLE`` if set, else the one named in
    ``Resources/Models/DEFAULT`` (the same rule as the core's command line)."""
    env = os.environ.get("WEAKTUMORSEG_BUNDLE")
    if env:
        return Path(env)
    marker = resourcesRoot() / "Models" / "DEFAULT"
    if not marker.is_file():
        raise SegmentationError(f"{marker}: no default model bundle is installed; choose a bundle folder")
    return marker.parent / marker.read_text().strip()


def _defaultBundleOrEmpty() -> Path:
    try:
        return defaultBundlePath()
    except SegmentationError:
        return Path()


def sampleDataFolders() -> list[Path]:
    """Sample patient folders shipped in ``Resources/SampleData`` (``<id>/<id>_<channel>.nii.gz``), real
    patients first (the synthetic ``PHANTOM_*`` sample is for the phantom stand-in bundle)."""
    try:
        root = resourcesRoot() / "SampleData"
    except SegmentationError:
        return []
    folders = [p for p in root.glob("*/") if p.is_dir() and any(p.glob(f"{p.name}_*.nii*"))]
    return sorted(folders, key=lambda p: (p.name.startswith("PHANTOM_"), p.name))


def pythonExecutable() -> str:
    """Python interpreter that runs the core: Slicer's ``PythonSlicer`` inside Slicer, else this one."""
    exe = Path(sys.executable)
    if exe.name.lower().startswith("python"):
        return str(exe)
    for candidate in (exe.with_name("PythonSlicer"), exe.with_name("PythonSlicer.exe")):
        if candidate.is_file():
            return str(candidate)
    return shutil.which("PythonSlicer") or str(exe)


def safeFileStem(name: str) -> str:
    """A file-name stem made from a node name (letters, digits, ``-``, ``_``, ``.``)."""
    stem = re.sub(r"[^\w.-]+", "_", name).strip("._")
    return stem or "volume"


# ------------------------------------------------------------------------------------------------
# Model bundles and devices (read without importing torch)


@dataclass(frozen=True)
class BundleInfo:
    """What the module needs to know about a model bundle (from its ``bundle.json``)."""

    path: Path
    name: str
    channels: tuple[str, ...]
    referenceChannel: str
    threshold: float
    description: str
    scalpMargin: float = 0.0
    #: signs that the bundle's training run failed (``training.warnings``; empty for a sound run)
    trainingWarnings: tuple[str, ...] = ()


def readBundleInfo(path: str | os.PathLike) -> BundleInfo:
    """Read a bundle folder's ``bundle.json``; raise :class:`SegmentationError` when it is not a bundle."""
    folder = Path(path)
    config_path = folder / "bundle.json"
    if not str(path) or not folder.is_dir():
        raise SegmentationError(f"{folder}: not a folder; choose a model bundle folder (it holds bundle.json)")
    try:
        config = json.loads(config_path.read_text())
    except FileNotFoundError:
        raise SegmentationError(f"{folder}: not a model bundle (no bundle.json)") from None
    except (OSError, ValueError) as exc:
        raise SegmentationError(f"{config_path}: unreadable bundle description ({exc})") from None
    channels = tuple(str(c) for c in config.get("channels") or ())
    if not channels:
        raise SegmentationError(f"{config_path}: the bundle lists no input channels")
    reference = str(config.get("flair_channel") or channels[0])
    if reference not in channels:
        reference = channels[0]
    inference = config.get("inference") or {}
    threshold = float(inference.get("filter_threshold", 0.2))
    try:
        scalpMargin = float(inference.get("scalp_margin_mm") or 0.0)  # null or absent: off
    except (TypeError, ValueError):
        scalpMargin = float("nan")
    if not 0.0 <= scalpMargin < CORE_MAX_SCALP_MARGIN:
        raise SegmentationError(f"{config_path}: inference.scalp_margin_mm is not a number of mm in [0, 1000)")
    warnings = tuple(str(w) for w in ((config.get("training") or {}).get("warnings") or ()))
    return BundleInfo(folder, str(config.get("name") or folder.name), channels, reference, threshold,
                      str(config.get("description") or ""), scalpMargin, warnings)


def _defaultBundleScalpMargin() -> float:
    """The default bundle's scalp margin (capped at :data:`MAX_SCALP_MARGIN`), 0 without a default bundle."""
    try:
        return min(readBundleInfo(defaultBundlePath()).scalpMargin, MAX_SCALP_MARGIN)
    except SegmentationError:
        return 0.0


@dataclass(frozen=True)
class DeviceChoice:
    """One entry of the device menu: the core's ``--device`` value, a label, and whether it can be used."""

    value: str
    label: str
    enabled: bool = True


_PROBE_CODE = """
import json
try:
    import torch
except Exception as exc:
    print(json.dumps({"torch": None, "error": str(exc)}))
else:
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    print(json.dumps({"torch": torch.__version__, "cuda_build": torch.version.cuda,
                      "gpus": [torch.cuda.get_device_name(i) for i in range(n)]}))
"""


def deviceChoices(probe: Mapping[str, Any] | None) -> list[DeviceChoice]:
    """Device menu entries for the result of a device probe (``None``: not probed yet)."""
    if probe is None:
        return [DeviceChoice("auto", _("auto (checking for a GPU...)")), DeviceChoice("cpu", _("CPU"))]
    if not probe.get("torch"):
        return [DeviceChoice("auto", _("auto (PyTorch is installed on first Segment)")), DeviceChoice("cpu", _("CPU")),
                DeviceChoice("cuda", _("CUDA (install PyTorch first)"), False)]
    gpus = list(probe.get("gpus") or [])
    if gpus:
        choices = [DeviceChoice("auto", _("auto (GPU: {name})").format(name=gpus[0])), DeviceChoice("cpu", _("CPU"))]
        if len(gpus) == 1:
            choices.append(DeviceChoice("cuda", _("CUDA: {name}").format(name=gpus[0])))
        else:
            choices += [DeviceChoice(f"cuda:{i}", f"CUDA:{i}: {name}") for i, name in enumerate(gpus)]
        return choices
    why = _("PyTorch is a CPU-only build") if not probe.get("cuda_build") else _("no GPU visible to PyTorch")
    return [DeviceChoice("auto", _("auto (CPU: {why})").format(why=why)), DeviceChoice("cpu", _("CPU")),
            DeviceChoice("cuda", _("CUDA ({why})").format(why=why), False)]


class DeviceProbe:
    """Asks, in a background process, which PyTorch and GPUs the core's interpreter sees."""

    def __init__(self, python: str | None = None) -> None:
        self.result: dict | None = None
        flags = getattr(subprocess, "CREATE_NO_WINDOW", 0) if os.name == "nt" else 0
        self._process = subprocess.Popen([python or pythonExecutable(), "-c", _PROBE_CODE], stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
                                         creationflags=flags)

    def poll(self) -> dict | None:
        """The probe's result once the process has finished, else ``None``."""
        if self.result is None and self._process.poll() is not None:
            out, err = self._process.communicate()
            try:
                self.result = json.loads(out.strip().splitlines()[-1])
            except (ValueError, IndexError):
                logging.warning(f"WeakTumorSeg: device probe failed: {err.strip()[-500:]}")
                self.result = {"torch": None, "error": err.strip()}
        return self.result

    def wait(self, timeout: float = 120) -> dict:
        """Block until the probe has finished."""
        self._process.wait(timeout)
        return self.poll() or {}


# ------------------------------------------------------------------------------------------------
# Background runs of the core


@dataclass
class SegmentationResult:
    """Nodes made or updated by a finished run, and the core's report."""

    inputVolume: vtkMRMLScalarVolumeNode
    segmentationNode: vtkMRMLSegmentationNode
    tableNode: Any
    report: dict = field(default_factory=dict)


def _readLines(stream, sink: queue.Queue, kind: str) -> None:
    for line in iter(stream.readline, ""):
        sink.put((kind, line.rstrip("\r\n")))
    stream.close()


class SegmentationJob:
    """A running ``segment`` process. Call :meth:`poll` regularly (from the thread that owns the scene);
    the result nodes are made there once the process has succeeded.

    ``state`` is ``running``, ``succeeded``, ``failed`` or ``cancelled``; ``result`` (a
    :class:`SegmentationResult`) or ``error`` (a :class:`SegmentationError`) is set when it ends.
    """

    def __init__(self, logic: "WeakTumorSegLogic", command: list[str], env: dict, workdir: Path,
                 request: dict, progressCallback: Callable[[str, float, str], None] | None) -> None:
        self.logic = logic
        self.command = command
        self.workdir = workdir
        self.request = request
        self.progressCallback = progressCallback
        self.state = "running"
        self.result: SegmentationResult | None = None
        self.error: SegmentationError | None = None
        self.stderrLines: list[str] = []
        self.fraction = 0.0
        self._stageWeights = dict((k, w) for k, (_label, w) in STAGES.items())
        if not request.get("seeds"):
            self._stageWeights.pop("seeds")
        self._stagesDone: list[str] = []
        self._lines: queue.Queue = queue.Queue()
        kwargs: dict[str, Any] = {}
        if os.name == "nt":
            kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP | getattr(subprocess, "CREATE_NO_WINDOW", 0)
        else:
            kwargs["start_new_session"] = True  # own process group: Cancel stops the whole tree
        logging.info("WeakTumorSeg: running " + " ".join(command))
        self.process = subprocess.Popen(command, env=env, cwd=str(workdir), stdin=subprocess.DEVNULL,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                        encoding="utf-8", errors="replace", bufsize=1, **kwargs)
        self._readers = [threading.Thread(target=_readLines, args=(stream, self._lines, kind), daemon=True)
                         for stream, kind in ((self.process.stdout, "out"), (self.process.stderr, "err"))]
        for reader in self._readers:
            reader.start()
        self._report("start", 0, 1)

    @property
    def running(self) -> bool:
        return self.state == "running"

    def _report(self, stage: str, done: int, total: int) -> None:
        weights = self._stageWeights
        if stage in weights and stage not in self._stagesDone:
            for earlier in list(weights)[: list(weights).index(stage)]:
                if earlier not in self._stagesDone:
                    self._stagesDone.append(earlier)
        finished = sum(weights[s] for s in self._stagesDone if s in weights)
        current = weights.get(stage, 0.0) * (min(done, total) / total if total else 1.0)
        self.fraction = max(self.fraction, min(1.0, (finished + current) / sum(weights.values())))
        label = STAGES.get(stage, (stage, 0))[0]
        if self.progressCallback:
            self.progressCallback(stage, self.fraction, f"{label} ({done}/{total})" if total > 1 else label)

    def _drain(self) -> None:
        while True:
            try:
                kind, line = self._lines.get_nowait()
            except queue.Empty:
                return
            if kind == "err":
                if line.strip():
                    self.stderrLines.append(line)
                    logging.info(f"WeakTumorSeg core: {line}")
                continue
            try:
                event = json.loads(line)
            except ValueError:
                if line.strip():
                    logging.info(f"WeakTumorSeg core: {line}")
                continue
            if not isinstance(event, dict):
                continue
            if event.get("stage") == "done":
                self.request["doneEvent"] = event
            elif "stage" in event:
                self._report(str(event["stage"]), int(event.get("done", 0)), int(event.get("total", 0)))

    def poll(self) -> bool:
        """Forward progress; when the process has ended, load the results. True once the job is over."""
        if not self.running:
            return True
        self._drain()
        if self.process.poll() is None:
            return False
        for reader in self._readers:
            reader.join(timeout=5)
        self._drain()
        try:
            if self.process.returncode == 0:
                self.result = self.logic._loadResults(self.request, self.workdir / "out")
                self.state = "succeeded"
                if self.progressCallback:
                    self.progressCallback("done", 1.0, _("Done"))
            else:
                self.error = SegmentationError(self._errorMessage(), "\n".join(self.stderrLines))
                self.state = "failed"
                logging.error(f"WeakTumorSeg: segmentation failed: {self.error}\n" + self.error.details)
        except Exception as exc:  # loading the results failed: report it like a core error
            self.error = exc if isinstance(exc, SegmentationError) else SegmentationError(
                f"could not load the results ({type(exc).__name__}: {exc})")
            self.state = "failed"
            logging.exception("WeakTumorSeg: loading results failed")
        finally:
            self._cleanup()
        return True

    def _errorMessage(self) -> str:
        lines = [ln for ln in self.stderrLines if ln.strip()]
        errors = [ln for ln in lines if ": error:" in ln]
        message = errors[-1].split(": error:", 1)[1].strip() if errors else (lines[-1].strip() if lines else "")
        if not message:
            message = f"the segmentation process ended with exit code {self.process.returncode}"
        for path, volumeName in self.request.get("inputNames", {}).items():  # temporary files -> node names
            message = message.replace(path, f"volume '{volumeName}'")
        return message

    def wait(self, timeout: float | None = None) -> SegmentationResult:
        """Block until the job ends; return its result or raise its :class:`SegmentationError`."""
        start = time.monotonic()
        while not self.poll():
            if timeout is not None and time.monotonic() - start > timeout:
                self.cancel()
                raise SegmentationError(f"the segmentation took longer than {timeout:g} s and was cancelled")
            time.sleep(0.05)
        if self.state == "succeeded":
            return self.result  # type: ignore[return-value]
        if self.state == "cancelled":
            raise SegmentationError("the segmentation was cancelled")
        raise self.error  # type: ignore[misc]

    def cancel(self) -> None:
        """Stop the whole process tree; nothing is added to the scene and the temporary files go."""
        if not self.running:
            return
        killProcessTree(self.process)
        for reader in self._readers:
            reader.join(timeout=2)
        self.state = "cancelled"
        self._cleanup()
        logging.info("WeakTumorSeg: segmentation cancelled")

    def _cleanup(self) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)


def killProcessTree(process: subprocess.Popen, grace: float = 3.0) -> None:
    """Terminate a process started in its own process group (session), children included."""
    if process.poll() is not None:
        return
    if os.name == "nt":
        subprocess.run(["taskkill", "/F", "/T", "/PID", str(process.pid)], capture_output=True)
    else:
        try:
            os.killpg(process.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(process.pid, signal.SIGKILL)  # also whatever is left of the group
        except ProcessLookupError:
            pass
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        logging.error(f"WeakTumorSeg: process {process.pid} did not stop")


# ------------------------------------------------------------------------------------------------
# Module


class WeakTumorSeg(ScriptedLoadableModule):
    """Module description shown in Slicer."""

    def __init__(self, parent) -> None:
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Weak Tumor Seg")
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["WeakTumorSeg contributors"]
        self.parent.helpText = _(
            "Segments brain tumours in MR volumes with a model trained from slice-level labels only, "
            "following {paper}. Choose a model bundle and one volume per channel it needs, then click "
            "<b>Segment</b>. Review the slices that the difference-score filter flags as low-confidence, "
            "correct them with the embedded Segment Editor, mark each slice kept / corrected / excluded, and "
            "export the masks with a manifest for training a semi-supervised segmenter. The optional seeds "
            "are the classifier's RISE explanation maps ({rise}). See the project's README for details."
        ).format(paper=PAPER_CITATION, rise=RISE_CITATION)
        self.parent.acknowledgementText = _(
            "Method: {paper}. Seeds: {rise}. Built on 3D Slicer (Fedorov et al., Magn Reson Imaging 2012) and PyTorch."
        ).format(paper=PAPER_CITATION, rise=RISE_CITATION)


# ------------------------------------------------------------------------------------------------
# Parameter node


if GUI_AVAILABLE:

    @parameterNodeWrapper
    class WeakTumorSegParameterNode:
        """The module's settings: one input volume per bundle channel (``inputVolume0`` is the bundle's
        first channel), the bundle folder, device, filter threshold, scalp margin (starts at the default
        bundle's), seeds, output and export folder."""

        inputVolume0: vtkMRMLScalarVolumeNode
        inputVolume1: vtkMRMLScalarVolumeNode
        inputVolume2: vtkMRMLScalarVolumeNode
        inputVolume3: vtkMRMLScalarVolumeNode
        bundlePath: Path = _defaultBundleOrEmpty()
        device: str = "auto"
        threshold: Annotated[float, WithinRange(0.0, 1.0)] = 0.2
        scalpMargin: Annotated[float, WithinRange(0.0, MAX_SCALP_MARGIN)] = _defaultBundleScalpMargin()
        showSeeds: bool = False
        outputSegmentation: vtkMRMLSegmentationNode
        exportFolder: Path = Path.home()


# ------------------------------------------------------------------------------------------------
# Widget


class WeakTumorSegWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """GUI: inputs, Segment / Cancel with progress, slice review table, Segment Editor, export."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic: WeakTumorSegLogic | None = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._job: SegmentationJob | None = None
        self._probe: DeviceProbe | None = None
        self._bundle: BundleInfo | None = None
        self._updatingDevices = False

    # -- set-up and life cycle ---------------------------------------------------------------------

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/WeakTumorSeg.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        for i in range(MAX_CHANNELS):
            getattr(self.ui, f"inputVolumeSelector{i}").setMRMLScene(slicer.mrmlScene)
        self.ui.outputSegmentationSelector.setMRMLScene(slicer.mrmlScene)
        self.ui.sliceTableView.setMRMLScene(slicer.mrmlScene)
        self.ui.progressBar.setVisible(False)

        self.logic = WeakTumorSegLogic()

        # embedded Segment Editor for corrections
        self.segmentEditorWidget = slicer.qMRMLSegmentEditorWidget()
        self.segmentEditorWidget.setMaximumNumberOfUndoStates(10)
        self.segmentEditorWidget.setMRMLScene(slicer.mrmlScene)
        self.segmentEditorWidget.setMRMLSegmentEditorNode(self.logic.segmentEditorNode())
        self.ui.segmentEditorFrame.layout().addWidget(self.segmentEditorWidget)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.segmentButton.connect("clicked(bool)", self.onSegmentButton)
        self.ui.bundlePathLineEdit.connect("currentPathChanged(QString)", self.onBundleChanged)
        self.ui.deviceComboBox.connect("currentIndexChanged(int)", self.onDeviceChanged)
        self.ui.outputSegmentationSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.updateReview)
        self.ui.sliceTableView.connect("selectionChanged()", self.onSliceSelectionChanged)
        self.ui.previousFlaggedButton.connect("clicked(bool)", lambda: self.onStepFlagged(-1))
        self.ui.nextFlaggedButton.connect("clicked(bool)", lambda: self.onStepFlagged(+1))
        self.ui.markKeptButton.connect("clicked(bool)", lambda: self.onMarkSlices("kept"))
        self.ui.markCorrectedButton.connect("clicked(bool)", lambda: self.onMarkSlices("corrected"))
        self.ui.markExcludedButton.connect("clicked(bool)", lambda: self.onMarkSlices("excluded"))
        self.ui.exportButton.connect("clicked(bool)", self.onExportButton)

        self._timer = qt.QTimer()
        self._timer.setInterval(100)
        self._timer.connect("timeout()", self.onTimer)

        self.initializeParameterNode()
        self.onBundleChanged()
        self.startDeviceProbe()

    def cleanup(self) -> None:
        if self._job is not None and self._job.running:
            self._job.cancel()
        self._timer.stop()
        self.removeObservers()
        self.segmentEditorWidget = None

    def enter(self) -> None:
        self.initializeParameterNode()
        self.segmentEditorWidget.installKeyboardShortcuts()
        self.updateReview()
        probe = self._probe.result if self._probe is not None else None
        if probe is not None and not probe.get("gpus") and not (self._job is not None and self._job.running):
            self.startDeviceProbe()  # PyTorch may have been installed or replaced meanwhile

    def exit(self) -> None:
        self.segmentEditorWidget.setActiveEffect(None)
        self.segmentEditorWidget.uninstallKeyboardShortcuts()
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateButtons)

    def onSceneStartClose(self, caller, event) -> None:
        if self._job is not None and self._job.running:
            self._job.cancel()
        self.segmentEditorWidget.setSegmentationNode(None)
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not str(self._parameterNode.bundlePath) or str(self._parameterNode.bundlePath) == ".":
            self._parameterNode.bundlePath = _defaultBundleOrEmpty()

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateButtons)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateButtons)
            self.selectDevice(self._parameterNode.device)
            self.updateButtons()
            self.updateReview()

    # -- inputs ------------------------------------------------------------------------------------

    def onBundleChanged(self, *args) -> None:
        """Show the bundle's name and label one volume selector per channel it needs."""
        path = self.ui.bundlePathLineEdit.currentPath
        previous = self._bundle
        try:
            self._bundle = readBundleInfo(path)
        except SegmentationError as exc:
            self._bundle = None
            self.ui.bundleInfoLabel.text = str(exc)
        else:
            if len(self._bundle.channels) > MAX_CHANNELS:
                self.ui.bundleInfoLabel.text = _(
                    "Bundle '{name}' needs {n} channels; this module supports up to {m}.").format(
                    name=self._bundle.name, n=len(self._bundle.channels), m=MAX_CHANNELS)
                self._bundle = None
            else:
                self.ui.bundleInfoLabel.text = _("Bundle '{name}': channels {channels}").format(
                    name=self._bundle.name, channels=", ".join(self._bundle.channels))
                self.ui.bundleInfoLabel.toolTip = self._bundle.description
                if self._bundle.trainingWarnings:  # a run can finish and still have failed
                    self.ui.bundleInfoLabel.text += " " + _("(may not work: its training warned)")
                    self.ui.bundleInfoLabel.toolTip = "\n".join(self._bundle.trainingWarnings)
                if self._parameterNode and previous is not None and previous.path != self._bundle.path:
                    self._parameterNode.threshold = self._bundle.threshold  # a new bundle brings its own default
                    self._parameterNode.scalpMargin = min(self._bundle.scalpMargin, MAX_SCALP_MARGIN)
        channels = self._bundle.channels if self._bundle else ()
        for i in range(MAX_CHANNELS):
            label = getattr(self.ui, f"inputVolumeLabel{i}")
            selector = getattr(self.ui, f"inputVolumeSelector{i}")
            visible = i < len(channels)
            label.setVisible(visible)
            selector.setVisible(visible)
            if visible:
                name = channels[i].upper() if len(channels[i]) <= 5 else channels[i]
                label.text = _("{channel} volume:").format(channel=name)
                selector.toolTip = _("Volume for the bundle's '{channel}' channel").format(channel=channels[i])
                if self._parameterNode and not getattr(self._parameterNode, f"inputVolume{i}"):
                    guess = self.logic.guessVolumeForChannel(channels[i])
                    if guess is not None:
                        setattr(self._parameterNode, f"inputVolume{i}", guess)
        self.updateButtons()

    def startDeviceProbe(self) -> None:
        self._probe = DeviceProbe()
        self.fillDevices(None)
        self._timer.start()

    def fillDevices(self, probe: dict | None) -> None:
        current = self._parameterNode.device if self._parameterNode else "auto"
        self._updatingDevices = True
        try:
            combo = self.ui.deviceComboBox
            combo.clear()
            for choice in deviceChoices(probe):
                combo.addItem(choice.label, choice.value)
                model = combo.model()
                if not choice.enabled and hasattr(model, "item") and model.item(combo.count - 1) is not None:
                    model.item(combo.count - 1).setEnabled(False)
        finally:
            self._updatingDevices = False
        self.selectDevice(current)
        if probe is not None:
            torchText = probe.get("torch") or _("not installed")
            self.ui.deviceComboBox.toolTip = _("PyTorch {torch}; GPUs: {gpus}").format(
                torch=torchText, gpus=", ".join(probe.get("gpus") or []) or _("none"))

    def selectDevice(self, value: str) -> None:
        combo = self.ui.deviceComboBox
        index = combo.findData(value)
        self._updatingDevices = True
        combo.currentIndex = index if index >= 0 else 0
        self._updatingDevices = False

    def onDeviceChanged(self, index: int) -> None:
        if self._updatingDevices or not self._parameterNode:
            return
        value = self.ui.deviceComboBox.itemData(index)
        if value:
            self._parameterNode.device = str(value)

    def inputVolumes(self) -> dict[str, vtkMRMLScalarVolumeNode]:
        """Selected volume per bundle channel (only the channels that have one)."""
        if not self._bundle or not self._parameterNode:
            return {}
        volumes = {}
        for i, channel in enumerate(self._bundle.channels):
            node = getattr(self._parameterNode, f"inputVolume{i}")
            if node is not None:
                volumes[channel] = node
        return volumes

    def updateButtons(self, caller=None, event=None) -> None:
        if self._job is not None and self._job.running:
            self.ui.segmentButton.text = _("Cancel")
            self.ui.segmentButton.toolTip = _("Stop the segmentation; nothing is added to the scene")
            self.ui.segmentButton.enabled = True
            return
        self.ui.segmentButton.text = _("Segment")
        ready = bool(self._bundle) and len(self.inputVolumes()) == len(self._bundle.channels)
        self.ui.segmentButton.enabled = ready
        self.ui.segmentButton.toolTip = (_("Segment the tumour in the selected volumes") if ready
                                         else _("Choose a model bundle and one volume per channel"))
        self.ui.exportButton.enabled = self.currentSegmentation() is not None

    # -- Segment / Cancel --------------------------------------------------------------------------

    def onSegmentButton(self) -> None:
        if self._job is not None and self._job.running:
            self._job.cancel()
            self.onJobEnded()
            return
        with slicer.util.tryWithErrorDisplay(_("Segmentation could not start."), waitCursor=True):
            if not installDependencies(self.logic, interactive=True):
                self.ui.statusLabel.text = _("Dependencies are not installed; nothing was done.")
                return
            if self._probe is None or (self._probe.result and not self._probe.result.get("torch")):
                self.startDeviceProbe()  # torch may have just been installed
            p = self._parameterNode
            self.segmentEditorWidget.setActiveEffect(None)
            self._job = self.logic.process(self.inputVolumes(), bundlePath=p.bundlePath, device=p.device,
                                           threshold=p.threshold, scalpMargin=p.scalpMargin, seeds=p.showSeeds,
                                           outputSegmentation=p.outputSegmentation, wait=False,
                                           progressCallback=self.onProgress)
            self.ui.progressBar.value = 0
            self.ui.progressBar.setVisible(True)
            self.ui.statusLabel.text = STAGES["start"][0]
            self._timer.start()
            self.updateButtons()

    def onProgress(self, stage: str, fraction: float, message: str) -> None:
        self.ui.progressBar.value = int(round(100 * fraction))
        self.ui.statusLabel.text = message

    def onTimer(self) -> None:
        if self._probe is not None and self._probe.result is None and self._probe.poll() is not None:
            self.fillDevices(self._probe.result)
        jobRunning = self._job is not None and self._job.running
        if jobRunning and self._job.poll():
            self.onJobEnded()
            jobRunning = False
        probing = self._probe is not None and self._probe.result is None
        if not jobRunning and not probing:
            self._timer.stop()

    def onJobEnded(self) -> None:
        job = self._job
        self.ui.progressBar.setVisible(False)
        if job.state == "succeeded":
            result = job.result
            self._parameterNode.outputSegmentation = result.segmentationNode
            self.showResult(result)
            counts = result.report.get("counts", {})
            self.ui.statusLabel.text = _(
                "Done on {device}: {tumor} of {slices} slices with tumour, {flagged} flagged for review.").format(
                device=result.report.get("device", "?"), tumor=counts.get("tumor_slices", "?"),
                slices=counts.get("slices", "?"), flagged=counts.get("flagged_slices", "?"))
        elif job.state == "cancelled":
            self.ui.statusLabel.text = _("Cancelled; nothing was added to the scene.")
        else:
            self.ui.statusLabel.text = _("Failed: {error}").format(error=job.error)
            slicer.util.errorDisplay(_("Segmentation failed: {error}").format(error=job.error),
                                     detailedText=getattr(job.error, "details", "") or None)
        self.updateButtons()

    def showResult(self, result: SegmentationResult) -> None:
        self.logic.alignSliceViewsToVolume(result.inputVolume)
        slicer.util.setSliceViewerLayers(background=result.inputVolume, fit=True)
        self.segmentEditorWidget.setSegmentationNode(result.segmentationNode)
        if hasattr(self.segmentEditorWidget, "setSourceVolumeNode"):
            self.segmentEditorWidget.setSourceVolumeNode(result.inputVolume)
        else:  # Slicer < 5.2
            self.segmentEditorWidget.setMasterVolumeNode(result.inputVolume)
        self.updateReview()
        flagged = self.logic.flaggedSlices(result.tableNode)
        if flagged:
            self.selectSlice(flagged[0])

    # -- review ------------------------------------------------------------------------------------

    def currentSegmentation(self):
        return self._parameterNode.outputSegmentation if self._parameterNode else None

    def currentTable(self):
        seg = self.currentSegmentation()
        return seg.GetNodeReference(SLICE_TABLE_ROLE) if seg is not None else None

    def updateReview(self, *args) -> None:
        table = self.currentTable()
        self.ui.sliceTableView.setMRMLTableNode(table)
        for button in (self.ui.previousFlaggedButton, self.ui.nextFlaggedButton, self.ui.markKeptButton,
                       self.ui.markCorrectedButton, self.ui.markExcludedButton):
            button.enabled = table is not None
        if table is None:
            self.ui.reviewSummaryLabel.text = _("Segment a volume to review its slices.")
        else:
            counts = self.logic.statusCounts(table)
            self.ui.reviewSummaryLabel.text = ", ".join(f"{n} {status}" for status, n in counts.items())
        seg = self.currentSegmentation()
        if seg is not None and self.segmentEditorWidget.segmentationNode() != seg:
            self.segmentEditorWidget.setSegmentationNode(seg)
            volume = self.logic.inputVolumeOf(seg)
            if volume is not None:
                if hasattr(self.segmentEditorWidget, "setSourceVolumeNode"):
                    self.segmentEditorWidget.setSourceVolumeNode(volume)
                else:
                    self.segmentEditorWidget.setMasterVolumeNode(volume)
        if self._job is None or not self._job.running:
            self.ui.exportButton.enabled = seg is not None

    def selectedSlices(self) -> list[int]:
        """Slice numbers of the selected table rows (read from the view, so sorting does not matter)."""
        view = self.ui.sliceTableView
        model = view.model()
        rows = sorted({index.row() for index in view.selectionModel().selectedIndexes()})
        slices = []
        for row in rows:
            value = model.index(row, 0).data()
            try:
                slices.append(int(float(value)))
            except (TypeError, ValueError):
                continue
        return slices

    def selectSlice(self, sliceIndex: int) -> None:
        view = self.ui.sliceTableView
        model = view.model()
        for row in range(model.rowCount()):
            value = model.index(row, 0).data()
            try:
                if int(float(value)) == sliceIndex:
                    view.selectRow(row)
                    view.scrollTo(model.index(row, 0))
                    return
            except (TypeError, ValueError):
                continue

    def onSliceSelectionChanged(self) -> None:
        slices = self.selectedSlices()
        seg = self.currentSegmentation()
        volume = self.logic.inputVolumeOf(seg) if seg is not None else None
        if slices and volume is not None:
            self.logic.jumpToSlice(volume, slices[0])

    def onStepFlagged(self, step: int) -> None:
        table = self.currentTable()
        if table is None:
            return
        current = self.selectedSlices()
        target = self.logic.nextFlaggedSlice(table, current[0] if current else None, step)
        if target is None:
            self.ui.statusLabel.text = _("No flagged slices.")
        else:
            self.selectSlice(target)

    def onMarkSlices(self, status: str) -> None:
        table = self.currentTable()
        slices = self.selectedSlices()
        if table is None or not slices:
            self.ui.statusLabel.text = _("Select one or more slices in the table first.")
            return
        self.logic.setSliceStatus(table, slices, status)
        self.updateReview()
        self.selectSlice(slices[0])

    # -- export ------------------------------------------------------------------------------------

    def onExportButton(self) -> None:
        seg = self.currentSegmentation()
        folder = self._parameterNode.exportFolder
        with slicer.util.tryWithErrorDisplay(_("Export failed."), waitCursor=True):
            try:
                written = self.logic.exportResults(seg, folder, overwrite=False)
            except ExportExistsError as exc:
                if not slicer.util.confirmOkCancelDisplay(
                        _("These files already exist in {folder}:\n{files}\n\nOverwrite them?").format(
                            folder=folder, files="\n".join(exc.existing)),
                        _("Overwrite exported files?")):
                    self.ui.statusLabel.text = _("Export cancelled; nothing was written.")
                    return
                written = self.logic.exportResults(seg, folder, overwrite=True)
            self.ui.statusLabel.text = _("Exported {n} files to {folder}").format(n=len(written), folder=folder)
            slicer.util.infoDisplay(_("Exported:\n{files}").format(files="\n".join(str(p) for p in written.values())))


# ------------------------------------------------------------------------------------------------
# Dependencies (GUI: may show dialogs)


def installDependencies(logic: "WeakTumorSegLogic", interactive: bool = True) -> bool:
    """Install what the core needs into Slicer's Python, on first use (never at import).

    PyTorch comes from the PyTorch extension (``PyTorchUtils``, which picks the CUDA build that fits the
    driver) when it is installed, else from pip after a confirmation. The other packages come from
    ``Resources/requirements.txt``. Returns False when the user declines. A restart is proposed when an
    already imported package was updated.
    """
    if not logic.torchInstalled():
        try:
            import PyTorchUtils
        except ImportError:
            PyTorchUtils = None
        if PyTorchUtils is not None:
            torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(
                askConfirmation=interactive, torchVersionRequirement=TORCH_REQUIREMENT[len("torch"):])
            if torch is None:
                return False
        else:
            if interactive and not slicer.util.confirmOkCancelDisplay(
                    _("WeakTumorSeg needs PyTorch ({req}), a download of up to a few GB. Install it now?\n\n"
                      "For an NVIDIA GPU, cancel, install the 'PyTorch' extension from the Extensions Manager, "
                      "restart Slicer and click Segment again: it installs the CUDA build that fits your driver.")
                    .format(req=TORCH_REQUIREMENT), _("Install PyTorch?")):
                return False
            slicer.util.pip_install(TORCH_REQUIREMENT)
        importlib.invalidate_caches()
        if not logic.torchInstalled():
            raise SegmentationError("PyTorch could not be installed; see the Python console for pip's messages")
    missing = logic.missingRequirements()
    if not missing:
        return True
    try:
        import slicer.packaging as packaging
    except ImportError:
        packaging = None
    if packaging is not None and hasattr(packaging, "pip_ensure"):
        try:
            packaging.pip_ensure(missing, requester="WeakTumorSeg", prompt_install=interactive, skip_in_testing=False)
        except RuntimeError as exc:
            if "declined" in str(exc):
                return False
            raise
        return True
    # Slicer without slicer.packaging: confirm, install, propose a restart when needed
    if interactive and not slicer.util.confirmOkCancelDisplay(
            _("WeakTumorSeg needs these Python packages:\n{packages}\n\nInstall them now?").format(
                packages="\n".join(missing)), _("Install Python packages?")):
        return False
    loaded = [req for req in missing if logic.requirementName(req).replace("-", "_").lower() in sys.modules]
    slicer.util.pip_install(" ".join(missing))
    importlib.invalidate_caches()
    if loaded and interactive:
        if slicer.util.confirmYesNoDisplay(
                _("Updated packages were already loaded ({packages}); restart Slicer now so that the new "
                  "versions are used?").format(packages=", ".join(loaded)), _("Restart Slicer?")):
            slicer.util.restart()
    return True


# ------------------------------------------------------------------------------------------------
# Logic


class WeakTumorSegLogic(ScriptedLoadableModuleLogic):
    """MRML side of the module: volume nodes -> temporary files -> core process -> result nodes.

    Usable without a GUI: ``WeakTumorSegLogic(scene)`` with any ``vtkMRMLScene`` (``slicer.mrmlScene``
    by default). Uses MRML, VTK and the standard library only.
    """

    def __init__(self, scene=None) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        if scene is None:
            scene = getattr(slicer, "mrmlScene", None)
            if scene is None:
                raise ValueError("no MRML scene: pass one, e.g. WeakTumorSegLogic(slicer.vtkMRMLScene())")
        self.scene = scene

    if GUI_AVAILABLE:

        def getParameterNode(self):
            return WeakTumorSegParameterNode(super().getParameterNode())

    # -- dependencies (checks only; installing is done by installDependencies) ------------------------

    @staticmethod
    def torchInstalled() -> bool:
        """True when PyTorch can be imported (checked without importing it)."""
        return importlib.util.find_spec("torch") is not None

    @staticmethod
    def requirementName(requirement: str) -> str:
        return re.split(r"[\s<>=!~;\[]", requirement.strip(), maxsplit=1)[0]

    @classmethod
    def missingRequirements(cls, path: str | os.PathLike | None = None) -> list[str]:
        """Lines of ``Resources/requirements.txt`` that the installed packages do not satisfy."""
        path = Path(path) if path else MODULE_DIR / "Resources" / "requirements.txt"
        try:
            from packaging.requirements import Requirement
        except ImportError:
            Requirement = None
        missing = []
        for line in path.read_text().splitlines():
            line = line.split("#", 1)[0].strip()
            if not line or line.startswith("-"):
                continue
            if Requirement is not None:
                req = Requirement(line)
                if req.marker is not None and not req.marker.evaluate():
                    continue
                try:
                    installed = importlib.metadata.version(req.name)
                except importlib.metadata.PackageNotFoundError:
                    missing.append(line)
                    continue
                if req.specifier and not req.specifier.contains(installed, prereleases=True):
                    missing.append(line)
            else:
                try:
                    importlib.metadata.version(cls.requirementName(line))
                except importlib.metadata.PackageNotFoundError:
                    missing.append(line)
        return missing

    # -- nodes ---------------------------------------------------------------------------------------

    def _nodesByClass(self, className: str) -> list:
        count = self.scene.GetNumberOfNodesByClass(className)
        return [self.scene.GetNthNodeByClass(i, className) for i in range(count)]

    @staticmethod
    def isOurs(node) -> bool:
        """True for nodes this module created."""
        return node is not None and node.GetAttribute(CREATED_BY) == "WeakTumorSeg"

    def resultNodesFor(self, volume) -> tuple[Any, Any]:
        """This module's segmentation and slice table made for ``volume`` (``None`` where absent)."""
        found = []
        for className in ("vtkMRMLSegmentationNode", "vtkMRMLTableNode"):
            match = None
            for node in self._nodesByClass(className):
                if self.isOurs(node) and node.GetNodeReferenceID(INPUT_VOLUME_ROLE) == volume.GetID():
                    match = node
                    break
            found.append(match)
        return found[0], found[1]

    def inputVolumeOf(self, segmentationNode):
        """The volume a segmentation was made from (or, for other segmentations, its reference volume)."""
        if segmentationNode is None:
            return None
        volume = segmentationNode.GetNodeReference(INPUT_VOLUME_ROLE)
        if volume is None:
            volume = segmentationNode.GetNodeReference("referenceImageGeometryRef")
        return volume

    def guessVolumeForChannel(self, channel: str):
        """A volume whose name ends with (or contains) the channel name, e.g. ``P01_flair`` for ``flair``."""
        volumes = [n for n in self._nodesByClass("vtkMRMLScalarVolumeNode")
                   if n.GetClassName() == "vtkMRMLScalarVolumeNode" and not n.GetHideFromEditors()]
        key = channel.lower()
        for test in (lambda name: re.split(r"[\s_.-]+", name)[-1] == key, lambda name: key in name):
            for node in volumes:
                if test((node.GetName() or "").lower()):
                    return node
        return None

    def segmentEditorNode(self):
        """The module's own Segment Editor parameter node (a singleton)."""
        tag = "WeakTumorSeg"
        node = self.scene.GetSingletonNode(tag, "vtkMRMLSegmentEditorNode")
        if node is None:
            node = self.scene.CreateNodeByClass("vtkMRMLSegmentEditorNode")
            node.UnRegister(None)
            node.SetSingletonTag(tag)
            node = self.scene.AddNode(node)
        return node

    # -- segmenting ----------------------------------------------------------------------------------

    def process(self, inputVolumes: Mapping[str, vtkMRMLScalarVolumeNode] | Sequence[vtkMRMLScalarVolumeNode],
                bundlePath: str | os.PathLike | None = None, device: str = "auto", threshold: float | None = None,
                scalpMargin: float | None = None, seeds: bool = False,
                outputSegmentation: vtkMRMLSegmentationNode | None = None, wait: bool = True,
                progressCallback: Callable[[str, float, str], None] | None = None, threads: int | None = None,
                seedMasks: int | None = None, timeout: float | None = None) -> SegmentationResult | SegmentationJob:
        """Segment one patient: a volume per channel of the bundle (a dict ``{channel: node}``, or a list in
        the bundle's channel order).

        Runs the core in a background process. With ``wait=True`` blocks and returns a
        :class:`SegmentationResult` (or raises :class:`SegmentationError` with the core's one-line message);
        with ``wait=False`` returns a :class:`SegmentationJob` to :meth:`~SegmentationJob.poll`.
        ``progressCallback(stage, fraction, message)`` is called from the thread that polls.
        ``threshold`` and ``scalpMargin`` (mm; 0 is off, as skull-stripped images need) default to the bundle's.
        """
        bundle = readBundleInfo(bundlePath if bundlePath is not None and str(bundlePath) not in ("", ".")
                                else defaultBundlePath())
        if not isinstance(inputVolumes, Mapping):
            inputVolumes = dict(zip(bundle.channels, inputVolumes))
        volumes = {c: v for c, v in inputVolumes.items() if v is not None}
        missing = [c for c in bundle.channels if c not in volumes]
        if missing:
            raise SegmentationError(f"bundle '{bundle.name}' needs a volume for channels {', '.join(bundle.channels)}; "
                                    f"none given for: {', '.join(missing)}")
        for channel in bundle.channels:
            if volumes[channel].GetImageData() is None:
                raise SegmentationError(f"volume '{volumes[channel].GetName()}' ({channel}) has no image data")
        if threshold is not None and not 0.0 <= float(threshold) <= 1.0:
            raise SegmentationError(f"filter threshold {threshold} is not in [0, 1]")
        if scalpMargin is not None and not 0.0 <= float(scalpMargin) < CORE_MAX_SCALP_MARGIN:
            raise SegmentationError(f"scalp margin {scalpMargin} mm is not in [0, 1000)")
        if outputSegmentation is not None and outputSegmentation.GetScene() != self.scene:
            raise SegmentationError("the output segmentation is not in this scene")

        workdir = Path(tempfile.mkdtemp(prefix="WeakTumorSeg-"))
        try:
            inputNames = {}
            command = [pythonExecutable(), "-m", "WeakTumorSegLib", "segment", "--bundle", str(bundle.path),
                       "--out", str(workdir / "out"), "--name", "case", "--device", device or "auto",
                       "--progress", "json"]
            for channel in bundle.channels:
                path = workdir / "in" / f"{safeFileStem(channel)}.nrrd"
                self.writeVolume(volumes[channel], path)
                inputNames[str(path)] = volumes[channel].GetName()
                command += ["--channel", f"{channel}={path}"]
            if threshold is not None:
                command += ["--threshold", f"{float(threshold):g}"]
            if scalpMargin is not None:
                command += ["--scalp-margin", f"{float(scalpMargin):g}"]
            if seeds:
                command.append("--seeds")
                if seedMasks:
                    command += ["--seed-masks", str(int(seedMasks))]
            if threads:
                command += ["--threads", str(int(threads))]
            env = dict(os.environ)
            root = str(coreRoot())
            env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
            env["PYTHONUNBUFFERED"] = "1"
            env["PYTHONIOENCODING"] = "utf-8"
            request = {"bundle": bundle, "volume": volumes[bundle.referenceChannel], "seeds": bool(seeds),
                       "outputSegmentation": outputSegmentation, "inputNames": inputNames,
                       "threshold": threshold, "scalpMargin": scalpMargin, "device": device}
            job = SegmentationJob(self, command, env, workdir, request, progressCallback)
        except BaseException:
            shutil.rmtree(workdir, ignore_errors=True)
            raise
        return job.wait(timeout) if wait else job

    def writeVolume(self, volumeNode, path: str | os.PathLike) -> None:
        """Write a volume node to a file (format from the extension), keeping its geometry (IJK to RAS
        becomes the file's LPS geometry); the node itself is not changed."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
        storage.SetFileName(str(path))
        storage.SetUseCompression(path.name.endswith(".gz"))
        if not storage.WriteData(volumeNode) or not path.is_file():
            raise SegmentationError(f"volume '{volumeNode.GetName()}' could not be written to {path}")

    def loadSegmentationFile(self, path: str | os.PathLike):
        """Read a ``.seg.nrrd`` into a new, temporary segmentation node (the caller removes it)."""
        node = self.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "WeakTumorSeg temporary")
        node.SetHideFromEditors(True)
        storage = slicer.vtkMRMLSegmentationStorageNode()
        storage.SetFileName(str(path))
        if not storage.ReadData(node):
            self._removeNode(node)
            raise SegmentationError(f"{path}: could not be read as a segmentation")
        return node

    def _removeNode(self, node) -> None:
        if node is None:
            return
        displayNodes = [node.GetNthDisplayNode(i) for i in range(node.GetNumberOfDisplayNodes())] \
            if hasattr(node, "GetNumberOfDisplayNodes") else []
        storageNode = node.GetStorageNode() if hasattr(node, "GetStorageNode") else None
        self.scene.RemoveNode(node)
        for extra in displayNodes + [storageNode]:
            if extra is not None and extra.GetScene() is self.scene:
                self.scene.RemoveNode(extra)

    def _loadResults(self, request: dict, outDir: Path) -> SegmentationResult:
        """Turn the core's outputs into nodes (called on the scene's thread when the process succeeded)."""
        volume = request["volume"]
        segPath, csvPath, reportPath = outDir / "case.seg.nrrd", outDir / "case_slices.csv", outDir / "case_report.json"
        for path in (segPath, csvPath):
            if not path.is_file():
                raise SegmentationError(f"the core finished without writing {path.name}")
        rows = self.readSliceCsv(csvPath)
        report = json.loads(reportPath.read_text()) if reportPath.is_file() else {}
        loaded = self.loadSegmentationFile(segPath)
        try:
            segNode = self._targetSegmentation(volume, request.get("outputSegmentation"))
            self._replaceOurSegments(segNode, loaded)
        finally:
            self._removeNode(loaded)
        segNode.SetReferenceImageGeometryParameterFromVolumeNode(volume)
        segNode.SetAndObserveTransformNodeID(volume.GetTransformNodeID())
        segNode.SetNodeReferenceID(INPUT_VOLUME_ROLE, volume.GetID())
        segNode.SetAttribute("WeakTumorSeg.Bundle", str(request["bundle"].path))
        segNode.SetAttribute("WeakTumorSeg.Device", str(report.get("device", request.get("device"))))
        segNode.SetAttribute("WeakTumorSeg.Threshold", str(report.get("threshold", request.get("threshold"))))
        segNode.SetAttribute("WeakTumorSeg.ScalpMargin",
                             str(report.get("scalp_margin_mm", request.get("scalpMargin"))))
        for attribute, key in (("SliceSmoothing", "slice_smoothing"), ("FlairTrim", "flair_trim"),
                               ("KeepComponents", "keep_components")):
            segNode.SetAttribute(f"WeakTumorSeg.{attribute}", str(report.get(key, "")))  # the bundle's settings
        self._styleSegments(segNode)

        table = self._targetTable(volume)
        self.fillSliceTable(table, rows)
        table.SetNodeReferenceID(INPUT_VOLUME_ROLE, volume.GetID())
        segNode.SetNodeReferenceID(SLICE_TABLE_ROLE, table.GetID())
        for node in (segNode, table):
            if self.isOurs(node):  # never move the user's own nodes
                self._placeBesideVolume(node, volume)
        return SegmentationResult(volume, segNode, table, report)

    def _targetSegmentation(self, volume, requested):
        # an output chosen by the user is used; one of ours made for another volume is not (it belongs to that one)
        if requested is not None and not (self.isOurs(requested)
                                          and requested.GetNodeReferenceID(INPUT_VOLUME_ROLE) != volume.GetID()):
            return requested
        existing, _table = self.resultNodesFor(volume)
        if existing is not None:
            return existing
        node = self.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", f"{volume.GetName()} segmentation")
        node.SetAttribute(CREATED_BY, "WeakTumorSeg")
        node.CreateDefaultDisplayNodes()
        return node

    def _targetTable(self, volume):
        _seg, existing = self.resultNodesFor(volume)
        if existing is not None:
            return existing
        node = self.scene.AddNewNodeByClass("vtkMRMLTableNode", f"{volume.GetName()} slice review")
        node.SetAttribute(CREATED_BY, "WeakTumorSeg")
        return node

    @staticmethod
    def _segmentIsOurs(segment) -> bool:
        value = vtk.mutable("")
        return bool(segment.GetTag(CREATED_BY, value)) and str(value) == "WeakTumorSeg"

    def _replaceOurSegments(self, target, source) -> None:
        """Remove the segments this module added to ``target`` earlier and copy in those of ``source``;
        segments the user made are kept."""
        targetSeg, sourceSeg = target.GetSegmentation(), source.GetSegmentation()
        wasModifying = target.StartModify()
        try:
            for segmentId in [targetSeg.GetNthSegmentID(i) for i in range(targetSeg.GetNumberOfSegments())]:
                if self._segmentIsOurs(targetSeg.GetSegment(segmentId)):
                    targetSeg.RemoveSegment(segmentId)
            for i in range(sourceSeg.GetNumberOfSegments()):
                segmentId = sourceSeg.GetNthSegmentID(i)
                if targetSeg.GetSegment(segmentId) is None:
                    if not targetSeg.CopySegmentFromSegmentation(sourceSeg, segmentId):
                        raise SegmentationError(f"segment '{segmentId}' could not be copied into '{target.GetName()}'")
                    newId = segmentId
                else:  # the user has a segment with that ID: add ours under a new one
                    segment = slicer.vtkSegment()
                    segment.DeepCopy(sourceSeg.GetSegment(segmentId))
                    newId = targetSeg.GenerateUniqueSegmentID(segmentId)
                    targetSeg.AddSegment(segment, newId)
                segment = targetSeg.GetSegment(newId)
                segment.SetTag(CREATED_BY, "WeakTumorSeg")
                segment.SetNameAutoGenerated(False)
                segment.SetColorAutoGenerated(False)
        finally:
            target.EndModify(wasModifying)

    def _styleSegments(self, segNode) -> None:
        """Tumour filled, seeds as outlines."""
        display = segNode.GetDisplayNode()
        if display is None:
            return
        segmentation = segNode.GetSegmentation()
        for i in range(segmentation.GetNumberOfSegments()):
            segmentId = segmentation.GetNthSegmentID(i)
            segment = segmentation.GetSegment(segmentId)
            if self._segmentIsOurs(segment) and segment.GetName() in SEED_SEGMENTS:
                display.SetSegmentVisibility2DFill(segmentId, False)

    def _placeBesideVolume(self, node, volume) -> None:
        """Put ``node`` in the subject hierarchy under the same parent (study) as ``volume``."""
        sh = self.scene.GetSubjectHierarchyNode()
        if sh is None:
            return
        volumeItem = sh.GetItemByDataNode(volume)
        parent = sh.GetItemParent(volumeItem) if volumeItem else sh.GetSceneItemID()
        item = sh.GetItemByDataNode(node)
        if not item:
            item = sh.CreateItem(parent, node)
        if sh.GetItemParent(item) != parent:
            sh.SetItemParent(item, parent)

    # -- slice table ---------------------------------------------------------------------------------

    @staticmethod
    def readSliceCsv(path: str | os.PathLike) -> list[dict]:
        """Rows of the core's ``<name>_slices.csv`` with typed values and an initial ``status``."""
        rows = []
        with open(path, newline="") as fh:
            for raw in csv.DictReader(fh):
                flagged = int(float(raw.get("flagged") or 0))
                rows.append({
                    "slice": int(raw["slice"]),
                    "p_tumor": float(raw.get("p_tumor") or "nan"),
                    "difference_score": float(raw.get("difference_score") or "nan"),
                    "flagged": flagged,
                    "flag_reason": raw.get("flag_reason") or "",
                    "tumor_pixels": int(float(raw.get("tumor_pixels") or 0)),
                    "status": "flagged" if flagged else "kept",
                })
        return rows

    @staticmethod
    def fillSliceTable(table, rows: Sequence[Mapping[str, Any]]) -> None:
        """Replace the table's content with ``rows`` (columns :data:`SLICE_COLUMNS`)."""
        kinds = {"slice": vtk.vtkIntArray, "p_tumor": vtk.vtkDoubleArray, "difference_score": vtk.vtkDoubleArray,
                 "flagged": vtk.vtkIntArray, "flag_reason": vtk.vtkStringArray, "tumor_pixels": vtk.vtkIntArray,
                 "status": vtk.vtkStringArray}
        descriptions = {
            "slice": "Index of the axial slice (third voxel axis, k)",
            "p_tumor": "Largest classifier output over the slice's patches",
            "difference_score": "Difference score (Eq. 19): mean |x - healthy x| over the mask; 1 if the mask is empty",
            "flagged": "1 when the filter flags the slice for review",
            "flag_reason": "low_difference_score and/or classifier_undecided",
            "tumor_pixels": "Tumour pixels in the slice as segmented",
            "status": "Review status: kept, flagged, corrected or excluded",
        }
        wasModifying = table.StartModify()
        try:
            table.RemoveAllColumns()
            for name in SLICE_COLUMNS:
                array = kinds[name]()
                array.SetName(name)
                array.SetNumberOfValues(len(rows))
                for i, row in enumerate(rows):
                    value = row.get(name, "" if kinds[name] is vtk.vtkStringArray else 0)
                    array.SetValue(i, str(value) if kinds[name] is vtk.vtkStringArray else value)
                table.AddColumn(array)
                table.SetColumnDescription(name, descriptions[name])
            table.SetLocked(True)  # statuses change through the module's buttons only
        finally:
            table.EndModify(wasModifying)

    @staticmethod
    def sliceRows(table) -> list[dict]:
        """The table's rows as dicts (typed as in :meth:`readSliceCsv`)."""
        vtable = table.GetTable()
        names = [vtable.GetColumnName(c) for c in range(vtable.GetNumberOfColumns())]
        rows = []
        for r in range(vtable.GetNumberOfRows()):
            row = {}
            for c, name in enumerate(names):
                value = vtable.GetValue(r, c)
                row[name] = value.ToString() if name in ("flag_reason", "status") else (
                    value.ToInt() if name in ("slice", "flagged", "tumor_pixels") else value.ToDouble())
            rows.append(row)
        return rows

    @staticmethod
    def _rowOfSlice(table, sliceIndex: int) -> int:
        column = table.GetTable().GetColumnByName("slice")
        for r in range(table.GetNumberOfRows()):
            if int(column.GetValue(r)) == int(sliceIndex):
                return r
        raise SegmentationError(f"slice {sliceIndex} is not in table '{table.GetName()}'")

    def setSliceStatus(self, table, slices: Iterable[int] | int, status: str) -> None:
        """Set the review status (:data:`STATUSES`) of one or more slices."""
        if status not in STATUSES:
            raise ValueError(f"status must be one of {', '.join(STATUSES)}, not {status!r}")
        if isinstance(slices, int):
            slices = [slices]
        column = table.GetColumnIndex("status")
        wasModifying = table.StartModify()
        try:
            for sliceIndex in slices:
                table.GetTable().SetValue(self._rowOfSlice(table, sliceIndex), column, vtk.vtkVariant(status))
            table.GetTable().Modified()
            table.Modified()
        finally:
            table.EndModify(wasModifying)

    def sliceStatus(self, table, sliceIndex: int) -> str:
        return table.GetCellText(self._rowOfSlice(table, sliceIndex), table.GetColumnIndex("status"))

    def flaggedSlices(self, table) -> list[int]:
        """Slices the filter flagged (whatever their review status now), in slice order."""
        return sorted(row["slice"] for row in self.sliceRows(table) if row.get("flagged"))

    def nextFlaggedSlice(self, table, current: int | None, step: int = 1) -> int | None:
        """The flagged slice after (``step`` > 0) or before ``current``, wrapping around; None if none."""
        flagged = self.flaggedSlices(table)
        if not flagged:
            return None
        if current is None:
            return flagged[0] if step > 0 else flagged[-1]
        later = [s for s in flagged if (s > current if step > 0 else s < current)]
        if later:
            return later[0] if step > 0 else later[-1]
        return flagged[0] if step > 0 else flagged[-1]

    def statusCounts(self, table) -> dict[str, int]:
        counts = {status: 0 for status in STATUSES}
        for row in self.sliceRows(table):
            counts[row.get("status", "kept")] = counts.get(row.get("status", "kept"), 0) + 1
        return counts

    # -- slice views ---------------------------------------------------------------------------------

    @staticmethod
    def sliceCenterRAS(volume, sliceIndex: int) -> tuple[float, float, float]:
        """World (RAS) position of the centre of slice ``k`` of ``volume`` (parent transforms applied)."""
        dims = volume.GetImageData().GetDimensions()
        ijkToRas = vtk.vtkMatrix4x4()
        volume.GetIJKToRASMatrix(ijkToRas)
        point = ijkToRas.MultiplyPoint(((dims[0] - 1) / 2.0, (dims[1] - 1) / 2.0, float(sliceIndex), 1.0))[:3]
        transformNode = volume.GetParentTransformNode()
        if transformNode is not None:
            toWorld = vtk.vtkGeneralTransform()
            transformNode.GetTransformToWorld(toWorld)
            point = toWorld.TransformPoint(point)
        return tuple(float(v) for v in point)

    def alignSliceViewsToVolume(self, volume) -> None:
        """Rotate the slice views to the volume's voxel planes so that a view shows exactly slice k."""
        for sliceNode in self._nodesByClass("vtkMRMLSliceNode"):
            sliceNode.RotateToVolumePlane(volume)

    def jumpToSlice(self, volume, sliceIndex: int) -> tuple[float, float, float]:
        """Move all slice views to slice ``k`` of ``volume``; returns the RAS point jumped to."""
        point = self.sliceCenterRAS(volume, sliceIndex)
        slicer.vtkMRMLSliceNode.JumpAllSlices(self.scene, *point, slicer.vtkMRMLSliceNode.DefaultJumpSlice)
        return point

    # -- export --------------------------------------------------------------------------------------

    def tumorMaskArray(self, segmentationNode, volume=None):
        """The current ``Tumor`` segment as a uint8 array ``(k, j, i)`` on ``volume``'s voxel grid."""
        import numpy as np
        from vtk.util import numpy_support

        volume = volume or self.inputVolumeOf(segmentationNode)
        if volume is None:
            raise SegmentationError(f"segmentation '{segmentationNode.GetName()}' has no reference volume")
        segmentation = segmentationNode.GetSegmentation()
        segmentId = None
        for i in range(segmentation.GetNumberOfSegments()):
            candidate = segmentation.GetNthSegmentID(i)
            segment = segmentation.GetSegment(candidate)
            if segment.GetName() == TUMOR_SEGMENT and (segmentId is None or self._segmentIsOurs(segment)):
                segmentId = candidate
        if segmentId is None:
            raise SegmentationError(f"segmentation '{segmentationNode.GetName()}' has no '{TUMOR_SEGMENT}' segment")
        dims = volume.GetImageData().GetDimensions()
        labelmap = self.scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "WeakTumorSeg temporary")
        labelmap.SetHideFromEditors(True)
        try:
            ids = vtk.vtkStringArray()
            ids.InsertNextValue(segmentId)
            if not slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
                    segmentationNode, ids, labelmap, volume):
                raise SegmentationError(f"segment '{segmentId}' could not be exported")
            image = labelmap.GetImageData()
            if image is None or image.GetPointData().GetScalars() is None:
                return np.zeros(dims[::-1], dtype=np.uint8)
            array = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(image.GetDimensions()[::-1])
            if array.shape != tuple(dims[::-1]):
                raise SegmentationError(f"the exported mask has shape {array.shape}, the volume {tuple(dims[::-1])}")
            return (array > 0).astype(np.uint8)
        finally:
            self._removeNode(labelmap)

    def exportResults(self, segmentationNode, folder: str | os.PathLike, overwrite: bool = False,
                      volume=None) -> dict[str, Path]:
        """Export the current (possibly corrected) result of one volume for training.

        Writes ``<volume>_mask.nii.gz`` (uint8 ``Tumor`` mask on the volume's grid), ``<volume>.seg.nrrd``
        (the segmentation node) and ``<volume>_manifest.csv`` (``volume,slice,status,difference_score,
        tumor_pixels``, one row per slice; ``tumor_pixels`` counted on the current mask) into ``folder``.
        Files appear together or not at all. Raises ``FileExistsError(message, [names])`` when one exists
        and ``overwrite`` is False (:class:`ExportExistsError`, a ``FileExistsError``).
        Returns ``{"mask"|"segmentation"|"manifest": path}``.
        """
        if segmentationNode is None:
            raise SegmentationError("no segmentation to export")
        volume = volume or self.inputVolumeOf(segmentationNode)
        if volume is None:
            raise SegmentationError(f"segmentation '{segmentationNode.GetName()}' has no reference volume")
        folder = Path(folder)
        stem = safeFileStem(volume.GetName())
        names = {"mask": f"{stem}_mask.nii.gz", "segmentation": f"{stem}.seg.nrrd", "manifest": f"{stem}_manifest.csv"}
        existing = [name for name in names.values() if (folder / name).exists()]
        if existing and not overwrite:
            raise ExportExistsError(folder, existing)
        mask = self.tumorMaskArray(segmentationNode, volume)
        table = segmentationNode.GetNodeReference(SLICE_TABLE_ROLE)
        bySlice = {row["slice"]: row for row in self.sliceRows(table)} if table is not None else {}
        folder.mkdir(parents=True, exist_ok=True)
        temporary = {key: folder / f".{name}.part-{os.getpid()}{_suffix(name)}" for key, name in names.items()}
        try:
            self._writeMask(mask, volume, temporary["mask"])
            storage = slicer.vtkMRMLSegmentationStorageNode()
            storage.SetFileName(str(temporary["segmentation"]))
            storage.SetCropToMinimumExtent(False)
            if not storage.WriteData(segmentationNode):
                raise SegmentationError(f"segmentation '{segmentationNode.GetName()}' could not be written")
            with open(temporary["manifest"], "w", newline="") as fh:
                writer = csv.writer(fh, lineterminator="\n")
                writer.writerow(MANIFEST_COLUMNS)
                for k in range(mask.shape[0]):
                    row = bySlice.get(k, {})
                    score = row.get("difference_score")
                    writer.writerow([volume.GetName(), k, row.get("status", "kept"),
                                     "" if score is None or score != score else f"{score:.4f}", int(mask[k].sum())])
            written = {}
            for key, name in names.items():
                os.replace(temporary[key], folder / name)
                written[key] = folder / name
            return written
        finally:
            for path in temporary.values():
                if path.exists():
                    path.unlink()

    def _writeMask(self, mask, volume, path: Path) -> None:
        labelmap = slicer.vtkMRMLLabelMapVolumeNode()
        ijkToRas = vtk.vtkMatrix4x4()
        volume.GetIJKToRASMatrix(ijkToRas)
        labelmap.SetIJKToRASMatrix(ijkToRas)
        slicer.util.updateVolumeFromArray(labelmap, mask)
        storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
        storage.SetFileName(str(path))
        storage.SetUseCompression(True)
        if not storage.WriteData(labelmap):
            raise SegmentationError(f"the mask could not be written to {path}")


def _suffix(name: str) -> str:
    for suffix in (".seg.nrrd", ".nii.gz", ".csv"):
        if name.endswith(suffix):
            return suffix
    return ""


# ------------------------------------------------------------------------------------------------
# Test (tier D: runs inside Slicer only)


class WeakTumorSegTest(ScriptedLoadableModuleTest):
    """In-Slicer self-test: segment the shipped sample volume with the shipped default bundle, check the
    nodes, review, export and check the manifest. Run it from the module's "Reload and Test" button."""

    def setUp(self) -> None:
        slicer.mrmlScene.Clear(0)

    def runTest(self) -> None:
        self.setUp()
        self.test_segment_review_export()

    def test_segment_review_export(self) -> None:
        self.delayDisplay("Installing dependencies if needed")
        self.assertTrue(installDependencies(WeakTumorSegLogic(), interactive=False))
        folders = sampleDataFolders()
        self.assertTrue(folders, "no sample data in Resources/SampleData")
        folder = folders[0]
        bundle = readBundleInfo(defaultBundlePath())
        volumes = {}
        for channel in bundle.channels:
            files = sorted(folder.glob(f"{folder.name}_{channel}.nii*"))
            self.assertTrue(files, f"sample {folder.name} lacks channel {channel}")
            volumes[channel] = slicer.util.loadVolume(str(files[0]))
        reference = volumes[bundle.referenceChannel]
        slices = reference.GetImageData().GetDimensions()[2]

        self.delayDisplay("Segmenting the sample volume")
        logic = WeakTumorSegLogic()
        stages = []
        result = logic.process(volumes, seeds=True, seedMasks=50, wait=True,
                               progressCallback=lambda stage, fraction, message: stages.append(stage))
        self.assertIn("classify", stages)
        segmentation = result.segmentationNode.GetSegmentation()
        names = {segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())}
        self.assertEqual(names, {TUMOR_SEGMENT, *SEED_SEGMENTS})
        mask = logic.tumorMaskArray(result.segmentationNode)
        self.assertGreater(int(mask.sum()), 0, "the shipped bundle found no tumour in the sample")
        self.assertEqual(result.tableNode.GetNumberOfRows(), slices)
        self.assertEqual(logic.inputVolumeOf(result.segmentationNode), reference)
        self.assertEqual(float(result.segmentationNode.GetAttribute("WeakTumorSeg.ScalpMargin")), bundle.scalpMargin)

        self.delayDisplay("Reviewing")
        statuses = {0: "excluded", 1: "corrected", 2: "kept"}
        for k, status in statuses.items():
            logic.setSliceStatus(result.tableNode, k, status)
        logic.jumpToSlice(reference, slices // 2)

        self.delayDisplay("Exporting")
        out = Path(tempfile.mkdtemp(prefix="WeakTumorSegTest-"))
        try:
            written = logic.exportResults(result.segmentationNode, out)
            with open(written["manifest"], newline="") as fh:
                rows = list(csv.DictReader(fh))
            self.assertEqual(len(rows), slices)
            for k, status in statuses.items():
                self.assertEqual(rows[k]["status"], status)
            self.assertEqual(sum(int(r["tumor_pixels"]) for r in rows), int(mask.sum()))
            with self.assertRaises(FileExistsError):
                logic.exportResults(result.segmentationNode, out)
        finally:
            shutil.rmtree(out, ignore_errors=True)

        self.delayDisplay("Running again replaces only the module's nodes")
        userSegmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "user segmentation")
        again = logic.process(volumes, wait=True)
        self.assertEqual(again.segmentationNode, result.segmentationNode)
        self.assertIsNotNone(slicer.mrmlScene.GetNodeByID(userSegmentation.GetID()))
        self.delayDisplay("Test passed")

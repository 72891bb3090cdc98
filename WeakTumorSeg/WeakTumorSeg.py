"""WeakTumorSeg: 3D Slicer module for weakly supervised brain-tumour segmentation.

The module is a thin shell around the core library ``WeakTumorSegLib``: it writes the input volume
nodes to temporary files, runs ``python -m WeakTumorSegLib segment --progress json`` in a background
process, and loads the results back as a segmentation node (segments ``Tumor`` and optionally
``Positive seeds`` / ``Negative seeds``) and a table node with one row per slice for review.
No algorithm lives here.

This file holds the four classes of Slicer's scripted-module template (and the parameter node); the
background job, the dependency installer, the device probe, the review table and the export are in the
package ``WeakTumorSegHelpers`` beside it. The Logic (:class:`WeakTumorSegLogic`) only uses MRML, VTK
and the Python standard library, so it runs both inside Slicer and against the ``slicer-core`` wheel
(no Qt); it never imports ``qt``, ``ctk`` or ``slicer.app``.
"""

from __future__ import annotations

import csv
import os
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any

import vtk

import slicer
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode

# finds the core library (WeakTumorSegLib) and imports its torch-free part, once
from WeakTumorSegHelpers.core import (SEED_SEGMENTS, TUMOR_SEGMENT, BundleInfo, defaultBundleOrEmpty, defaultBundlePath,
                                      defaultBundleSettings, readBundle, sampleDataFolders)
from WeakTumorSegHelpers.core import SegmentationError  # noqa: F401  (raised by process(): part of the API)
from WeakTumorSegHelpers import export, improve, installer, nodes, review, run, views
from WeakTumorSegHelpers.devices import DeviceMenu, DeviceProbe
from WeakTumorSegHelpers.export import ExportExistsError  # noqa: F401  (raised by exportResults: part of the API)
from WeakTumorSegHelpers.inputspanel import InputsPanel
from WeakTumorSegHelpers.installer import installDependencies
from WeakTumorSegHelpers.job import STAGES, ProgressCallback, SegmentationJob, SegmentOptions, progressDisplay
from WeakTumorSegHelpers.reviewpanel import ReviewPanel
from WeakTumorSegHelpers.run import SegmentationResult
from WeakTumorSegHelpers.slicerbase import (GUI_AVAILABLE, ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                            ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget,
                                            VTKObservationMixin, WithinRange, _, parameterNodeWrapper, qt)

#: Most input channels a bundle may ask for (one volume selector each in the GUI).
MAX_CHANNELS = 4
#: Largest scalp margin (mm) the GUI offers (the core accepts more).
MAX_SCALP_MARGIN = 50.0

PAPER_CITATION = (
    "J. J. Yoo, K. Namdar, M. W. Wagner, L. Nobre, U. Tabori, C. Hawkins, B. B. Ertl-Wagner, F. Khalvati: "
    "A novel GAN-based paradigm for weakly supervised brain tumor segmentation of MR images "
    "(arXiv:2211.05269)"
)
RISE_CITATION = (
    "V. Petsiuk, A. Das, K. Saenko: RISE: Randomized Input Sampling for Explanation of Black-box Models (BMVC 2018)"
)


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
            "correct them with the embedded Segment Editor, mark each slice kept / corrected / excluded, export "
            "the masks with a manifest, and <b>Improve the model</b>: train the bundle's final segmenter on them. "
            "The optional seeds come from the classifier's explanation maps (the bundle's seed method; RISE, {rise}, "
            "in the shipped bundles). See the README for details."
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
        bundle's), seeds, output and export folder; the exports, cohort and new bundle folders to improve it."""

        inputVolume0: vtkMRMLScalarVolumeNode
        inputVolume1: vtkMRMLScalarVolumeNode
        inputVolume2: vtkMRMLScalarVolumeNode
        inputVolume3: vtkMRMLScalarVolumeNode
        bundlePath: Path = defaultBundleOrEmpty()
        device: str = "auto"
        threshold: Annotated[float, WithinRange(0.0, 1.0)] = 0.2
        scalpMargin: Annotated[float, WithinRange(0.0, MAX_SCALP_MARGIN)] = min(
            defaultBundleSettings().scalp_margin_mm, MAX_SCALP_MARGIN)
        showSeeds: bool = False
        outputSegmentation: vtkMRMLSegmentationNode
        exportFolder: Path = Path.home()
        trainingExports: Path = Path.home()
        trainingCohort: Path = Path.home()
        improvedBundlePath: Path = Path()


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
        self.ui.progressBar.setVisible(False)
        self.logic = WeakTumorSegLogic()
        self.inputs = InputsPanel(self.ui, self.logic, lambda: self._parameterNode, MAX_CHANNELS)
        self.review = ReviewPanel(self.ui, self.logic, lambda: self._parameterNode)  # review, correct, export
        self.improve = improve.ImprovePanel(self.ui, self.logic, lambda: self._parameterNode)  # train a bundle
        self.deviceMenu = DeviceMenu(self.ui.deviceComboBox, self.onDeviceChosen)
        self._timer = qt.QTimer()
        self._timer.setInterval(100)
        self._timer.connect("timeout()", self.onTimer)
        self.connectSignals()
        self.initializeParameterNode()
        self.onBundleChanged()
        self.startDeviceProbe()

    def connectSignals(self) -> None:
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.segmentButton.connect("clicked(bool)", self.onSegmentButton)
        self.ui.bundlePathLineEdit.connect("currentPathChanged(QString)", self.onBundleChanged)
        self.ui.outputSegmentationSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.review.update)

    def cleanup(self) -> None:
        self.cancelJob()
        self.improve.cleanup()
        self._timer.stop()
        self.removeObservers()
        self.review = None

    def onReload(self) -> None:
        """Reload the helper modules too (Slicer reloads only this file)."""
        for name in [n for n in sys.modules if n.startswith("WeakTumorSegHelpers")]:
            del sys.modules[name]
        ScriptedLoadableModuleWidget.onReload(self)

    def enter(self) -> None:
        self.initializeParameterNode()
        self.review.enter()
        probe = self._probe.result if self._probe is not None else None
        if probe is not None and not probe.get("gpus") and not self.jobRunning():
            self.startDeviceProbe()  # PyTorch may have been installed or replaced meanwhile

    def exit(self) -> None:
        self.review.exit()
        self.disconnectParameterNode()  # kept: a running job still reports into it

    def onSceneStartClose(self, caller, event) -> None:
        self.cancelJob()
        self.review.editSegmentation(None, None)
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if str(self._parameterNode.bundlePath) in ("", "."):
            self._parameterNode.bundlePath = defaultBundleOrEmpty()

    def disconnectParameterNode(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateButtons)

    def setParameterNode(self, inputParameterNode) -> None:
        self.disconnectParameterNode()
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateButtons)
            self.deviceMenu.select(self._parameterNode.device)
            self.updateButtons()
            self.review.update()

    # -- inputs ------------------------------------------------------------------------------------

    def onBundleChanged(self, *args) -> None:
        """Show the bundle's name and label one volume selector per channel it needs."""
        previous = self._bundle
        self._bundle = self.inputs.showBundle(self.ui.bundlePathLineEdit.currentPath)
        another = self._bundle is not None and previous is not None and previous.path != self._bundle.path
        if another and self._parameterNode:
            settings = self._bundle.settings()  # a new bundle brings its own defaults
            self._parameterNode.threshold = settings.filter_threshold
            self._parameterNode.scalpMargin = min(settings.scalp_margin_mm, MAX_SCALP_MARGIN)
        self.inputs.showChannels(self._bundle.channels if self._bundle else [])
        self.updateButtons()

    def startDeviceProbe(self) -> None:
        self._probe = DeviceProbe()
        self.deviceMenu.fill(None, self._parameterNode.device if self._parameterNode else "auto")
        self._timer.start()

    def onDeviceChosen(self, value: str) -> None:
        if self._parameterNode:
            self._parameterNode.device = value

    def inputVolumes(self) -> dict[str, vtkMRMLScalarVolumeNode]:
        """Selected volume per bundle channel (only the channels that have one)."""
        return self.inputs.inputVolumes(self._bundle)

    def updateButtons(self, caller=None, event=None) -> None:
        if self.jobRunning():
            self.ui.segmentButton.text = _("Cancel")
            self.ui.segmentButton.toolTip = _("Stop the segmentation; nothing is added to the scene")
            self.ui.segmentButton.enabled = True
            return
        self.ui.segmentButton.text = _("Segment")
        ready = bool(self._bundle) and len(self.inputVolumes()) == len(self._bundle.channels)
        self.ui.segmentButton.enabled = ready
        self.ui.segmentButton.toolTip = (_("Segment the tumour in the selected volumes") if ready
                                         else _("Choose a model bundle and one volume per channel"))
        self.ui.exportButton.enabled = self.review.currentSegmentation() is not None

    # -- Segment / Cancel --------------------------------------------------------------------------

    def jobRunning(self) -> bool:
        return self._job is not None and self._job.running

    def cancelJob(self) -> None:
        if self.jobRunning():
            self._job.cancel()

    def onSegmentButton(self) -> None:
        if self.jobRunning():
            self._job.cancel()
            self.onJobEnded()
            return
        with slicer.util.tryWithErrorDisplay(_("Segmentation could not start."), waitCursor=True):
            if not installDependencies(interactive=True):
                self.ui.statusLabel.text = _("Dependencies are not installed; nothing was done.")
                return
            if self._probe is None or (self._probe.result and not self._probe.result.get("torch")):
                self.startDeviceProbe()  # torch may have just been installed
            p = self._parameterNode
            self.review.segmentEditorWidget.setActiveEffect(None)
            self._job = self.logic.process(self.inputVolumes(), bundlePath=p.bundlePath, device=p.device,
                                           threshold=p.threshold, scalpMargin=p.scalpMargin, seeds=p.showSeeds,
                                           outputSegmentation=p.outputSegmentation, wait=False,
                                           progressCallback=progressDisplay(self.ui.progressBar, self.ui.statusLabel))
            self.ui.progressBar.value = 0
            self.ui.progressBar.setVisible(True)
            self.ui.statusLabel.text = STAGES["start"][0]
            self._timer.start()
            self.updateButtons()

    def onTimer(self) -> None:
        if self._probe is not None and self._probe.result is None and self._probe.poll() is not None:
            self.deviceMenu.fill(self._probe.result, self._parameterNode.device if self._parameterNode else "auto")
        if self.jobRunning() and self._job.poll():
            self.onJobEnded()
        if not self.jobRunning() and not (self._probe is not None and self._probe.result is None):
            self._timer.stop()

    def onJobEnded(self) -> None:
        job = self._job
        self.ui.progressBar.setVisible(False)
        if job.state == "succeeded":
            self._parameterNode.outputSegmentation = job.result.segmentationNode
            self.review.showResult(job.result)
            self.ui.statusLabel.text = job.result.summary()
        elif job.state == "cancelled":
            self.ui.statusLabel.text = _("Cancelled; nothing was added to the scene.")
        else:
            self.ui.statusLabel.text = _("Failed: {error}").format(error=job.error)
            slicer.util.errorDisplay(_("Segmentation failed: {error}").format(error=job.error),
                                     detailedText=getattr(job.error, "details", "") or None)
        self.updateButtons()


# ------------------------------------------------------------------------------------------------
# Logic


class WeakTumorSegLogic(ScriptedLoadableModuleLogic):
    """MRML side of the module: volume nodes -> temporary files -> core process -> result nodes.

    Usable without a GUI: ``WeakTumorSegLogic(scene)`` with any ``vtkMRMLScene`` (``slicer.mrmlScene``
    by default). Uses MRML, VTK and the standard library only; the work is done by the helpers
    (``WeakTumorSegHelpers``), which several methods here simply are.
    """

    def __init__(self, scene=None) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        if scene is None:
            scene = getattr(slicer, "mrmlScene", None)
            if scene is None:
                raise ValueError("no MRML scene: pass one, e.g. WeakTumorSegLogic(slicer.vtkMRMLScene())")
        self.scene = scene

    if GUI_AVAILABLE:

        def getParameterNode(self) -> WeakTumorSegParameterNode:
            return WeakTumorSegParameterNode(super().getParameterNode())

    # checks of the dependencies (installDependencies installs them)
    torchInstalled = staticmethod(installer.torchInstalled)
    missingRequirements = staticmethod(installer.missingRequirements)

    # -- nodes ---------------------------------------------------------------------------------------

    def resultNodesFor(self, volume) -> tuple:
        """This module's segmentation and slice table made for ``volume`` (``None`` where absent)."""
        return nodes.resultNodesFor(self.scene, volume)

    def guessVolumeForChannel(self, channel: str) -> vtkMRMLScalarVolumeNode | None:
        """A volume whose name ends with (or contains) the channel name, e.g. ``P01_flair`` for ``flair``."""
        return nodes.guessVolumeForChannel(self.scene, channel)

    def segmentEditorNode(self) -> slicer.vtkMRMLSegmentEditorNode:
        """The module's own Segment Editor parameter node (a singleton)."""
        return nodes.segmentEditorNode(self.scene)

    def loadSegmentationFile(self, path: str | os.PathLike) -> vtkMRMLSegmentationNode:
        """Read a ``.seg.nrrd`` into a new, temporary segmentation node (the caller removes it)."""
        return nodes.loadSegmentationFile(self.scene, path)

    isOurs = staticmethod(nodes.isOurs)
    inputVolumeOf = staticmethod(nodes.inputVolumeOf)
    resultWarnings = staticmethod(run.resultWarnings)  # the core's warnings about the run that made a segmentation
    writeVolume = staticmethod(nodes.writeVolume)
    train = staticmethod(improve.train)  # a bundle's final segmenter trained on reviewed exports, as a new bundle

    # -- segmenting ----------------------------------------------------------------------------------

    def process(self, inputVolumes: Mapping[str, vtkMRMLScalarVolumeNode] | Sequence[vtkMRMLScalarVolumeNode],
                bundlePath: str | os.PathLike | None = None, device: str = "auto", threshold: float | None = None,
                scalpMargin: float | None = None, seeds: bool = False,
                outputSegmentation: vtkMRMLSegmentationNode | None = None, wait: bool = True,
                progressCallback: ProgressCallback | None = None, threads: int | None = None,
                seedMasks: int | None = None, timeout: float | None = None) -> SegmentationResult | SegmentationJob:
        """Segment one patient: a volume per channel of the bundle (a dict ``{channel: node}``, or a list in
        the bundle's channel order; the default bundle when ``bundlePath`` is not given).

        Runs the core in a background process. With ``wait=True`` blocks and returns a
        :class:`SegmentationResult` (or raises :class:`SegmentationError` with the core's one-line message);
        with ``wait=False`` returns a :class:`SegmentationJob` to :meth:`~SegmentationJob.poll`.
        ``progressCallback(stage, fraction, message)`` is called from the thread that polls.
        ``threshold`` and ``scalpMargin`` (mm; 0 is off, as skull-stripped images need) default to the bundle's.
        """
        bundle = readBundle(bundlePath if bundlePath is not None and str(bundlePath) not in ("", ".")
                            else defaultBundlePath())
        volumes = run.volumesForChannels(bundle, inputVolumes)
        options = SegmentOptions(device or "auto", threshold, scalpMargin, bool(seeds), seedMasks, threads)
        job = run.startSegmentation(self.scene, bundle, volumes, options, outputSegmentation, progressCallback)
        return job.wait(timeout) if wait else job

    # -- slice review table (the table node of a result) ---------------------------------------------
    fillSliceTable = staticmethod(review.fillSliceTable)
    sliceRows = staticmethod(review.sliceRows)
    setSliceStatus = staticmethod(review.setSliceStatus)
    sliceStatus = staticmethod(review.sliceStatus)
    flaggedSlices = staticmethod(review.flaggedSlices)
    nextFlaggedSlice = staticmethod(review.nextFlaggedSlice)
    statusCounts = staticmethod(review.statusCounts)

    # -- slice views and export ----------------------------------------------------------------------

    def alignSliceViewsToVolume(self, volume) -> None:
        """Rotate the slice views to the volume's voxel planes so that a view shows exactly slice k."""
        views.alignSliceViewsToVolume(self.scene, volume)

    def jumpToSlice(self, volume, sliceIndex: int) -> tuple[float, float, float]:
        """Move all slice views to slice ``k`` of ``volume``; returns the RAS point jumped to."""
        return views.jumpToSlice(self.scene, volume, sliceIndex)

    def tumorMaskArray(self, segmentationNode, volume=None) -> Any:
        """The current ``Tumor`` segment as a uint8 array ``(k, j, i)`` on ``volume``'s voxel grid."""
        return export.tumorMaskArray(self.scene, segmentationNode, volume)

    def exportResults(self, segmentationNode, folder: str | os.PathLike, overwrite: bool = False,
                      volume=None) -> dict[str, Path]:
        """Export the current (possibly corrected) result of one volume for training into ``folder``:
        ``<volume>_mask.nii.gz``, ``<volume>.seg.nrrd`` and ``<volume>_manifest.csv`` (one row per slice:
        ``volume,slice,status,difference_score,tumor_pixels``), all or none. Raises :class:`ExportExistsError`
        (a ``FileExistsError``) when one exists and ``overwrite`` is False. Returns ``{kind: path}``."""
        return export.exportResults(self.scene, segmentationNode, folder, overwrite, volume)


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

    def loadSample(self, bundle: BundleInfo) -> dict:
        """The first shipped sample patient's volume per channel of ``bundle``."""
        folders = sampleDataFolders()
        self.assertTrue(folders, "no sample data in Resources/SampleData")
        volumes = {}
        for channel in bundle.channels:
            files = sorted(folders[0].glob(f"{folders[0].name}_{channel}.nii*"))
            self.assertTrue(files, f"sample {folders[0].name} lacks channel {channel}")
            volumes[channel] = slicer.util.loadVolume(str(files[0]))
        return volumes

    def test_segment_review_export(self) -> None:
        self.delayDisplay("Installing dependencies if needed")
        self.assertTrue(installDependencies(interactive=False))
        bundle = readBundle(defaultBundlePath())
        volumes = self.loadSample(bundle)
        reference = volumes[bundle.flair_channel]
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
        self.assertEqual(float(result.segmentationNode.GetAttribute("WeakTumorSeg.ScalpMargin")),
                         bundle.settings().scalp_margin_mm)

        self.delayDisplay("Reviewing")
        statuses = {0: "excluded", 1: "corrected", 2: "kept"}
        for k, status in statuses.items():
            logic.setSliceStatus(result.tableNode, k, status)
        logic.jumpToSlice(reference, slices // 2)

        self.delayDisplay("Exporting")
        with tempfile.TemporaryDirectory(prefix="WeakTumorSegTest-") as out:
            written = logic.exportResults(result.segmentationNode, out)
            with open(written["manifest"], newline="") as fh:
                manifest = list(csv.DictReader(fh))
            self.assertEqual([r["status"] for r in manifest[:3]], [statuses[k] for k in range(3)])
            self.assertEqual(len(manifest), slices)
            self.assertEqual(sum(int(r["tumor_pixels"]) for r in manifest), int(mask.sum()))
            with self.assertRaises(FileExistsError):
                logic.exportResults(result.segmentationNode, out)

        self.delayDisplay("Running again replaces only the module's nodes")
        userSegmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "user segmentation")
        again = logic.process(volumes, wait=True)
        self.assertEqual(again.segmentationNode, result.segmentationNode)
        self.assertIsNotNone(slicer.mrmlScene.GetNodeByID(userSegmentation.GetID()))
        self.delayDisplay("Test passed")

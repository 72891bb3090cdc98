"""One run of the core on volume nodes, from the inputs to the result nodes.

:func:`startSegmentation` checks the volumes, writes them to temporary files and starts a
:class:`~WeakTumorSegHelpers.job.SegmentationJob`; once the process has succeeded, :func:`loadResults`
(on the scene's thread) turns the core's outputs into nodes: the segmentation (the module's segments
replaced, the user's kept), the slice review table, their references, attributes and place in the
subject hierarchy. The core's warnings about the run (an input unlike the bundle's training data, an
empty mask that may be a miss) are kept on the segmentation (:func:`resultWarnings`) so that the GUI shows
them beside whichever result is current.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import slicer

from . import nodes, review
from .core import SEED_SEGMENTS, BundleInfo, SegmentationError, safeFileStem
from .job import ProgressCallback, SegmentationJob, SegmentOptions, outputFiles, segmentCommand
from .nodes import CREATED_BY, CREATOR, INPUT_VOLUME_ROLE, SLICE_TABLE_ROLE
from .slicerbase import _

#: The bundle's own inference settings that the segmentation records (attribute name, report key).
_BUNDLE_SETTINGS = (("SliceSmoothing", "slice_smoothing"), ("FlairTrim", "flair_trim"),
                    ("KeepComponents", "keep_components"))
#: Segmentation attribute holding the core's warnings about the run that made it (a JSON list of strings).
WARNINGS_ATTRIBUTE = "WeakTumorSeg.Warnings"
#: What the summary says of an empty mask instead of a confident "no tumour".
EMPTY_MASK_CAUTION = _("No tumour was found; this is not a confirmation that there is none — review the images.")
#: What the summary says of the brain extraction (the report's ``preprocessing.skull_stripped``).
_SKULL_STRIPPED = {False: _("Brain extracted."), True: _("Input was skull-stripped already.")}


def reportWarnings(report: dict) -> list[str]:
    """The report's ``warnings`` (the input unlike the training data, an empty mask that may be a miss);
    [] where absent, as in reports of older versions of the core."""
    warnings = report.get("warnings")
    return [str(w) for w in warnings if str(w).strip()] if isinstance(warnings, list) else []


def resultWarnings(segmentationNode: Any) -> list[str]:
    """The warnings the core gave about the run that made ``segmentationNode`` ([] for none, or for a
    segmentation made elsewhere or by an older version of the module)."""
    text = segmentationNode.GetAttribute(WARNINGS_ATTRIBUTE) if segmentationNode is not None else None
    try:
        warnings = json.loads(text) if text else []
    except ValueError:
        return []
    return reportWarnings({"warnings": warnings})


@dataclass
class SegmentationResult:
    """Nodes made or updated by a finished run, and the core's report."""

    inputVolume: Any
    segmentationNode: Any
    tableNode: Any
    report: dict = field(default_factory=dict)

    @property
    def warnings(self) -> list[str]:
        """The core's warnings about this run (:func:`reportWarnings`)."""
        return reportWarnings(self.report)

    @property
    def skullStripped(self) -> bool | None:
        """True when the input was skull-stripped already, False when the core extracted the brain, None
        when not known (a bundle without brain extraction, or an older report)."""
        preprocessing = self.report.get("preprocessing")
        stripped = preprocessing.get("skull_stripped") if isinstance(preprocessing, dict) else None
        return stripped if isinstance(stripped, bool) else None

    @property
    def empty(self) -> bool:
        """True when the report says the mask has no tumour voxel (False when it does not say)."""
        return self.report.get("counts", {}).get("tumor_voxels") == 0

    def summary(self) -> str:
        """One line for the status bar: the device, the slices with tumour and flagged, the brain extraction.
        An empty mask is not a confident "no tumour": the line says so (:data:`EMPTY_MASK_CAUTION`)."""
        counts = self.report.get("counts", {})
        values = {"device": self.report.get("device", "?"), "tumor": counts.get("tumor_slices", "?"),
                  "slices": counts.get("slices", "?"), "flagged": counts.get("flagged_slices", "?")}
        if self.empty:
            text = _("Done on {device}: {flagged} of {slices} slices flagged for review.").format(**values)
            text += " " + EMPTY_MASK_CAUTION
        else:
            text = _("Done on {device}: {tumor} of {slices} slices with tumour, {flagged} flagged for review.").format(
                **values)
        stripped = self.skullStripped
        return text + (" " + _SKULL_STRIPPED[stripped] if stripped is not None else "")


@dataclass(frozen=True)
class ResultRequest:
    """What a run was asked for: the volume the results belong to (the bundle's FLAIR channel), the
    bundle, the output segmentation chosen (None: the module's own) and the options."""

    volume: Any
    bundlePath: Path
    outputSegmentation: Any
    options: SegmentOptions


def volumesForChannels(bundle: BundleInfo, inputVolumes: Mapping[str, Any] | Sequence[Any]) -> dict[str, Any]:
    """The volume of each of the bundle's channels (given as ``{channel: node}`` or in the bundle's channel
    order); :class:`SegmentationError` if one is missing or has no image data."""
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
    return volumes


def startSegmentation(scene: Any, bundle: BundleInfo, volumes: Mapping[str, Any], options: SegmentOptions,
                      outputSegmentation: Any = None,
                      progressCallback: ProgressCallback | None = None) -> SegmentationJob:
    """Write the volumes (one per channel of the bundle) to a temporary folder and start ``segment`` on
    them; the job loads the results into ``scene`` when it succeeds and removes the folder when it ends."""
    options.check()
    if outputSegmentation is not None and outputSegmentation.GetScene() != scene:
        raise SegmentationError("the output segmentation is not in this scene")
    request = ResultRequest(volumes[bundle.flair_channel], bundle.path, outputSegmentation, options)
    workdir = Path(tempfile.mkdtemp(prefix="WeakTumorSeg-"))
    try:
        files = {channel: workdir / "in" / f"{safeFileStem(channel)}.nrrd" for channel in bundle.channels}
        for channel, path in files.items():
            nodes.writeVolume(volumes[channel], path)
        outputs = outputFiles(workdir / "out")
        return SegmentationJob(segmentCommand(bundle.path, workdir / "out", files, options), workdir,
                               lambda: loadResults(scene, request, outputs), options.seeds,
                               {str(path): volumes[c].GetName() for c, path in files.items()}, progressCallback)
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise


def loadResults(scene: Any, request: ResultRequest, outputs: dict[str, Path]) -> SegmentationResult:
    """Turn the core's output files (:func:`~WeakTumorSegHelpers.job.outputFiles`) into nodes."""
    for kind in ("segmentation", "slices"):
        if not outputs[kind].is_file():
            raise SegmentationError(f"the core finished without writing {outputs[kind].name}")
    rows = review.readSliceCsv(outputs["slices"])
    report = json.loads(outputs["report"].read_text()) if outputs["report"].is_file() else {}
    volume = request.volume
    loaded = nodes.loadSegmentationFile(scene, outputs["segmentation"])
    try:
        segNode = _targetSegmentation(scene, volume, request.outputSegmentation)
        _replaceOurSegments(segNode, loaded)
    finally:
        nodes.removeNode(scene, loaded)
    segNode.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    segNode.SetAndObserveTransformNodeID(volume.GetTransformNodeID())
    segNode.SetNodeReferenceID(INPUT_VOLUME_ROLE, volume.GetID())
    _recordSettings(segNode, request, report)
    _styleSegments(segNode)

    table = _targetTable(scene, volume)
    review.fillSliceTable(table, rows)
    table.SetNodeReferenceID(INPUT_VOLUME_ROLE, volume.GetID())
    segNode.SetNodeReferenceID(SLICE_TABLE_ROLE, table.GetID())
    for node in (segNode, table):
        if nodes.isOurs(node):  # never move the user's own nodes
            nodes.placeBesideVolume(node, volume)
    return SegmentationResult(volume, segNode, table, report)


def _recordSettings(segNode: Any, request: ResultRequest, report: dict) -> None:
    """The bundle, device and settings of the run as ``WeakTumorSeg.*`` attributes (the report's values)."""
    options = request.options
    segNode.SetAttribute("WeakTumorSeg.Bundle", str(request.bundlePath))
    segNode.SetAttribute("WeakTumorSeg.Device", str(report.get("device", options.device)))
    segNode.SetAttribute("WeakTumorSeg.Threshold", str(report.get("threshold", options.threshold)))
    segNode.SetAttribute("WeakTumorSeg.ScalpMargin", str(report.get("scalp_margin_mm", options.scalpMargin)))
    for attribute, key in _BUNDLE_SETTINGS:
        segNode.SetAttribute(f"WeakTumorSeg.{attribute}", str(report.get(key, "")))
    segNode.SetAttribute(WARNINGS_ATTRIBUTE, json.dumps(reportWarnings(report)))


def _targetSegmentation(scene: Any, volume: Any, requested: Any) -> Any:
    # an output chosen by the user is used; one of ours made for another volume is not (it belongs to that one)
    if requested is not None and not (nodes.isOurs(requested)
                                      and requested.GetNodeReferenceID(INPUT_VOLUME_ROLE) != volume.GetID()):
        return requested
    existing, _table = nodes.resultNodesFor(scene, volume)
    if existing is not None:
        return existing
    node = nodes.addOurNode(scene, "vtkMRMLSegmentationNode", f"{volume.GetName()} segmentation")
    node.CreateDefaultDisplayNodes()
    return node


def _targetTable(scene: Any, volume: Any) -> Any:
    _segmentation, existing = nodes.resultNodesFor(scene, volume)
    if existing is not None:
        return existing
    return nodes.addOurNode(scene, "vtkMRMLTableNode", f"{volume.GetName()} slice review")


def _replaceOurSegments(target: Any, source: Any) -> None:
    """Remove the segments this module added to ``target`` earlier and copy in those of ``source``;
    segments the user made are kept."""
    targetSeg, sourceSeg = target.GetSegmentation(), source.GetSegmentation()
    wasModifying = target.StartModify()
    try:
        for segmentId in [targetSeg.GetNthSegmentID(i) for i in range(targetSeg.GetNumberOfSegments())]:
            if nodes.segmentIsOurs(targetSeg.GetSegment(segmentId)):
                targetSeg.RemoveSegment(segmentId)
        for i in range(sourceSeg.GetNumberOfSegments()):
            segment = targetSeg.GetSegment(_copySegment(target, sourceSeg, sourceSeg.GetNthSegmentID(i)))
            segment.SetTag(CREATED_BY, CREATOR)
            segment.SetNameAutoGenerated(False)
            segment.SetColorAutoGenerated(False)
    finally:
        target.EndModify(wasModifying)


def _copySegment(target: Any, sourceSeg: Any, segmentId: str) -> str:
    """Copy one segment into ``target``; returns its ID there (a new one if the user has that ID)."""
    targetSeg = target.GetSegmentation()
    if targetSeg.GetSegment(segmentId) is None:
        if not targetSeg.CopySegmentFromSegmentation(sourceSeg, segmentId):
            raise SegmentationError(f"segment '{segmentId}' could not be copied into '{target.GetName()}'")
        return segmentId
    segment = slicer.vtkSegment()
    segment.DeepCopy(sourceSeg.GetSegment(segmentId))
    newId = targetSeg.GenerateUniqueSegmentID(segmentId)
    targetSeg.AddSegment(segment, newId)
    return newId


def _styleSegments(segNode: Any) -> None:
    """Tumour filled, seeds as outlines."""
    display = segNode.GetDisplayNode()
    if display is None:
        return
    segmentation = segNode.GetSegmentation()
    for i in range(segmentation.GetNumberOfSegments()):
        segmentId = segmentation.GetNthSegmentID(i)
        segment = segmentation.GetSegment(segmentId)
        if nodes.segmentIsOurs(segment) and segment.GetName() in SEED_SEGMENTS:
            display.SetSegmentVisibility2DFill(segmentId, False)

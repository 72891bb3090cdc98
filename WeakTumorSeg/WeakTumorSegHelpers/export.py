"""Export of one volume's current (possibly corrected) result for training a semi-supervised segmenter:
``<volume>_mask.nii.gz`` (the ``Tumor`` segment as a uint8 mask on the volume's voxel grid),
``<volume>.seg.nrrd`` (the segmentation node) and ``<volume>_manifest.csv`` (the review statuses, see
:mod:`.review`). The files appear together or not at all."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import vtk

import slicer

from . import nodes, review
from .core import TUMOR_SEGMENT, SegmentationError, safeFileStem

#: Suffixes of the exported files (kept on their temporary names).
_SUFFIXES = (".seg.nrrd", ".nii.gz", ".csv")


class ExportExistsError(FileExistsError):
    """Export files exist already; ``existing`` lists their names."""

    def __init__(self, folder: Path, existing: list[str]) -> None:
        super().__init__(f"{folder}: {', '.join(existing)} already exist(s); "
                         "allow overwriting or choose another folder")
        self.folder = folder
        self.existing = list(existing)


def exportNames(volume: Any) -> dict[str, str]:
    """The file names written for ``volume``, by kind (``mask``, ``segmentation``, ``manifest``)."""
    stem = safeFileStem(volume.GetName())
    return {"mask": f"{stem}_mask.nii.gz", "segmentation": f"{stem}.seg.nrrd", "manifest": f"{stem}_manifest.csv"}


def _referenceVolume(segmentationNode: Any, volume: Any) -> Any:
    volume = volume or nodes.inputVolumeOf(segmentationNode)
    if volume is None:
        raise SegmentationError(f"segmentation '{segmentationNode.GetName()}' has no reference volume")
    return volume


def _tumorSegmentId(segmentationNode: Any) -> str:
    """The ``Tumor`` segment's ID (the module's own when there are several)."""
    segmentation = segmentationNode.GetSegmentation()
    segmentId = None
    for i in range(segmentation.GetNumberOfSegments()):
        candidate = segmentation.GetNthSegmentID(i)
        segment = segmentation.GetSegment(candidate)
        if segment.GetName() == TUMOR_SEGMENT and (segmentId is None or nodes.segmentIsOurs(segment)):
            segmentId = candidate
    if segmentId is None:
        raise SegmentationError(f"segmentation '{segmentationNode.GetName()}' has no '{TUMOR_SEGMENT}' segment")
    return segmentId


def tumorMaskArray(scene: Any, segmentationNode: Any, volume: Any = None) -> Any:
    """The current ``Tumor`` segment as a uint8 array ``(k, j, i)`` on ``volume``'s voxel grid (default:
    the segmentation's input volume)."""
    volume = _referenceVolume(segmentationNode, volume)
    segmentId = _tumorSegmentId(segmentationNode)
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "WeakTumorSeg temporary")
    labelmap.SetHideFromEditors(True)
    try:
        ids = vtk.vtkStringArray()
        ids.InsertNextValue(segmentId)
        if not slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
                segmentationNode, ids, labelmap, volume):
            raise SegmentationError(f"segment '{segmentId}' could not be exported")
        return _maskOf(labelmap, volume.GetImageData().GetDimensions()[::-1])
    finally:
        nodes.removeNode(scene, labelmap)


def _maskOf(labelmap: Any, shape: tuple[int, int, int]) -> Any:
    import numpy as np
    from vtk.util import numpy_support

    image = labelmap.GetImageData()
    if image is None or image.GetPointData().GetScalars() is None:
        return np.zeros(shape, dtype=np.uint8)
    array = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(image.GetDimensions()[::-1])
    if array.shape != tuple(shape):
        raise SegmentationError(f"the exported mask has shape {array.shape}, the volume {tuple(shape)}")
    return (array > 0).astype(np.uint8)


def exportResults(scene: Any, segmentationNode: Any, folder: str | os.PathLike, overwrite: bool = False,
                  volume: Any = None) -> dict[str, Path]:
    """Export the current result of one volume into ``folder`` (see the module's docstring); the manifest's
    ``tumor_pixels`` are counted on the current mask. Raises :class:`ExportExistsError` (a
    ``FileExistsError``) when a file exists and ``overwrite`` is False. Returns ``{kind: path}``."""
    if segmentationNode is None:
        raise SegmentationError("no segmentation to export")
    volume = _referenceVolume(segmentationNode, volume)
    folder = Path(folder)
    names = exportNames(volume)
    existing = [name for name in names.values() if (folder / name).exists()]
    if existing and not overwrite:
        raise ExportExistsError(folder, existing)
    mask = tumorMaskArray(scene, segmentationNode, volume)
    folder.mkdir(parents=True, exist_ok=True)
    temporary = {key: folder / f".{name}.part-{os.getpid()}{_suffix(name)}" for key, name in names.items()}
    try:
        _writeMask(mask, volume, temporary["mask"])
        _writeSegmentation(segmentationNode, temporary["segmentation"])
        review.writeManifest(temporary["manifest"], volume.GetName(), mask,
                             segmentationNode.GetNodeReference(nodes.SLICE_TABLE_ROLE))
        for key, name in names.items():
            os.replace(temporary[key], folder / name)
        return {key: folder / name for key, name in names.items()}
    finally:
        for path in temporary.values():
            if path.exists():
                path.unlink()


def _suffix(name: str) -> str:
    return next((suffix for suffix in _SUFFIXES if name.endswith(suffix)), "")


def _writeSegmentation(segmentationNode: Any, path: Path) -> None:
    storage = slicer.vtkMRMLSegmentationStorageNode()
    storage.SetFileName(str(path))
    storage.SetCropToMinimumExtent(False)
    if not storage.WriteData(segmentationNode):
        raise SegmentationError(f"segmentation '{segmentationNode.GetName()}' could not be written")


def _writeMask(mask: Any, volume: Any, path: Path) -> None:
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

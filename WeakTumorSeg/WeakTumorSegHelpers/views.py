"""Slice views that show exactly one axial slice (third voxel axis, ``k``) of a volume, whatever its
direction matrix: rotate the views to the volume's voxel planes, then jump to a slice's centre."""

from __future__ import annotations

from typing import Any

import vtk

import slicer

from .nodes import nodesByClass


def sliceCenterRAS(volume: Any, sliceIndex: int) -> tuple[float, float, float]:
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


def alignSliceViewsToVolume(scene: Any, volume: Any) -> None:
    """Rotate the slice views to the volume's voxel planes so that a view shows exactly slice k."""
    for sliceNode in nodesByClass(scene, "vtkMRMLSliceNode"):
        sliceNode.RotateToVolumePlane(volume)


def jumpToSlice(scene: Any, volume: Any, sliceIndex: int) -> tuple[float, float, float]:
    """Move all slice views to slice ``k`` of ``volume``; returns the RAS point jumped to."""
    point = sliceCenterRAS(volume, sliceIndex)
    slicer.vtkMRMLSliceNode.JumpAllSlices(scene, *point, slicer.vtkMRMLSliceNode.DefaultJumpSlice)
    return point

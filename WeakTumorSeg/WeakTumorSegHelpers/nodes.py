"""The module's nodes in the scene: how they are marked, found, written, read and removed.

Nodes (and segments) this module made carry :data:`CREATED_BY`; a segmentation and its slice table
refer to their input volume (:data:`INPUT_VOLUME_ROLE`), the segmentation to its table
(:data:`SLICE_TABLE_ROLE`). Only MRML and VTK are used.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import vtk

import slicer

from .core import SegmentationError

#: Attribute (and segment tag) that marks what this module created; its value is :data:`CREATOR`.
CREATED_BY = "WeakTumorSeg.CreatedBy"
CREATOR = "WeakTumorSeg"
#: Node reference roles linking the results to their input volume and slice table.
INPUT_VOLUME_ROLE = "WeakTumorSeg.InputVolume"
SLICE_TABLE_ROLE = "WeakTumorSeg.SliceTable"


def isOurs(node: Any) -> bool:
    """True for nodes this module created."""
    return node is not None and node.GetAttribute(CREATED_BY) == CREATOR


def segmentIsOurs(segment: Any) -> bool:
    """True for segments this module added."""
    value = vtk.mutable("")
    return bool(segment.GetTag(CREATED_BY, value)) and str(value) == CREATOR


def nodesByClass(scene: Any, className: str) -> list:
    """The scene's nodes of one class (subclasses included), in scene order."""
    return [scene.GetNthNodeByClass(i, className) for i in range(scene.GetNumberOfNodesByClass(className))]


def resultNodesFor(scene: Any, volume: Any) -> tuple[Any, Any]:
    """This module's segmentation and slice table made for ``volume`` (``None`` where absent)."""
    found = []
    for className in ("vtkMRMLSegmentationNode", "vtkMRMLTableNode"):
        matches = [node for node in nodesByClass(scene, className)
                   if isOurs(node) and node.GetNodeReferenceID(INPUT_VOLUME_ROLE) == volume.GetID()]
        found.append(matches[0] if matches else None)
    return found[0], found[1]


def inputVolumeOf(segmentationNode: Any) -> Any:
    """The volume a segmentation was made from (or, for other segmentations, its reference volume)."""
    if segmentationNode is None:
        return None
    volume = segmentationNode.GetNodeReference(INPUT_VOLUME_ROLE)
    if volume is None:
        volume = segmentationNode.GetNodeReference("referenceImageGeometryRef")
    return volume


def guessVolumeForChannel(scene: Any, channel: str) -> Any:
    """A volume whose name ends with (or contains) the channel name, e.g. ``P01_flair`` for ``flair``."""
    volumes = [n for n in nodesByClass(scene, "vtkMRMLScalarVolumeNode")
               if n.GetClassName() == "vtkMRMLScalarVolumeNode" and not n.GetHideFromEditors()]
    key = channel.lower()
    for test in (lambda name: re.split(r"[\s_.-]+", name)[-1] == key, lambda name: key in name):
        for node in volumes:
            if test((node.GetName() or "").lower()):
                return node
    return None


def segmentEditorNode(scene: Any) -> Any:
    """The module's own Segment Editor parameter node (a singleton)."""
    node = scene.GetSingletonNode(CREATOR, "vtkMRMLSegmentEditorNode")
    if node is None:
        node = scene.CreateNodeByClass("vtkMRMLSegmentEditorNode")
        node.UnRegister(None)
        node.SetSingletonTag(CREATOR)
        node = scene.AddNode(node)
    return node


def addOurNode(scene: Any, className: str, name: str) -> Any:
    """A new node marked as this module's."""
    node = scene.AddNewNodeByClass(className, name)
    node.SetAttribute(CREATED_BY, CREATOR)
    return node


def writeVolume(volumeNode: Any, path: str | os.PathLike) -> None:
    """Write a volume node to a file (format from the extension), keeping its geometry (IJK to RAS
    becomes the file's LPS geometry); the node itself is not changed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(path))
    storage.SetUseCompression(path.name.endswith(".gz"))
    if not storage.WriteData(volumeNode) or not path.is_file():
        raise SegmentationError(f"volume '{volumeNode.GetName()}' could not be written to {path}")


def loadSegmentationFile(scene: Any, path: str | os.PathLike) -> Any:
    """Read a ``.seg.nrrd`` into a new, temporary segmentation node (the caller removes it)."""
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "WeakTumorSeg temporary")
    node.SetHideFromEditors(True)
    storage = slicer.vtkMRMLSegmentationStorageNode()
    storage.SetFileName(str(path))
    if not storage.ReadData(node):
        removeNode(scene, node)
        raise SegmentationError(f"{path}: could not be read as a segmentation")
    return node


def removeNode(scene: Any, node: Any) -> None:
    """Remove a node with its display and storage nodes."""
    if node is None:
        return
    displayNodes = [node.GetNthDisplayNode(i) for i in range(node.GetNumberOfDisplayNodes())] \
        if hasattr(node, "GetNumberOfDisplayNodes") else []
    storageNode = node.GetStorageNode() if hasattr(node, "GetStorageNode") else None
    scene.RemoveNode(node)
    for extra in displayNodes + [storageNode]:
        if extra is not None and extra.GetScene() is scene:
            scene.RemoveNode(extra)


def placeBesideVolume(node: Any, volume: Any) -> None:
    """Put ``node`` in the subject hierarchy under the same parent (study) as ``volume``."""
    sh = node.GetScene().GetSubjectHierarchyNode()
    if sh is None:
        return
    volumeItem = sh.GetItemByDataNode(volume)
    parent = sh.GetItemParent(volumeItem) if volumeItem else sh.GetSceneItemID()
    item = sh.GetItemByDataNode(node) or sh.CreateItem(parent, node)
    if sh.GetItemParent(item) != parent:
        sh.SetItemParent(item, parent)

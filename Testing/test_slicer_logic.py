"""Tier B: the Slicer module's Logic against real MRML from the ``slicer-core`` wheel (no Qt).

Volume nodes are built from arrays (oblique, anisotropic), segmented in a background process with the
tiny test bundle (or the shipped phantom stand-in where a non-empty mask matters), and the resulting
segmentation node, slice table, subject hierarchy, re-runs, cancel, errors and export are checked. How the
core's warnings and an empty mask are shown is checked on hand-made outputs, through the Widget and its
review panel on stand-in widgets. Skipped where the wheel is not installed (it is pinned in the ``test``
extra for Python 3.11 on Linux).
"""

from __future__ import annotations

import csv
import inspect
import json
import os
import re
import subprocess
import sys
import time
import types
from unittest import mock

import numpy as np
import pytest
import SimpleITK as sitk

slicer = pytest.importorskip(
    "slicer", reason="slicer-core is not installed (pip install -e '.[test]' installs it on Python 3.11 / Linux)")
if not hasattr(slicer, "vtkMRMLScene"):
    pytest.skip("the installed 'slicer' package is not slicer-core", allow_module_level=True)

import vtk  # noqa: E402  (installed with slicer-core)

from conftest import REPO_ROOT, STANDIN_BUNDLE, channel_args, run_cli  # noqa: E402

sys.path.insert(0, str(REPO_ROOT / "WeakTumorSeg"))
import WeakTumorSeg as W  # noqa: E402
from WeakTumorSegHelpers import core, devices, export, nodes, review, run, views  # noqa: E402
from WeakTumorSegHelpers import job as job_module  # noqa: E402

from WeakTumorSegLib.io.images import Geometry  # noqa: E402
from WeakTumorSegLib.io.segmentation import (  # noqa: E402
    TUMOR_COLOR,
    TUMOR_TERMINOLOGY,
    Segment,
    read_segmentation,
    write_segmentation,
)
from WeakTumorSegLib.io.tables import write_csv  # noqa: E402
from support.phantoms import make_phantom, write_case  # noqa: E402

SPACING = (0.9, 1.1, 3.0)  # SimpleITK (x, y, z)
ORIGIN = (-40.5, 31.25, -12.0)  # LPS


def oblique_direction() -> tuple[float, ...]:
    a, b = np.deg2rad(17.0), np.deg2rad(-8.0)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    return tuple((rz @ rx).ravel())


DIRECTION = oblique_direction()


# ------------------------------------------------------------------------------------------------
# headless MRML set-up (what Slicer's application does at start-up)


def _register_converter_rules() -> None:
    factory = slicer.vtkSegmentationConverterFactory.GetInstance()
    if len(factory.GetConverterRules()) == 0:
        factory.RegisterConverterRule(slicer.vtkBinaryLabelmapToClosedSurfaceConversionRule())
        factory.RegisterConverterRule(slicer.vtkClosedSurfaceToBinaryLabelmapConversionRule())


def new_scene():
    _register_converter_rules()
    scene = slicer.vtkMRMLScene()
    colors = slicer.vtkMRMLColorLogic()  # default colour tables (labelmap display nodes look them up)
    colors.SetMRMLScene(scene)
    scene._keep = colors  # keep the logic alive with the scene
    default_slice = scene.CreateNodeByClass("vtkMRMLSliceNode")
    scene.AddDefaultNode(default_slice)
    default_slice.UnRegister(None)
    slicer.vtkMRMLSliceNode.AddDefaultSliceOrientationPresets(scene)  # Axial, Sagittal, Coronal
    return scene


def add_volume(scene, name: str, array: np.ndarray, spacing=SPACING, origin=ORIGIN, direction=DIRECTION):
    """A scalar volume node from a ``(k, j, i)`` array and SimpleITK-style (LPS) geometry."""
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(array, dtype=np.float32))
    lps_to_ras = np.diag([-1.0, -1.0, 1.0])
    m = lps_to_ras @ np.asarray(direction).reshape(3, 3) @ np.diag(spacing)
    o = lps_to_ras @ np.asarray(origin)
    matrix = vtk.vtkMatrix4x4()
    for r in range(3):
        for c in range(3):
            matrix.SetElement(r, c, m[r, c])
        matrix.SetElement(r, 3, o[r])
    node.SetIJKToRASMatrix(matrix)
    return node


def add_phantom_volumes(scene, phantom, prefix="P", **geometry):
    return {c: add_volume(scene, f"{prefix}_{c}", arr, **geometry) for c, arr in phantom.channels.items()}


def put_in_study(scene, volumes):
    sh = scene.GetSubjectHierarchyNode()
    patient = sh.CreateSubjectItem(sh.GetSceneItemID(), "Patient 1")
    study = sh.CreateStudyItem(patient, "Study 1")
    for node in volumes.values():
        item = sh.GetItemByDataNode(node) or sh.CreateItem(study, node)
        sh.SetItemParent(item, study)
    return study


def nodes_of(scene, class_name: str) -> list:
    return [scene.GetNthNodeByClass(i, class_name) for i in range(scene.GetNumberOfNodesByClass(class_name))]


def segment_names(seg_node) -> list[str]:
    s = seg_node.GetSegmentation()
    return [s.GetNthSegment(i).GetName() for i in range(s.GetNumberOfSegments())]


def expected_sitk_geometry(shape_kji):
    return Geometry((shape_kji[2], shape_kji[1], shape_kji[0]), SPACING, ORIGIN, DIRECTION)


def read_manifest(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


# ------------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="module")
def small_phantom():
    return make_phantom(shape=(6, 64, 64), seed=4, tumor_slice_fraction=0.5)


@pytest.fixture(scope="module")
def segmented(tiny_bundle, small_phantom):
    """One blocking run with the tiny bundle, seeds on, volumes in a study."""
    scene = new_scene()
    volumes = add_phantom_volumes(scene, small_phantom)
    study = put_in_study(scene, volumes)
    logic = W.WeakTumorSegLogic(scene)
    stages = []

    def progress(stage, fraction, _message):
        stages.append((stage, fraction))

    result = logic.process(volumes, bundlePath=tiny_bundle, device="cpu", seeds=True, seedMasks=8, threads=1,
                           wait=True, progressCallback=progress)
    return {"scene": scene, "volumes": volumes, "study": study, "logic": logic, "result": result, "stages": stages}


# ------------------------------------------------------------------------------------------------
# the Logic stays Qt-free


def test_module_imports_without_qt_and_logic_uses_no_gui():
    assert not W.GUI_AVAILABLE
    assert "qt" not in sys.modules and "ctk" not in sys.modules
    gui_use = re.compile(r"\bqt\.|\bctk\.|slicer\.app\b|import qt|import ctk|"
                         r"errorDisplay|confirm\w*Display|infoDisplay")
    # the Logic and every helper module it uses (the installer and the GUI panels are the GUI's)
    for obj in (W.WeakTumorSegLogic, core, devices, export, job_module, nodes, review, run, views):
        source = inspect.getsource(obj)
        assert not gui_use.search(source), f"{obj.__name__} uses the GUI: {gui_use.search(source).group(0)}"
    # bundles and settings are read by the core's torch-free modules: importing the module imports no torch
    code = "import sys; sys.path.insert(0, sys.argv[1]); import WeakTumorSeg; print('torch' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code, str(REPO_ROOT / "WeakTumorSeg")], capture_output=True,
                          text=True, cwd=REPO_ROOT)
    assert proc.returncode == 0 and proc.stdout.strip() == "False", proc.stderr


def test_shipped_bundle_and_real_sample_come_first():
    """What the self-test and the GUI pick: the real-MR default bundle, and the real patient before the
    synthetic phantom sample."""
    folders = W.sampleDataFolders()
    assert [f.name for f in folders][:2] == ["TCGA_DU_7018_19911220", "PHANTOM_0001"]
    info = core.readBundle(W.defaultBundlePath())
    assert tuple(info.channels) == ("flair", "t1", "t1ce")
    assert all((folders[0] / f"{folders[0].name}_{c}.nii.gz").is_file() for c in info.channels)


def scalp_margin(folder) -> float:
    return core.readBundle(folder).settings().scalp_margin_mm


def test_bundle_info_reads_the_scalp_margin(tmp_path):
    """``inference.scalp_margin_mm`` of the bundle: 0 (off, null in bundle.json) for the shipped real-MR bundles,
    which extract the brain instead, and where the bundle has none; a value the core would refuse makes the
    folder unusable with a readable message."""
    assert scalp_margin(W.defaultBundlePath()) == 0.0
    assert scalp_margin(REPO_ROOT / "Resources" / "Models" / "tcga-lgg-flair") == 0.0
    assert "scalp_margin_mm" not in json.loads((STANDIN_BUNDLE / "bundle.json").read_text())["inference"]
    assert scalp_margin(STANDIN_BUNDLE) == 0.0
    assert core.defaultBundleSettings().scalp_margin_mm == 0.0  # the GUI's initial value is the default bundle's

    def bundle_with(value):
        folder = tmp_path / f"bundle-{value}"
        folder.mkdir()
        inference = {"filter_threshold": 0.3} if value == "absent" else {"scalp_margin_mm": value}
        (folder / "bundle.json").write_text(
            json.dumps({"format_version": 1, "channels": ["flair"], "inference": inference}))
        return folder

    assert scalp_margin(bundle_with(None)) == 0.0
    assert scalp_margin(bundle_with("absent")) == 0.0
    assert scalp_margin(bundle_with(7.5)) == 7.5
    for bad, problem in ((-1.0, r"must lie in \[0, 1000\) mm"), (1000.0, r"must lie in \[0, 1000\) mm"),
                         ("wide", "must be a number")):
        with pytest.raises(W.SegmentationError, match=rf"bundle-{bad}: inference\.scalp_margin_mm {problem}") as info:
            core.readBundle(bundle_with(bad))
        assert "\n" not in str(info.value)


def test_bundle_info_reads_training_warnings(tmp_path):
    """The warnings a training run recorded reach the module (the widget shows them next to the
    bundle's name); the shipped bundles and a bundle without the record have none."""
    assert core.readBundle(W.defaultBundlePath()).training_warnings == []
    assert core.readBundle(STANDIN_BUNDLE).training_warnings == []
    folder = tmp_path / "failed"
    folder.mkdir()
    warning = "validation: the fused model's Dice on the validation tumour slices is 0.06"
    (folder / "bundle.json").write_text(
        json.dumps({"format_version": 1, "channels": ["flair"], "training": {"warnings": [warning]}}))
    assert core.readBundle(folder).training_warnings == [warning]


def test_write_volume_keeps_oblique_anisotropic_geometry(tmp_path, small_phantom):
    scene = new_scene()
    volume = add_volume(scene, "flair", small_phantom.channels["flair"])
    logic = W.WeakTumorSegLogic(scene)
    for name in ("v.nrrd", "v.nii.gz"):
        logic.writeVolume(volume, tmp_path / name)
        image = sitk.ReadImage(str(tmp_path / name))
        geometry = Geometry.of(image)
        assert not expected_sitk_geometry(small_phantom.mask.shape).differences(geometry, tol=1e-5), name
        np.testing.assert_array_equal(sitk.GetArrayFromImage(image), small_phantom.channels["flair"])


# ------------------------------------------------------------------------------------------------
# a blocking run


def test_blocking_segment_makes_named_segmentation_with_segments(segmented):
    result, volumes = segmented["result"], segmented["volumes"]
    seg = result.segmentationNode
    assert result.inputVolume is volumes["flair"]
    assert seg.GetName() == "P_flair segmentation"
    assert W.WeakTumorSegLogic.isOurs(seg) and W.WeakTumorSegLogic.isOurs(result.tableNode)
    assert segment_names(seg) == ["Tumor", "Positive seeds", "Negative seeds"]
    tumor = seg.GetSegmentation().GetSegment("Tumor")
    assert tumor.GetColor() == pytest.approx(TUMOR_COLOR, abs=1e-6)
    assert "Neoplasm" in tumor.GetTerminology()
    assert result.report["bundle"]["name"] == "tiny-test" and result.report["device"] == "cpu"
    assert seg.GetAttribute("WeakTumorSeg.Device") == "cpu"
    # no scalp margin given: the tiny bundle's (none, so off) applies
    assert result.report["scalp_margin_source"] == "bundle" and result.report["scalp_margin_mm"] == 0.0
    assert seg.GetAttribute("WeakTumorSeg.ScalpMargin") == "0.0"
    # the bundle's other inference settings are recorded on the node too (the tiny bundle has neither)
    assert seg.GetAttribute("WeakTumorSeg.SliceSmoothing") == "0.0"
    assert seg.GetAttribute("WeakTumorSeg.FlairTrim") == "0.0"
    # the core's warnings and brain extraction reach the result and the node
    assert result.warnings == result.report["warnings"] and segmented["logic"].resultWarnings(seg) == result.warnings
    assert result.skullStripped is result.report["preprocessing"]["skull_stripped"]
    scene = segmented["scene"]  # no temporary node (or its display / storage node) is left behind
    assert nodes_of(scene, "vtkMRMLSegmentationNode") == [seg]
    assert len(nodes_of(scene, "vtkMRMLSegmentationDisplayNode")) == 1
    assert not nodes_of(scene, "vtkMRMLLabelMapVolumeNode")
    assert not nodes_of(scene, "vtkMRMLStorageNode")


def test_segmentation_geometry_is_the_input_volume(segmented, small_phantom):
    result, volume = segmented["result"], segmented["volumes"]["flair"]
    seg = result.segmentationNode
    assert seg.GetNodeReferenceID("referenceImageGeometryRef") == volume.GetID()
    assert segmented["logic"].inputVolumeOf(seg) is volume
    labelmap = seg.GetSegmentation().GetSegment("Tumor").GetRepresentation("Binary labelmap")
    image_to_world, ijk_to_ras = vtk.vtkMatrix4x4(), vtk.vtkMatrix4x4()
    labelmap.GetImageToWorldMatrix(image_to_world)
    volume.GetIJKToRASMatrix(ijk_to_ras)
    for r in range(4):
        for c in range(4):
            assert image_to_world.GetElement(r, c) == pytest.approx(ijk_to_ras.GetElement(r, c), abs=1e-5)
    mask = segmented["logic"].tumorMaskArray(seg)
    assert mask.shape == small_phantom.mask.shape and mask.dtype == np.uint8


def test_progress_reports_stages_in_order(segmented):
    stages = [s for s, _ in segmented["stages"]]
    for stage in ("start", "read", "classify", "segment", "convert", "seeds", "write", "done"):
        assert stage in stages
    fractions = [f for _, f in segmented["stages"]]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0


def test_slice_table_has_one_row_per_slice(segmented, small_phantom):
    result, logic = segmented["result"], segmented["logic"]
    table = result.tableNode
    assert table.GetName() == "P_flair slice review"
    assert result.segmentationNode.GetNodeReference(nodes.SLICE_TABLE_ROLE) is table
    vtable = table.GetTable()
    assert [vtable.GetColumnName(c) for c in range(vtable.GetNumberOfColumns())] == list(review.TABLE_COLUMNS)
    assert review.TABLE_COLUMNS[:-1] == core.SLICE_COLUMNS and review.TABLE_COLUMNS[-1] == "status"
    rows = logic.sliceRows(table)
    assert [r["slice"] for r in rows] == list(range(small_phantom.mask.shape[0]))
    for row in rows:
        assert row["status"] == ("flagged" if row["flagged"] else "kept")
        assert 0.0 <= row["p_tumor"] <= 1.0
    mask = logic.tumorMaskArray(result.segmentationNode)
    assert [r["tumor_pixels"] for r in rows] == mask.sum(axis=(1, 2)).tolist()


def test_results_are_placed_under_the_input_study(segmented):
    scene, study, result = segmented["scene"], segmented["study"], segmented["result"]
    sh = scene.GetSubjectHierarchyNode()
    for node in (result.segmentationNode, result.tableNode):
        assert sh.GetItemParent(sh.GetItemByDataNode(node)) == study


def test_jump_to_slice_moves_the_slice_view(segmented):
    scene, logic, volume = segmented["scene"], segmented["logic"], segmented["volumes"]["flair"]
    slice_node = scene.AddNewNodeByClass("vtkMRMLSliceNode")
    slice_node.SetLayoutName("Red")
    slice_node.SetOrientation("Axial")
    logic.alignSliceViewsToVolume(volume)
    point = logic.jumpToSlice(volume, 4)
    ijk_to_ras = vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(ijk_to_ras)
    expected = ijk_to_ras.MultiplyPoint((31.5, 31.5, 4.0, 1.0))[:3]
    assert point == pytest.approx(expected, abs=1e-6)
    slice_to_ras = slice_node.GetSliceToRAS()
    normal = np.array([slice_to_ras.GetElement(r, 2) for r in range(3)])
    origin = np.array([slice_to_ras.GetElement(r, 3) for r in range(3)])
    k_axis = np.array([ijk_to_ras.GetElement(r, 2) for r in range(3)])
    assert abs(abs(normal @ k_axis) / np.linalg.norm(k_axis) - 1) < 1e-6  # the view shows voxel planes k
    assert abs(normal @ (origin - np.asarray(point))) < 1e-4  # ... and the plane of slice 4


# ------------------------------------------------------------------------------------------------
# review helpers


def test_review_statuses_and_flagged_navigation():
    scene = new_scene()
    logic = W.WeakTumorSegLogic(scene)
    table = scene.AddNewNodeByClass("vtkMRMLTableNode", "t")
    rows = [{"slice": k, "p_tumor": 0.5, "difference_score": 0.1, "flagged": int(k in (1, 4)),
             "flag_reason": "low_difference_score" if k in (1, 4) else "", "tumor_pixels": 3,
             "status": "flagged" if k in (1, 4) else "kept"} for k in range(6)]
    logic.fillSliceTable(table, rows)
    assert logic.flaggedSlices(table) == [1, 4]
    assert logic.nextFlaggedSlice(table, None) == 1
    assert logic.nextFlaggedSlice(table, 1) == 4
    assert logic.nextFlaggedSlice(table, 4) == 1  # wraps around
    assert logic.nextFlaggedSlice(table, 2, -1) == 1
    assert logic.nextFlaggedSlice(table, 1, -1) == 4
    logic.setSliceStatus(table, [1, 2], "corrected")
    logic.setSliceStatus(table, 4, "excluded")
    statuses = [logic.sliceStatus(table, k) for k in range(6)]
    assert statuses == ["kept", "corrected", "corrected", "kept", "excluded", "kept"]
    assert logic.statusCounts(table) == {"kept": 3, "flagged": 0, "corrected": 2, "excluded": 1}
    with pytest.raises(ValueError):
        logic.setSliceStatus(table, 0, "maybe")
    with pytest.raises(W.SegmentationError):
        logic.setSliceStatus(table, 9, "kept")


def test_device_choices_show_the_gpu_found():
    gpu = devices.deviceChoices({"torch": "2.13.0", "cuda_build": "12.8", "gpus": ["NVIDIA H200"]})
    assert [c.value for c in gpu] == ["auto", "cpu", "cuda"] and "NVIDIA H200" in gpu[0].label + gpu[2].label
    cpu_build = devices.deviceChoices({"torch": "2.13.0+cpu", "cuda_build": None, "gpus": []})
    assert not cpu_build[-1].enabled and "CPU-only" in cpu_build[-1].label
    assert devices.deviceChoices({"torch": None})[0].value == "auto"
    two = devices.deviceChoices({"torch": "2", "cuda_build": "12", "gpus": ["A", "B"]})
    assert [c.value for c in two] == ["auto", "cpu", "cuda:0", "cuda:1"]
    probe = devices.DeviceProbe().wait(timeout=120)  # this interpreter's torch
    assert probe["torch"] and isinstance(probe["gpus"], list)


def test_requirements_file_is_satisfied_here():
    assert W.WeakTumorSegLogic.missingRequirements() == []
    assert W.WeakTumorSegLogic.torchInstalled()


# ------------------------------------------------------------------------------------------------
# re-running replaces only this module's nodes and segments


def test_rerun_replaces_only_our_nodes(tiny_bundle, small_phantom):
    scene = new_scene()
    volumes = add_phantom_volumes(scene, small_phantom, prefix="R")
    logic = W.WeakTumorSegLogic(scene)
    first = logic.process(volumes, bundlePath=tiny_bundle, device="cpu", seeds=True, seedMasks=8, threads=1)
    ours = first.segmentationNode
    # the user adds a segment to our node, and makes a segmentation and a table of their own
    user_segment_id = ours.GetSegmentation().AddEmptySegment("edema", "Edema")
    user_seg = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "user segmentation")
    user_seg.GetSegmentation().AddEmptySegment("Tumor", "Tumor")
    user_table = scene.AddNewNodeByClass("vtkMRMLTableNode", "user table")

    assert ours.GetAttribute("WeakTumorSeg.ScalpMargin") == "0.0"
    second = logic.process(volumes, bundlePath=tiny_bundle, device="cpu", seeds=False, threads=1, scalpMargin=4)
    assert second.segmentationNode.GetID() == ours.GetID() and second.tableNode.GetID() == first.tableNode.GetID()
    assert second.report["scalp_margin_source"] == "--scalp-margin" and second.report["scalp_margin_mm"] == 4.0
    assert ours.GetAttribute("WeakTumorSeg.ScalpMargin") == "4.0"  # the re-run's setting, not the first one's
    assert sorted(segment_names(ours)) == ["Edema", "Tumor"]  # seeds gone, the user's segment kept
    assert ours.GetSegmentation().GetSegment(user_segment_id) is not None
    assert nodes_of(scene, "vtkMRMLSegmentationNode") == [ours, user_seg]
    assert nodes_of(scene, "vtkMRMLTableNode") == [first.tableNode, user_table]
    assert segment_names(user_seg) == ["Tumor"] and user_table.GetNumberOfColumns() == 0

    # the user's own segmentation as output: their segments stay, ours are added beside them
    third = logic.process(volumes, bundlePath=tiny_bundle, device="cpu", outputSegmentation=user_seg, threads=1)
    assert third.segmentationNode is user_seg and not W.WeakTumorSegLogic.isOurs(user_seg)
    segmentation = user_seg.GetSegmentation()
    assert segmentation.GetSegment("Tumor") is not None and segment_names(user_seg) == ["Tumor", "Tumor"]
    assert not nodes.segmentIsOurs(segmentation.GetSegment("Tumor"))
    assert len(nodes_of(scene, "vtkMRMLSegmentationNode")) == 2
    assert sorted(segment_names(ours)) == ["Edema", "Tumor"]

    # another patient with our first node still selected as output: it gets its own node
    others = add_phantom_volumes(scene, small_phantom, prefix="S")
    fourth = logic.process(others, bundlePath=tiny_bundle, device="cpu", outputSegmentation=ours, threads=1)
    assert fourth.segmentationNode not in (ours, user_seg)
    assert fourth.segmentationNode.GetName() == "S_flair segmentation"
    assert sorted(segment_names(ours)) == ["Edema", "Tumor"] and logic.inputVolumeOf(ours) is volumes["flair"]
    assert fourth.tableNode is not first.tableNode


# ------------------------------------------------------------------------------------------------
# errors and cancel


def test_missing_channel_is_refused_before_running(tiny_bundle, small_phantom):
    scene = new_scene()
    volumes = add_phantom_volumes(scene, small_phantom)
    logic = W.WeakTumorSegLogic(scene)
    with pytest.raises(W.SegmentationError, match="none given for: t1ce"):
        logic.process({"flair": volumes["flair"], "t1": volumes["t1"]}, bundlePath=tiny_bundle)
    with pytest.raises(W.SegmentationError, match="not a model bundle"):
        logic.process(volumes, bundlePath=REPO_ROOT / "Testing")


def test_scalp_margin_is_passed_only_when_given(tiny_bundle, small_phantom):
    scene = new_scene()
    volumes = add_phantom_volumes(scene, small_phantom)
    logic = W.WeakTumorSegLogic(scene)
    before = scene.GetNumberOfNodes()
    for bad in (-2.0, 1000.0, float("nan")):
        with pytest.raises(W.SegmentationError) as info:
            logic.process(volumes, bundlePath=tiny_bundle, device="cpu", scalpMargin=bad)
        assert "\n" not in str(info.value) and re.search(r"scalp margin .* is not in \[0, 1000\)", str(info.value))
    assert scene.GetNumberOfNodes() == before

    def command_for(**kwargs) -> list[str]:
        job = logic.process(volumes, bundlePath=tiny_bundle, device="cpu", threads=1, wait=False, **kwargs)
        job.cancel()
        return job.command

    assert not any(arg.startswith("--scalp-margin") for arg in command_for())  # the bundle's applies
    for value, text in ((7.5, "7.5"), (0, "0"), (12.0, "12")):
        command = command_for(scalpMargin=value)
        assert command.count("--scalp-margin") == 1
        assert command[command.index("--scalp-margin") + 1] == text
    assert scene.GetNumberOfNodes() == before


def test_core_error_is_one_readable_line_and_adds_nothing(tiny_bundle, small_phantom):
    scene = new_scene()
    volumes = add_phantom_volumes(scene, small_phantom)
    volumes["t1"] = add_volume(scene, "T1 other grid", small_phantom.channels["t1"], spacing=(1.0, 1.0, 3.0))
    before = scene.GetNumberOfNodes()
    logic = W.WeakTumorSegLogic(scene)
    with pytest.raises(W.SegmentationError) as info:
        logic.process(volumes, bundlePath=tiny_bundle, device="cpu", threads=1)
    message = str(info.value)
    assert "\n" not in message and "Traceback" not in message
    assert "does not share the voxel grid" in message and "volume 'T1 other grid'" in message
    assert "WeakTumorSeg-" not in message  # temporary file names are replaced by node names
    assert "error:" in info.value.details
    assert scene.GetNumberOfNodes() == before


def test_cancel_stops_the_process_tree_and_leaves_nothing(tiny_bundle, small_phantom):
    scene = new_scene()
    volumes = add_phantom_volumes(scene, small_phantom)
    before = scene.GetNumberOfNodes()
    logic = W.WeakTumorSegLogic(scene)
    job = logic.process(volumes, bundlePath=tiny_bundle, device="cpu", threads=1, wait=False)
    assert job.running and job.workdir.is_dir()
    time.sleep(0.3)
    assert not job.poll()
    job.cancel()
    assert job.state == "cancelled" and job.poll() and job.result is None
    assert job.process.returncode is not None
    if os.path.isdir("/proc/self"):
        assert live_processes_in_group(job.process.pid) == []
    assert not job.workdir.exists()
    assert scene.GetNumberOfNodes() == before
    with pytest.raises(W.SegmentationError, match="cancelled"):
        job.wait()


def live_processes_in_group(pgid: int) -> list[int]:
    """PIDs of the process group's members that are not zombies (Linux /proc)."""
    alive = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            alive.append(int(entry))
    return alive


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux /proc")
def test_kill_process_tree_stops_grandchildren():
    proc = subprocess.Popen(["sh", "-c", "sleep 60 & sleep 60 & wait"], start_new_session=True)
    time.sleep(0.3)
    assert len(live_processes_in_group(proc.pid)) == 3
    job_module.killProcessTree(proc, grace=1.0)
    assert proc.returncode is not None
    deadline = time.monotonic() + 5
    while live_processes_in_group(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert live_processes_in_group(proc.pid) == []


# ------------------------------------------------------------------------------------------------
# the core's warnings, the brain extraction and an empty mask, shown next to the result

UNLIKE = ("the input is unlike the bundle's training data: largest brain section (cm^2) is 512, training volumes "
          "had 150 to 300; check the orientation, voxel size and sequence")
MISS = ("no slice was gated as tumour, but the FLAIR shows a bright region of 5.2 cm^2 inside the brain (slice 3 "
        "of the working grid); the empty mask may be a miss: review the images")
RESULT_SHAPE = (6, 32, 32)


def load_core_outputs(scene, name: str, folder, report: dict | None, tumor_slices=()) -> run.SegmentationResult:
    """Load, as a finished job does, outputs of ``segment`` made by hand for a new volume ``name``: a Tumor
    mask on ``tumor_slices``, the slice table and a report with the counts and ``report`` (None: no report)."""
    volume = add_volume(scene, name, np.zeros(RESULT_SHAPE, np.float32))
    outputs = job_module.outputFiles(folder)
    folder.mkdir(parents=True)
    mask = np.zeros(RESULT_SHAPE, np.uint8)
    for k in tumor_slices:
        mask[k, 10:20, 12:22] = 1
    write_segmentation([Segment("Tumor", mask, TUMOR_COLOR, TUMOR_TERMINOLOGY)], expected_sitk_geometry(mask.shape),
                       outputs["segmentation"])
    write_csv([{"slice": k, "p_tumor": 0.1, "difference_score": 0.5, "flagged": 0, "flag_reason": "",
                "tumor_pixels": int(mask[k].sum())} for k in range(len(mask))], core.SLICE_COLUMNS, outputs["slices"])
    if report is not None:
        counts = {"slices": len(mask), "tumor_slices": len(tumor_slices), "tumor_voxels": int(mask.sum()),
                  "flagged_slices": 0}
        outputs["report"].write_text(json.dumps({"device": "cpu", "counts": counts, **report}))
    request = run.ResultRequest(volume, STANDIN_BUNDLE, None, job_module.SegmentOptions("cpu"))
    return run.loadResults(scene, request, outputs)


def preprocessing(skull_stripped) -> dict:
    return {"preprocessing": {"orientation": "PLS", "skull_stripped": skull_stripped, "stats": {}, "declared": {}}}


def test_report_warnings_and_brain_extraction_reach_the_result(tmp_path):
    scene = new_scene()
    logic = W.WeakTumorSegLogic(scene)
    result = load_core_outputs(scene, "A", tmp_path / "a", {"warnings": [UNLIKE], **preprocessing(False)}, (2, 3))
    assert result.warnings == [UNLIKE] and result.skullStripped is False and not result.empty
    assert result.summary() == "Done on cpu: 2 of 6 slices with tumour, 0 flagged for review. Brain extracted."
    assert logic.resultWarnings(result.segmentationNode) == [UNLIKE]  # kept on the node for the GUI
    stripped = load_core_outputs(scene, "B", tmp_path / "b", {"warnings": [], **preprocessing(True)}, (1,))
    assert stripped.warnings == [] and logic.resultWarnings(stripped.segmentationNode) == []
    assert stripped.summary().endswith("0 flagged for review. Input was skull-stripped already.")
    older_bundle = load_core_outputs(scene, "C", tmp_path / "c", {"warnings": [], **preprocessing(None)}, (1,))
    assert older_bundle.skullStripped is None and older_bundle.summary().endswith("flagged for review.")


def test_empty_mask_is_not_presented_as_a_confident_no_tumour(tmp_path):
    scene = new_scene()
    for name, warnings in (("E", [MISS]), ("F", [])):
        result = load_core_outputs(scene, name, tmp_path / name, {"warnings": warnings, **preprocessing(False)})
        assert result.empty and result.warnings == warnings
        summary = result.summary()
        assert summary == ("Done on cpu: 0 of 6 slices flagged for review. No tumour was found; this is not a "
                           "confirmation that there is none — review the images. Brain extracted.")
        assert run.EMPTY_MASK_CAUTION in summary and "slices with tumour" not in summary
        assert W.WeakTumorSegLogic(scene).resultWarnings(result.segmentationNode) == warnings


def test_older_report_without_warnings_or_preprocessing_is_read(tmp_path):
    scene = new_scene()
    logic = W.WeakTumorSegLogic(scene)
    old = load_core_outputs(scene, "O", tmp_path / "old", {}, (2,))
    assert old.warnings == [] and old.skullStripped is None and not old.empty
    assert old.summary() == "Done on cpu: 1 of 6 slices with tumour, 0 flagged for review."
    assert logic.resultWarnings(old.segmentationNode) == []
    none = load_core_outputs(scene, "N", tmp_path / "none", None)  # no report at all: nothing is known
    assert none.warnings == [] and not none.empty and none.summary() == (
        "Done on ?: ? of ? slices with tumour, ? flagged for review.")
    odd = load_core_outputs(scene, "W", tmp_path / "odd", {"warnings": "not a list", "preprocessing": [1]})
    assert odd.warnings == [] and odd.skullStripped is None
    user_seg = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "user segmentation")  # made elsewhere
    assert logic.resultWarnings(user_seg) == [] and logic.resultWarnings(None) == []
    user_seg.SetAttribute(run.WARNINGS_ATTRIBUTE, "{not json")
    assert logic.resultWarnings(user_seg) == []


class FakeLabel:
    """A QLabel stand-in: its text and whether it is shown."""

    def __init__(self) -> None:
        self.text, self.visible = "", True

    def setVisible(self, visible: bool) -> None:
        self.visible = bool(visible)


def test_widget_shows_the_warnings_next_to_the_result(tmp_path, monkeypatch):
    """The Widget's end of a job on stand-in widgets (no Qt): the summary in the status line, the core's
    warnings in the label under it, hidden for a result without any (an older report included)."""
    monkeypatch.setattr(slicer, "qMRMLSegmentEditorWidget", mock.MagicMock, raising=False)
    monkeypatch.setattr(slicer.util, "setSliceViewerLayers", lambda *args, **kwargs: None)
    scene = new_scene()
    monkeypatch.setattr(slicer, "mrmlScene", scene, raising=False)
    widget = W.WeakTumorSegWidget()
    widget.ui = mock.MagicMock()
    widget.ui.statusLabel, widget.ui.resultWarningsLabel = FakeLabel(), FakeLabel()
    widget.logic = W.WeakTumorSegLogic(scene)
    monkeypatch.setattr(widget.logic, "segmentEditorNode", lambda: None)  # a Segment Editor class, not in slicer-core
    widget._parameterNode = types.SimpleNamespace(outputSegmentation=None)
    widget.review = W.ReviewPanel(widget.ui, widget.logic, lambda: widget._parameterNode)
    widget.review.update()
    assert not widget.ui.resultWarningsLabel.visible  # nothing segmented yet

    def finish(name: str, report: dict | None, tumor_slices=()) -> run.SegmentationResult:
        result = load_core_outputs(scene, name, tmp_path / name, report, tumor_slices)
        widget._job = types.SimpleNamespace(state="succeeded", result=result, running=False)
        widget.onJobEnded()
        assert widget._parameterNode.outputSegmentation is result.segmentationNode
        return result

    result = finish("A", {"warnings": [UNLIKE], **preprocessing(False)}, (2, 3))
    label = widget.ui.resultWarningsLabel
    assert label.visible and label.text == f"Warning: {UNLIKE}"
    assert widget.ui.statusLabel.text == result.summary() == (
        "Done on cpu: 2 of 6 slices with tumour, 0 flagged for review. Brain extracted.")

    finish("E", {"warnings": [UNLIKE, MISS], **preprocessing(True)})
    assert label.visible and label.text == f"Warning: {UNLIKE}\nWarning: {MISS}"
    status = widget.ui.statusLabel.text
    assert run.EMPTY_MASK_CAUTION in status and status.endswith("Input was skull-stripped already.")
    assert "0 of 6 slices with tumour" not in status

    finish("O", {}, (1,))  # an older core: no warnings, no preprocessing
    assert not label.visible and label.text == ""
    assert widget.ui.statusLabel.text == "Done on cpu: 1 of 6 slices with tumour, 0 flagged for review."

    widget._parameterNode.outputSegmentation = widget.logic.resultNodesFor(scene.GetFirstNodeByName("A"))[0]
    widget.review.update()  # choosing an earlier result shows its warnings again
    assert label.visible and label.text == f"Warning: {UNLIKE}"


# ------------------------------------------------------------------------------------------------
# export


def _correct_slice(scene, seg_node, volume, mask: np.ndarray) -> None:
    """Replace the Tumor segment by ``mask`` the way a Segment Editor correction does."""
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "correction")
    matrix = vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(matrix)
    labelmap.SetIJKToRASMatrix(matrix)
    slicer.util.updateVolumeFromArray(labelmap, mask.astype(np.uint8))
    ids = vtk.vtkStringArray()
    ids.InsertNextValue("Tumor")
    assert slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, seg_node, ids)
    scene.RemoveNode(labelmap)


def test_export_writes_mask_segmentation_and_reviewed_manifest(segmented, small_phantom, tmp_path):
    scene, logic, result = segmented["scene"], segmented["logic"], segmented["result"]
    volume, seg, table = result.inputVolume, result.segmentationNode, result.tableNode
    nk = small_phantom.mask.shape[0]
    corrected = np.zeros(small_phantom.mask.shape, np.uint8)
    corrected[2, 20:30, 25:40] = 1  # a corrected slice with a known mask
    corrected[3] = small_phantom.mask[3]
    _correct_slice(scene, seg, volume, corrected)
    statuses = {0: "excluded", 2: "corrected", 3: "corrected", 5: "kept"}
    for k, status in statuses.items():
        logic.setSliceStatus(table, k, status)

    out = tmp_path / "export"
    written = logic.exportResults(seg, out)
    assert sorted(p.name for p in out.iterdir()) == ["P_flair.seg.nrrd", "P_flair_manifest.csv", "P_flair_mask.nii.gz"]
    assert written["manifest"] == out / "P_flair_manifest.csv"

    mask_image = sitk.ReadImage(str(written["mask"]))
    assert mask_image.GetPixelID() == sitk.sitkUInt8
    assert not expected_sitk_geometry(small_phantom.mask.shape).differences(Geometry.of(mask_image), tol=1e-5)
    mask = sitk.GetArrayFromImage(mask_image)
    np.testing.assert_array_equal(mask, corrected)
    np.testing.assert_array_equal(read_segmentation(written["segmentation"])["Tumor"], corrected)

    rows = read_manifest(written["manifest"])
    assert list(rows[0]) == list(review.MANIFEST_COLUMNS)
    assert [int(r["slice"]) for r in rows] == list(range(nk))
    table_rows = logic.sliceRows(table)
    for row, table_row in zip(rows, table_rows):
        k = int(row["slice"])
        assert row["volume"] == "P_flair"
        assert row["status"] == statuses.get(k, table_row["status"]) == table_row["status"]
        assert int(row["tumor_pixels"]) == int(corrected[k].sum())
        assert float(row["difference_score"]) == pytest.approx(table_row["difference_score"], abs=1e-4)

    # refuses to overwrite without being asked; nothing changes, nothing is left behind
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    with pytest.raises(FileExistsError) as info:
        logic.exportResults(seg, out)
    assert isinstance(info.value, W.ExportExistsError) and len(info.value.existing) == 3
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == stamps
    logic.setSliceStatus(table, 1, "excluded")
    logic.exportResults(seg, out, overwrite=True)
    assert read_manifest(out / "P_flair_manifest.csv")[1]["status"] == "excluded"
    assert sorted(p.name for p in out.iterdir()) == sorted(stamps)


# ------------------------------------------------------------------------------------------------
# acceptance: the core's .seg.nrrd loads in slicer-core with the NIfTI mask's voxel count


def _load_flair(scene, path):
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "flair")
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(path))
    assert storage.ReadData(node)
    return node


def _tumor_voxels(seg_node) -> int:
    from vtk.util import numpy_support

    segment = seg_node.GetSegmentation().GetSegment(
        seg_node.GetSegmentation().GetSegmentIdBySegmentName("Tumor"))
    labelmap = segment.GetRepresentation("Binary labelmap")
    values = numpy_support.vtk_to_numpy(labelmap.GetPointData().GetScalars())
    return int((values == segment.GetLabelValue()).sum())


def test_core_seg_nrrd_loads_with_nifti_voxel_count_oblique(tmp_path):
    """The shipped stand-in bundle on an oblique, anisotropic phantom: Tumor voxels equal the NIfTI's."""
    phantom = make_phantom(shape=(8, 96, 96), seed=5, tumor_slice_fraction=0.6)
    paths = write_case(phantom, tmp_path / "case", "OBL", spacing=SPACING, direction=DIRECTION, origin=ORIGIN)
    out = tmp_path / "out"
    proc = run_cli("segment", "--bundle", STANDIN_BUNDLE, "--out", out, "--device", "cpu", "--progress", "none",
                   "--threads", "1", "--seeds", "--seed-masks", "16", *channel_args(paths))
    assert proc.returncode == 0, proc.stderr
    nifti = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "OBL_flair_mask.nii.gz")))
    assert nifti.sum() > 100

    scene = new_scene()
    logic = W.WeakTumorSegLogic(scene)
    seg = logic.loadSegmentationFile(out / "OBL_flair.seg.nrrd")
    assert segment_names(seg) == ["Tumor", "Positive seeds", "Negative seeds"]
    assert _tumor_voxels(seg) == int(nifti.sum())
    volume = _load_flair(scene, paths["flair"])
    np.testing.assert_array_equal(logic.tumorMaskArray(seg, volume), nifti)


def test_written_single_segment_file_loads_with_equal_voxel_count(tmp_path):
    rng = np.random.default_rng(0)
    mask = np.zeros((7, 40, 50), np.uint8)
    mask[2:5, 10:30, 12:40] = rng.random((3, 20, 28)) > 0.4
    geometry = expected_sitk_geometry(mask.shape)
    write_segmentation([Segment("Tumor", mask, TUMOR_COLOR, TUMOR_TERMINOLOGY)], geometry, tmp_path / "m.seg.nrrd")
    scene = new_scene()
    logic = W.WeakTumorSegLogic(scene)
    seg = logic.loadSegmentationFile(tmp_path / "m.seg.nrrd")
    assert _tumor_voxels(seg) == int(mask.sum())
    volume = add_volume(scene, "ref", np.zeros(mask.shape, np.float32))
    np.testing.assert_array_equal(logic.tumorMaskArray(seg, volume), mask)

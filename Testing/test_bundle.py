"""Model bundles: saving, loading, verification and refusal of altered or unsafe bundles.

Every refusal must be a :class:`~WeakTumorSegLib.errors.BundleError` whose message names the
file at fault (the weight file, or ``bundle.json`` when the problem is in it).
"""

from __future__ import annotations

import hashlib
import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from conftest import build_tiny_models, channel_args, files_in, run_cli, save_tiny_bundle, stderr_lines
from WeakTumorSegLib.bundle.info import BUNDLE_FILE
from WeakTumorSegLib.bundle.load import INFERENCE_MODELS, Bundle
from WeakTumorSegLib.errors import BundleError
from WeakTumorSegLib.inference.pipeline import EXTRA_HEALTHY, segment_arrays


# --------------------------------------------------------------------------------------------
# helpers


def copy_bundle(src: Path, dst: Path) -> Path:
    """A private, writable copy of a bundle folder."""
    shutil.copytree(src, dst)
    return dst


def read_config(root: Path) -> dict:
    return json.loads((root / BUNDLE_FILE).read_text())


def write_config(root: Path, config: dict) -> None:
    (root / BUNDLE_FILE).write_text(json.dumps(config, indent=2))


def weight_file(root: Path, model: str) -> Path:
    return root / read_config(root)["models"][model]["weights"]


def assert_refused(root: Path, culprit: Path, *keywords: str) -> BundleError:
    """``Bundle.load(root)`` raises BundleError naming ``culprit`` and containing ``keywords``."""
    with pytest.raises(BundleError) as info:
        Bundle.load(root)
    exc = info.value
    msg = str(exc)
    assert "\n" not in msg
    named = {str(culprit), str(culprit.resolve())}
    assert any(n in msg for n in named), f"{msg!r} does not name {culprit}"
    assert exc.path in named, f"error path {exc.path!r}, expected {culprit}"
    for word in keywords:
        assert word in msg, f"{word!r} not in {msg!r}"
    return exc


def state_dicts_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(
        sa[k].dtype == sb[k].dtype and sa[k].shape == sb[k].shape and torch.equal(sa[k].cpu(), sb[k].cpu())
        for k in sa)


# --------------------------------------------------------------------------------------------
# round trip


@pytest.fixture(scope="module")
def gate_open_bundle(tmp_path_factory):
    """A tiny bundle whose gate passes every patch, so that all four networks run on inference.

    Returns ``(bundle folder, the in-memory models it was saved from)``.
    """
    root = tmp_path_factory.mktemp("roundtrip") / "open"
    save_tiny_bundle(root, seed=0, inference={"filter_threshold": 0.2, "gate_threshold": 0.0})
    models, _ = build_tiny_models(seed=0)  # same seed: the same weights that were saved
    return root, models


def test_round_trip_identical_models_and_outputs(gate_open_bundle, phantom):
    root, originals = gate_open_bundle
    first, second = Bundle.load(root), Bundle.load(root)
    assert set(first.models) == set(INFERENCE_MODELS) == set(second.models)
    for name in INFERENCE_MODELS:
        assert state_dicts_equal(first.models[name], second.models[name]), name
        assert state_dicts_equal(first.models[name], originals[name]), name
        assert not first.models[name].training
    assert first.channels == ["flair", "t1", "t1ce"]
    assert first.name == "tiny-test" and first.patch_size == 128

    a = segment_arrays(first, phantom.channels, "cpu")
    b = segment_arrays(second, phantom.channels, "cpu")
    assert a.counts["gated_patches"] == a.counts["patches"] > 0  # every network ran
    for field in ("mask", "probability", "p_tumor", "difference_score", "flagged"):
        x, y = getattr(a, field), getattr(b, field)
        assert x.shape == y.shape and x.dtype == y.dtype, field
        np.testing.assert_array_equal(x, y, err_msg=field)
    assert a.flag_reason == b.flag_reason
    assert a.counts == b.counts
    assert a.mask.shape == phantom.shape


def test_weight_files_are_safetensors_with_recorded_sha256(tiny_bundle):
    config = read_config(tiny_bundle)
    assert config["format_version"] == 1
    models, _ = build_tiny_models()
    assert set(config["models"]) == set(INFERENCE_MODELS)
    for name, spec in config["models"].items():
        path = tiny_bundle / spec["weights"]
        assert Path(spec["weights"]).name == spec["weights"] and spec["weights"].endswith(".safetensors")
        assert spec["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest(), name
        expected = models[name].state_dict()
        with safe_open(str(path), framework="pt") as fh:
            assert set(fh.keys()) == set(expected), name
            for key in fh.keys():
                assert fh.get_tensor(key).shape == expected[key].shape, (name, key)
    assert sorted(files_in(tiny_bundle)) == sorted(
        [BUNDLE_FILE] + [spec["weights"] for spec in config["models"].values()])


def test_loading_never_unpickles(tiny_bundle, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a bundle load must not unpickle anything")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    bundle = Bundle.load(tiny_bundle)
    assert set(bundle.models) == set(INFERENCE_MODELS)


# --------------------------------------------------------------------------------------------
# refused bundles


def test_flipped_byte_in_weight_file(tiny_bundle, tmp_path):
    root = copy_bundle(tiny_bundle, tmp_path / "b")
    path = weight_file(root, "converter")
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    assert_refused(root, path, "sha256")


def test_truncated_weight_file(tiny_bundle, tmp_path):
    root = copy_bundle(tiny_bundle, tmp_path / "b")
    path = weight_file(root, "classifier")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert_refused(root, path)


@pytest.mark.parametrize("kind", ["parent", "absolute_system_file", "absolute_safetensors", "subfolder"])
def test_weight_file_outside_the_bundle_folder(tiny_bundle, tmp_path, kind):
    """Weight names must be plain file names, even when the file they point to is valid and its
    sha256 matches."""
    root = copy_bundle(tiny_bundle, tmp_path / "b")
    good = weight_file(root, "converter")
    if kind == "parent":
        target, name = tmp_path / "x.safetensors", "../x.safetensors"
    elif kind == "absolute_system_file":
        target, name = Path("/etc/passwd"), "/etc/passwd"
    elif kind == "absolute_safetensors":
        target = tmp_path / "abs.safetensors"
        name = str(target)
    else:
        (root / "sub").mkdir()
        target, name = root / "sub" / "x.safetensors", "sub/x.safetensors"
    if target.suffix == ".safetensors":  # a valid weight file there, so that only its place is wrong
        shutil.copyfile(good, target)
    config = read_config(root)
    config["models"]["converter"]["weights"] = name
    if target.is_file():
        config["models"]["converter"]["sha256"] = hashlib.sha256(target.read_bytes()).hexdigest()
    write_config(root, config)
    assert_refused(root, root / BUNDLE_FILE, name)


def test_missing_weight_file(tiny_bundle, tmp_path):
    root = copy_bundle(tiny_bundle, tmp_path / "b")
    path = weight_file(root, "segmenter_os")
    path.unlink()
    assert_refused(root, path, "missing")


def test_bundle_json_not_json(tiny_bundle, tmp_path):
    root = copy_bundle(tiny_bundle, tmp_path / "b")
    (root / BUNDLE_FILE).write_text('{"format_version": 1, "channels": ["flair",\n')
    assert_refused(root, root / BUNDLE_FILE, "JSON")


@pytest.mark.parametrize("version", [2, 0, "1", None])
def test_wrong_format_version(tiny_bundle, tmp_path, version):
    root = copy_bundle(tiny_bundle, tmp_path / "b")
    config = read_config(root)
    if version is None:
        del config["format_version"]
    else:
        config["format_version"] = version
    write_config(root, config)
    assert_refused(root, root / BUNDLE_FILE, "format_version")


def test_missing_model(tiny_bundle, tmp_path):
    root = copy_bundle(tiny_bundle, tmp_path / "b")
    config = read_config(root)
    del config["models"]["segmenter_us"]
    write_config(root, config)
    assert_refused(root, root / BUNDLE_FILE, "segmenter_us")


def test_cli_refuses_tampered_bundle(tiny_bundle, phantom_case, tmp_path):
    root = copy_bundle(tiny_bundle, tmp_path / "b")
    path = weight_file(root, "segmenter_us")
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    out = tmp_path / "out"
    proc = run_cli("segment", *channel_args(phantom_case), "--bundle", root, "--out", out,
                   "--device", "cpu", "--progress", "none")
    detail = f"exit {proc.returncode}\nstdout: {proc.stdout}\nstderr: {proc.stderr}"
    assert proc.returncode != 0, detail
    assert "Traceback" not in proc.stderr, detail
    lines = stderr_lines(proc)
    assert len(lines) == 1, detail
    assert str(path) in lines[0] or str(path.resolve()) in lines[0], detail
    assert files_in(out) == [], detail


# --------------------------------------------------------------------------------------------
# packing for shipping (float16 weights, optional models left out)


def test_pack_float16_halves_weights_and_keeps_the_segmentation(gate_open_bundle, phantom, tmp_path):
    root, _ = gate_open_bundle
    src = copy_bundle(root, tmp_path / "src")
    config = read_config(src)
    config["metrics"] = {"dice": 0.5}
    # where it was trained: the training machine's folders
    training = config.setdefault("training", {})
    training["data"] = str(tmp_path / "cohorts" / "lgg")
    training.setdefault("config", {}).setdefault("data", {})["geometry"] = str(tmp_path / "tcga.geometry.json")
    write_config(src, config)
    proc = run_cli("pack", "--bundle", src, "--out", tmp_path / "packed")
    assert proc.returncode == 0, proc.stderr
    packed = tmp_path / "packed"
    for name in INFERENCE_MODELS:
        with safe_open(str(weight_file(packed, name)), "pt") as fh:
            dtypes = {fh.get_tensor(k).dtype for k in fh.keys()}
        assert torch.float16 in dtypes and torch.float32 not in dtypes, name
        assert weight_file(packed, name).stat().st_size < 0.6 * weight_file(src, name).stat().st_size
    cfg = read_config(packed)
    assert cfg["weights_dtype"] == "float16" and cfg["metrics"] == {"dice": 0.5}
    assert cfg["packed_from"]["name"] == "tiny-test" and cfg["packed_from"]["models_left_out"] == []
    # a shipped bundle names its inputs without the packing machine's paths
    assert cfg["training"]["data"] == "lgg" and cfg["training"]["config"]["data"]["geometry"] == "tcga.geometry.json"
    assert str(tmp_path) not in (packed / BUNDLE_FILE).read_text()
    a = segment_arrays(Bundle.load(src), phantom.channels, "cpu")
    b = segment_arrays(Bundle.load(packed), phantom.channels, "cpu")  # loads into float32 models
    assert all(p.dtype == torch.float32 for m in Bundle.load(packed).models.values() for p in m.parameters())
    np.testing.assert_allclose(b.probability, a.probability, atol=2e-2)
    assert np.mean(a.mask != b.mask) < 1e-3


def test_pack_keeps_only_the_requested_optional_models(tiny_bundle, tmp_path):
    src = copy_bundle(tiny_bundle, tmp_path / "src")
    config = read_config(src)
    for extra in ("segmenter0", "baseline_seed_only"):  # stand-ins with the segmenter's architecture
        shutil.copy(weight_file(src, "segmenter_us"), src / f"{extra}.safetensors")
        config["models"][extra] = {**config["models"]["segmenter_us"], "weights": f"{extra}.safetensors"}
    write_config(src, config)
    out = tmp_path / "packed"
    assert run_cli("pack", "--bundle", src, "--out", out, "--models", "segmenter0").returncode == 0
    cfg = read_config(out)
    assert set(cfg["models"]) == {*INFERENCE_MODELS, "segmenter0"}
    assert cfg["packed_from"]["models_left_out"] == ["baseline_seed_only"]
    assert sorted(p.name for p in out.iterdir()) == sorted([BUNDLE_FILE, *(f"{m}.safetensors" for m in cfg["models"])])
    # an unknown model name, an existing output and a tampered source are refused in one line
    for args, words in ((["--models", "nonesuch"], ["nonesuch"]), ([], ["already exists"])):
        proc = run_cli("pack", "--bundle", src, "--out", out, *args)
        assert proc.returncode != 0 and len(stderr_lines(proc)) == 1
        assert all(w in proc.stderr for w in words), proc.stderr
    path = weight_file(src, "segmenter_os")
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    proc = run_cli("pack", "--bundle", src, "--out", tmp_path / "other")
    assert proc.returncode != 0 and str(path) in proc.stderr and not (tmp_path / "other").exists()


def test_seed_flair_gates_of_a_bundle_apply_to_segment_seeds(tmp_path, phantom):
    """A bundle trained with the FLAIR seed gates gives ``segment --seeds`` the same gates: no
    positive seed on dark tissue, all dark tissue negative (also with the healthy variants that
    ``evaluate`` asks for)."""
    from WeakTumorSegLib.stages.seeds import RiseConfig

    rise = {**RiseConfig(n_masks=16, batch=8).to_dict()}
    plain = save_tiny_bundle(tmp_path / "plain", inference={"gate_threshold": 0.0}, rise=rise)
    gated = save_tiny_bundle(tmp_path / "gated", inference={"gate_threshold": 0.0},
                             rise={**rise, "positive_flair_quantile": 0.5, "negative_flair_quantile": 0.5})
    a = segment_arrays(Bundle.load(plain), phantom.channels, "cpu", seeds=Bundle.load(plain).rise())
    b = segment_arrays(Bundle.load(gated), phantom.channels, "cpu", seeds=Bundle.load(gated).rise(),
                       extra=[EXTRA_HEALTHY])
    assert b.positive_seeds.sum() < a.positive_seeds.sum()
    assert not (b.positive_seeds.astype(bool) & ~a.positive_seeds.astype(bool)).any()  # a subset of RISE's S+
    assert b.negative_seeds.sum() > a.negative_seeds.sum()
    assert not (a.negative_seeds.astype(bool) & ~b.negative_seeds.astype(bool)).any()  # RISE's S- kept
    flair = phantom.channels["flair"]
    pos = b.positive_seeds.astype(bool)
    assert pos.any() and np.median(flair[pos]) > np.median(flair[flair > 0])  # bright tissue only
    np.testing.assert_array_equal(a.mask, b.mask)  # the gates change the seeds, never the segmentation

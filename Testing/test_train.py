"""The training command (``python -m WeakTumorSegLib train``): kill and resume, resume rules,
label-only cohorts, bad input, a two-process torchrun run, checkpoints and configuration.

Every training run uses a module-scoped cohort of six small phantoms (12 x 96 x 96) and a JSON
config that shrinks the ``tiny`` preset further, so that a whole run stays short on a CPU. Two
settings beyond "fewer epochs" are needed for that cohort:

* ``data.max_zero_fraction`` 0.9: at ``inplane_scale`` 1.0 a 96-pixel head padded to the fixed
  128-pixel patch is more than half zero, and the paper's 0.5 rule would drop every slice;
* ``classifier`` 6 epochs of batch 4 (batch 2 per rank under torchrun): with the ``tiny``
  preset's own schedule (10 epochs of 16) or fewer epochs, the classifier often ranks the
  training slices well in training mode but, in eval mode (BatchNorm running statistics), puts
  every one below 0.5, so X_C is empty and the converter stage refuses to start. Smaller
  batches (more steps) give a non-empty X_C on this cohort.

Training processes run one at a time (except the two ranks of the torchrun test).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import pickle
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO_ROOT, cli_env, files_in, run_cli, stderr_lines

N_PATIENTS = 6
PHANTOM_SHAPE = (12, 96, 96)
CHANNELS = ("flair", "t1", "t1ce")
CONVERTER_EPOCHS = 6
TRAIN_CONFIG = {
    "preprocessing": {"inplane_scale": 1.0},
    "data": {"max_zero_fraction": 0.9},
    "classifier": {"epochs": 6, "batch": 4},
    "rise": {"n_masks": 20, "batch": 20},
    "gan": {"epochs": 2},
    "converter": {"epochs": CONVERTER_EPOCHS},  # longer, so that a run can be killed in its middle
    "segmenter": {"epochs": 1},
}
#: Under torchrun each of the two ranks takes half of every epoch; batches of 2 per rank keep the
#: classifier's step count (and so the reliability of X_C) close to the single-process runs'.
#: Two classifier members: an ensemble's per-member forward must work through DDP as well.
DDP_CONFIG = {**TRAIN_CONFIG, "classifier": {"epochs": 6, "batch": 2, "members": 2}}
#: The four files ``segment`` writes for ``--name p00``.
SEGMENT_OUTPUTS = {"p00.seg.nrrd", "p00_mask.nii.gz", "p00_slices.csv", "p00_report.json"}


# ---------------------------------------------------------------------------------------------
# Fixtures and helpers


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    """Six phantom patients in the folder layout ``discover`` reads (masks and label CSVs)."""
    from support.phantoms import make_phantom, write_case

    root = tmp_path_factory.mktemp("train_cohort") / "cohort"
    for i in range(N_PATIENTS):
        pid = f"p{i:02d}"
        ph = make_phantom(shape=PHANTOM_SHAPE, n_tumors=1, tumor_slice_fraction=0.45, seed=100 + i)
        write_case(ph, root / pid, pid)
    return root


@pytest.fixture(scope="module")
def train_config(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("train_config") / "tiny_fast.json"
    path.write_text(json.dumps(TRAIN_CONFIG, indent=1))
    return path


def train_args(data: Path, out: Path, config: Path, *extra: object, progress: str = "json") -> list:
    return ["train", "--data", data, "--out", out, "--preset", "tiny", "--config", config, "--device", "cpu",
            "--progress", progress, *extra]


def copy_cohort(src: Path, dst: Path, masks: bool = True) -> Path:
    """Copy a cohort folder, optionally without the ``_seg`` masks (labels then come from CSV)."""
    ignore = None if masks else shutil.ignore_patterns("*_seg.nii.gz")
    shutil.copytree(src, dst, ignore=ignore)
    return dst


def rewrite_labels(csv_path: Path, tumor: int | None = None, drop_last: bool = False) -> None:
    """Rewrite a slice-label CSV: every ``tumor`` set to the given value and/or its last row dropped."""
    with open(csv_path, newline="") as fh:
        reader = csv.DictReader(fh)
        columns, rows = reader.fieldnames, list(reader)
    if tumor is not None:
        for row in rows:
            row["tumor"] = str(tumor)
    if drop_last:
        rows = rows[:-1]
    with open(csv_path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def patient_channels(data: Path, pid: str) -> list[str]:
    out: list[str] = []
    for c in CHANNELS:
        out += ["-c", f"{c}={data / pid / f'{pid}_{c}.nii.gz'}"]
    return out


def run_segment(data: Path, bundle: Path, out: Path) -> subprocess.CompletedProcess:
    return run_cli("segment", *patient_channels(data, "p00"), "--bundle", bundle, "--out", out, "--name", "p00",
                   "--device", "cpu", "--progress", "none")


def describe(proc) -> str:
    return f"exit {proc.returncode}\n--- stdout ---\n{proc.stdout[-4000:]}\n--- stderr ---\n{proc.stderr[-4000:]}"


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def read_log(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------------------------
# 1. kill in the middle of the converter, then --resume


@pytest.fixture(scope="module")
def resumed_run(cohort, train_config, tmp_path_factory) -> dict:
    """Train, SIGKILL the process during the converter's second epoch, record the run
    directory, then resume with ``--resume``. Returns what the test checks."""
    tmp = tmp_path_factory.mktemp("resume")
    bundle = tmp / "bundle"
    run_dir = tmp / "bundle.run"
    args = [str(a) for a in train_args(cohort, bundle, train_config)]
    err_path = tmp / "first_stderr.txt"
    seen: list[str] = []
    killed_at = None
    with open(err_path, "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "WeakTumorSegLib", *args], cwd=str(REPO_ROOT),
                                env=cli_env(), stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL,
                                text=True)
        try:
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                line = proc.stdout.readline()
                if not line:
                    break  # the process ended before reaching the converter's second epoch
                seen.append(line)
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if str(record.get("stage", "")).startswith("converter 2/"):
                    os.kill(proc.pid, signal.SIGKILL)
                    killed_at = record
                    break
        finally:
            if proc.poll() is None and killed_at is None:
                proc.kill()
            proc.wait(timeout=60)
            proc.stdout.close()
    first_stderr = err_path.read_text()
    assert killed_at is not None, (f"never saw a 'converter 2/' progress line (exit {proc.returncode})\n"
                                   f"stdout tail: {''.join(seen[-10:])}\nstderr: {first_stderr[-4000:]}")
    assert proc.returncode == -signal.SIGKILL

    cls_dir = run_dir / "stages" / "classifier"
    conv_dir = run_dir / "stages" / "converter"
    ckpt_json = conv_dir / "checkpoint.json"
    before = {
        "killed_at": killed_at,
        "bundle_files": files_in(bundle),
        "run_files": files_in(run_dir),
        "converter_files": files_in(conv_dir),
        "converter_state": json.loads(ckpt_json.read_text())["state"] if ckpt_json.is_file() else None,
        "classifier_done": (cls_dir / "done.json").read_text(),
        "classifier_sha": sha256(cls_dir / "classifier.safetensors"),
        "classifier_mtime": (cls_dir / "classifier.safetensors").stat().st_mtime_ns,
    }
    resumed = run_cli(*train_args(cohort, bundle, train_config, "--resume"))
    return {"bundle": bundle, "run_dir": run_dir, "before": before, "first_stderr": first_stderr,
            "resumed": resumed, "tmp": tmp}


def test_kill_and_resume(resumed_run, cohort, tmp_path):
    from WeakTumorSegLib.bundle.load import Bundle

    bundle, run_dir, before = resumed_run["bundle"], resumed_run["run_dir"], resumed_run["before"]
    # the state the kill left: earlier stages done, the converter mid-way, no bundle
    assert "bundle.json" not in before["bundle_files"]
    assert {"config.json", "split.json", "stages"} <= set(before["run_files"])
    assert "checkpoint.json" in before["converter_files"] and "checkpoint.safetensors" in before["converter_files"]
    assert "done.json" not in before["converter_files"]
    assert 1 <= before["converter_state"]["epoch"] < CONVERTER_EPOCHS
    assert "Traceback" not in resumed_run["first_stderr"]

    proc = resumed_run["resumed"]
    assert proc.returncode == 0, describe(proc)
    assert "classifier: already complete" in proc.stderr
    assert "seeds: already complete" in proc.stderr and "gan: already complete" in proc.stderr
    assert f"converter: resuming after epoch {before['converter_state']['epoch']}/{CONVERTER_EPOCHS}" in proc.stderr
    assert "classifier: starting" not in proc.stderr and "classifier: epoch" not in proc.stderr

    # the completed classifier stage was not retrained or rewritten
    cls_dir = run_dir / "stages" / "classifier"
    assert (cls_dir / "done.json").read_text() == before["classifier_done"]
    assert sha256(cls_dir / "classifier.safetensors") == before["classifier_sha"]
    assert (cls_dir / "classifier.safetensors").stat().st_mtime_ns == before["classifier_mtime"]

    # the converter's log holds each epoch exactly once; its checkpoint is gone once done
    conv_dir = run_dir / "stages" / "converter"
    rows = read_log(conv_dir / "log.csv")
    assert [int(r["epoch"]) for r in rows] == list(range(1, CONVERTER_EPOCHS + 1))
    assert (conv_dir / "done.json").is_file()
    assert not (conv_dir / "checkpoint.json").exists() and not (conv_dir / "checkpoint.safetensors").exists()

    # the bundle loads and segments a patient
    loaded = Bundle.load(bundle)
    assert loaded.channels == list(CHANNELS)
    out = tmp_path / "seg"
    seg = run_segment(cohort, bundle, out)
    assert seg.returncode == 0, describe(seg)
    assert set(files_in(out)) == SEGMENT_OUTPUTS


# ---------------------------------------------------------------------------------------------
# 2. resume rules


def test_train_into_existing_bundle_is_refused(resumed_run, cohort, train_config):
    bundle = resumed_run["bundle"]
    before = (bundle / "bundle.json").read_bytes()
    proc = run_cli(*train_args(cohort, bundle, train_config, progress="none"))
    assert proc.returncode != 0
    lines = stderr_lines(proc)
    assert len(lines) == 1, proc.stderr
    assert str(bundle) in lines[0] and "--resume" in lines[0]
    assert (bundle / "bundle.json").read_bytes() == before


def test_train_into_existing_run_dir_is_refused(resumed_run, cohort, train_config, tmp_path):
    run_dir = resumed_run["run_dir"]
    config_before = (run_dir / "config.json").read_bytes()
    out = tmp_path / "other_bundle"
    proc = run_cli(*train_args(cohort, out, train_config, "--run-dir", run_dir, progress="none"))
    assert proc.returncode != 0
    lines = stderr_lines(proc)
    assert len(lines) == 1, proc.stderr
    assert str(run_dir) in lines[0] and "--resume" in lines[0]
    assert (run_dir / "config.json").read_bytes() == config_before
    assert not out.exists()


def test_resume_with_other_config_is_refused(resumed_run, cohort, tmp_path):
    bundle, run_dir = resumed_run["bundle"], resumed_run["run_dir"]
    other = tmp_path / "other.json"
    other.write_text(json.dumps({**TRAIN_CONFIG, "converter": {"epochs": CONVERTER_EPOCHS + 1}}))
    config_before = (run_dir / "config.json").read_bytes()
    bundle_before = (bundle / "bundle.json").read_bytes()
    proc = run_cli(*train_args(cohort, bundle, other, "--resume", progress="none"))
    assert proc.returncode != 0
    lines = stderr_lines(proc)
    assert len(lines) == 1, proc.stderr
    assert "config" in lines[0] and str(run_dir) in lines[0]
    assert (run_dir / "config.json").read_bytes() == config_before
    assert (bundle / "bundle.json").read_bytes() == bundle_before


# ---------------------------------------------------------------------------------------------
# 3. slice labels only (no masks)


def test_labels_only_cohort_trains(cohort, train_config, tmp_path):
    from WeakTumorSegLib.bundle.load import Bundle
    from WeakTumorSegLib.training import PIPELINE_STAGES

    data = copy_cohort(cohort, tmp_path / "labels_only", masks=False)
    assert not list(data.rglob("*_seg.nii.gz")) and len(list(data.rglob("*_slice_labels.csv"))) == N_PATIENTS
    bundle = tmp_path / "bundle"
    started = time.monotonic()
    proc = run_cli(*train_args(data, bundle, train_config))
    wall = time.monotonic() - started
    assert proc.returncode == 0, describe(proc)
    loaded = Bundle.load(bundle)
    training = loaded.config["training"]
    split = training["split"]
    assert sorted(split["train"] + split["val"]) == [f"p{i:02d}" for i in range(N_PATIENTS)]
    assert split["train"] and split["val"] and not set(split["train"]) & set(split["val"])
    assert split == json.loads((tmp_path / "bundle.run" / "split.json").read_text())
    seconds = training["stage_seconds"]
    # tiny turns the seed-only baseline and the final segmenter off
    assert set(seconds) == set(PIPELINE_STAGES) - {"segmenter_seed_only"}
    # seconds of each stage: the classifier's six epochs took some, all together no more than the command
    assert seconds["classifier"] > 0 and sum(seconds.values()) <= wall, (seconds, wall)
    assert training["world_size"] == 1
    done = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")][-1]
    assert done["stage"] == "done" and done["bundle"] == str(bundle)


# ---------------------------------------------------------------------------------------------
# 4. bad input: one line naming the path, before any training


def _bad_empty(cohort: Path, tmp: Path) -> tuple[Path, Path]:
    data = tmp / "empty"
    data.mkdir()
    return data, data


def _bad_missing_channel(cohort: Path, tmp: Path) -> tuple[Path, Path]:
    data = copy_cohort(cohort, tmp / "missing_channel")
    (data / "p02" / "p02_t1.nii.gz").unlink()
    return data, data / "p02"


def _bad_label_rows(cohort: Path, tmp: Path) -> tuple[Path, Path]:
    data = copy_cohort(cohort, tmp / "label_rows", masks=False)
    culprit = data / "p03" / "p03_slice_labels.csv"
    rewrite_labels(culprit, drop_last=True)
    return data, culprit


def _bad_all_tumour(cohort: Path, tmp: Path) -> tuple[Path, Path]:
    data = copy_cohort(cohort, tmp / "all_tumour", masks=False)
    for path in data.rglob("*_slice_labels.csv"):
        rewrite_labels(path, tumor=1)
    return data, data


def _bad_no_tumour(cohort: Path, tmp: Path) -> tuple[Path, Path]:
    data = copy_cohort(cohort, tmp / "no_tumour", masks=False)
    for path in data.rglob("*_slice_labels.csv"):
        rewrite_labels(path, tumor=0)
    return data, data


@pytest.mark.parametrize("make, words", [
    (_bad_empty, ["empty folder"]),
    (_bad_missing_channel, ["'t1' channel"]),
    (_bad_label_rows, ["11 rows", "12 slices"]),
    (_bad_all_tumour, ["no tumour-free slices"]),
    (_bad_no_tumour, ["no tumour slices"]),
], ids=["empty-folder", "missing-channel", "label-row-count", "no-tumour-free-slices", "no-tumour-slices"])
def test_bad_input_is_refused_before_training(make, words, cohort, train_config, tmp_path):
    data, culprit = make(cohort, tmp_path)
    bundle = tmp_path / "bundle"
    proc = run_cli(*train_args(data, bundle, train_config, progress="none"))
    assert proc.returncode != 0, describe(proc)
    lines = stderr_lines(proc)
    assert len(lines) == 1, proc.stderr
    line = lines[0]
    assert line.startswith("weaktumorseg: error: ") and "Traceback" not in proc.stderr
    assert str(culprit) in line, line
    for word in words:
        assert word in line, line
    assert not (tmp_path / "bundle.run" / "stages" / "classifier").exists()
    assert not bundle.exists()
    assert "classifier: epoch" not in proc.stdout


# ---------------------------------------------------------------------------------------------
# 5. two processes under torchrun (gloo on CPU)


def test_torchrun_two_processes(cohort, tmp_path):
    import torch.distributed as tdist

    if not tdist.is_available():
        pytest.skip("torch.distributed is not available in this PyTorch build")
    if not tdist.is_gloo_available():
        pytest.skip("the gloo backend of torch.distributed is not available")
    bundle = tmp_path / "bundle"
    config = tmp_path / "ddp.json"
    config.write_text(json.dumps(DDP_CONFIG, indent=1))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
           "-m", "WeakTumorSegLib",
           *(str(a) for a in train_args(cohort, bundle, config, progress="none"))]
    proc = subprocess.run(cmd, cwd=str(REPO_ROOT), env=cli_env(OMP_NUM_THREADS="1"), capture_output=True,
                          text=True, timeout=400, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, describe(proc)
    from WeakTumorSegLib.bundle.load import Bundle

    loaded = Bundle.load(bundle)
    assert loaded.config["training"]["world_size"] == 2
    assert loaded.config["models"]["classifier"]["architecture"] == "classifier_ensemble"
    assert len(loaded.models["classifier"].members) == 2  # both members stored, and they load
    out = tmp_path / "seg"
    seg = run_segment(cohort, bundle, out)
    assert seg.returncode == 0, describe(seg)
    assert (out / "p00_mask.nii.gz").is_file()


# ---------------------------------------------------------------------------------------------
# 6. checkpoint round trip


def _small_model():
    from torch import nn

    return nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))


def _adam_step(model, opt, x, y) -> None:
    import torch

    opt.zero_grad(set_to_none=True)
    loss = torch.nn.functional.mse_loss(model(x), y)
    loss.backward()
    opt.step()


def test_checkpoint_round_trip_without_pickle(tmp_path, monkeypatch):
    import torch

    from WeakTumorSegLib.training.checkpoint import checkpoint_exists, load_checkpoint, save_checkpoint

    torch.manual_seed(0)
    x, y = torch.randn(16, 5), torch.randn(16, 2)
    model = _small_model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2, betas=(0.8, 0.99))
    for _ in range(3):
        _adam_step(model, opt, x, y)
    rng = torch.get_rng_state()
    ckpt = tmp_path / "ckpt"
    save_checkpoint(ckpt, {"net": model}, {"opt": opt}, {"epoch": 3, "history": [{"epoch": 1, "loss": 0.5}]},
                    tensors={"rng": rng})
    assert files_in(tmp_path) == ["ckpt.json", "ckpt.safetensors"]
    assert checkpoint_exists(ckpt)

    def no_pickle(*args, **kwargs):
        raise AssertionError("loading a checkpoint must not unpickle anything")

    torch.manual_seed(123)
    clone = _small_model()
    clone_opt = torch.optim.Adam(clone.parameters(), lr=0.5, betas=(0.9, 0.999))
    with monkeypatch.context() as m:
        m.setattr(pickle, "load", no_pickle)
        m.setattr(pickle, "loads", no_pickle)
        m.setattr(torch, "load", no_pickle)
        state, extra = load_checkpoint(ckpt, {"net": clone}, {"opt": clone_opt})
    assert state == {"epoch": 3, "history": [{"epoch": 1, "loss": 0.5}]}
    assert torch.equal(extra["rng"], rng)
    for (k, a), (_, b) in zip(model.state_dict().items(), clone.state_dict().items()):
        assert torch.equal(a, b), k
    assert clone_opt.param_groups[0]["lr"] == pytest.approx(1e-2)
    assert tuple(clone_opt.param_groups[0]["betas"]) == pytest.approx((0.8, 0.99))

    # one more step from the restored state equals one more step from the original
    _adam_step(model, opt, x, y)
    _adam_step(clone, clone_opt, x, y)
    for (k, a), (_, b) in zip(model.state_dict().items(), clone.state_dict().items()):
        assert torch.equal(a, b), k
    for p, q in zip(opt.state.values(), clone_opt.state.values()):
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(torch.as_tensor(p[key]), torch.as_tensor(q[key])), key


# ---------------------------------------------------------------------------------------------
# reproducibility of a stage (same configuration and seed -> same weights)


def test_classifier_stage_is_reproducible(cohort, train_config, tmp_path):
    """Two runs with the same configuration (seed 0) train the same classifier, whatever the
    process's default torch seed (random in a fresh interpreter) was when the stage began."""
    import torch
    from safetensors.torch import load_file

    from WeakTumorSegLib.training.classifier import train_classifier
    from WeakTumorSegLib.training.presets import resolve_config
    from WeakTumorSegLib.training.run import TrainingRun

    config = resolve_config("tiny", train_config, {"classifier": {"epochs": 1}})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    weights = []
    try:
        for k, process_seed in enumerate((11, 12)):
            torch.manual_seed(process_seed)  # stands in for a fresh process's random default seed
            run = TrainingRun(tmp_path / f"run{k}", config, cohort, tmp_path / f"bundle{k}", log=lambda msg: None)
            run.prepare_dir()
            run.load_data()
            train_classifier(run)
            weights.append(load_file(str(run.stage_dir("classifier") / "classifier.safetensors")))
    finally:
        torch.set_num_threads(threads)
    assert weights[0].keys() == weights[1].keys()
    differ = [k for k in weights[0] if not torch.equal(weights[0][k], weights[1][k])]
    assert not differ, f"classifier weights differ between two runs of the same configuration: {differ[:5]}"


def _train_classifier_stage(run_dir: Path, config: dict, cohort: Path, log=None, resume: bool = False):
    """Run only the classifier stage in ``run_dir`` (one thread); returns the run."""
    import torch

    from WeakTumorSegLib.training.classifier import train_classifier
    from WeakTumorSegLib.training.run import TrainingRun

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run = TrainingRun(run_dir, config, cohort, run_dir.parent / (run_dir.name + "_bundle"), resume=resume,
                          log=log or (lambda msg: None))
        run.prepare_dir()
        run.load_data()
        train_classifier(run)
    finally:
        torch.set_num_threads(threads)
    return run


def test_classifier_members_train_apart_and_resume(cohort, train_config, tmp_path, monkeypatch):
    """``classifier.members`` 2: member 0 is exactly the classifier a one-member run trains,
    member 1 is another (own initialisation and data order), each has its own epoch log, and a
    run killed after member 0 does not retrain it and ends with the same weights."""
    import torch
    from safetensors.torch import load_file

    from WeakTumorSegLib.training import classifier as classifier_stage
    from WeakTumorSegLib.training.presets import resolve_config

    single = resolve_config("tiny", train_config, {"classifier": {"epochs": 1}})
    double = resolve_config("tiny", train_config, {"classifier": {"epochs": 1, "members": 2}})
    one = _train_classifier_stage(tmp_path / "one", single, cohort)
    two = _train_classifier_stage(tmp_path / "two", double, cohort)
    w1 = load_file(str(one.stage_dir("classifier") / "classifier.safetensors"))
    w2 = load_file(str(two.stage_dir("classifier") / "classifier.safetensors"))
    member = [{k[len(f"members.{i}."):]: v for k, v in w2.items() if k.startswith(f"members.{i}.")} for i in (0, 1)]
    assert len(member[0]) + len(member[1]) == len(w2) and member[0].keys() == member[1].keys() == w1.keys()
    assert all(torch.equal(member[0][k], w1[k]) for k in w1), "member 0 differs from a one-member run"
    assert not torch.equal(member[0]["head.weight"], member[1]["head.weight"])
    sdir = two.stage_dir("classifier")
    assert (sdir / "log_member0.csv").is_file() and (sdir / "log_member1.csv").is_file()
    assert not list(sdir.glob("member*")) and not list(sdir.glob("checkpoint*"))  # only the stage's files
    done = json.loads((sdir / "done.json").read_text())
    assert len(done["members"]) == 2 and "val_auc" in done["history"]

    # killed while member 1 trains, then resumed
    original = classifier_stage.train_member

    def killed_at_member_1(run, model, member, members):
        if member == 1:
            raise KeyboardInterrupt
        return original(run, model, member, members)

    monkeypatch.setattr(classifier_stage, "train_member", killed_at_member_1)
    with pytest.raises(KeyboardInterrupt):
        _train_classifier_stage(tmp_path / "killed", double, cohort)
    monkeypatch.undo()
    lines: list[str] = []
    resumed = _train_classifier_stage(tmp_path / "killed", double, cohort, lines.append, resume=True)
    assert any("member 1/2 already trained" in line for line in lines), lines
    assert not any("member0: epoch" in line for line in lines), lines
    w3 = load_file(str(resumed.stage_dir("classifier") / "classifier.safetensors"))
    assert w3.keys() == w2.keys() and all(torch.equal(w3[k], w2[k]) for k in w2)


@pytest.mark.parametrize("zeta, collapsed", [(1.0, False), (500.0, True)])
def test_collapsed_segmenter_is_reported(zeta, collapsed, cohort, train_config, tmp_path):
    """A size prior too strong for the cohort pushes the segmenter's output below 0.5 on its own
    positive seeds, so every mask is empty; the stage says so in the log (with the setting to
    lower) and records the share of positive seeds its masks cover in done.json."""
    import numpy as np
    import torch

    from WeakTumorSegLib.training.presets import resolve_config
    from WeakTumorSegLib.training.run import TrainingRun
    from WeakTumorSegLib.training.segmenters import train_segmenter

    config = resolve_config("tiny", train_config, {"segmenter": {"epochs": 6, "min_steps": 0, "zeta": zeta}})
    lines: list[str] = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run = TrainingRun(tmp_path / "run", config, cohort, tmp_path / "bundle", log=lines.append)
        run.prepare_dir()
        run.load_data()
        pos = torch.from_numpy(run.train.mask.astype(np.uint8))  # the truth as positive seeds
        neg = 1 - pos
        always = torch.nn.Module()
        always.forward = lambda x: torch.ones(len(x))  # a classifier that calls every slice tumour
        train_segmenter(run, "segmenter0", np.ones(len(run.x), bool), pos, neg,
                        run.x[:, run.flair:run.flair + 1], always)
    finally:
        torch.set_num_threads(threads)
    recall = json.loads((run.stage_dir("segmenter0") / "done.json").read_text())["positive_seed_recall"]
    warned = [line for line in lines if line.startswith("WARNING segmenter0")]
    if collapsed:
        assert recall < 0.05 and len(warned) == 1 and "segmenter.zeta" in warned[0], (recall, lines[-3:])
    else:
        assert recall > 0.5 and not warned, (recall, warned)


def test_failed_run_is_reported():
    """Records like those of a failed run on real MR (positive seeds 5 % inside the tumours, fused
    validation Dice 0.06 on tumour slices) give one warning per sign, each naming the stage and the
    value; a working run's records (0.71, 0.45) and a label-only cohort's (no overlap, no Dice)
    give none."""
    from WeakTumorSegLib.training.quality import training_warnings

    failed = training_warnings({"seeds": {"seed_overlap_positive": 0.047},
                                "segmenter0": {"positive_seed_recall": 0.97}},
                               {"dice_fused_tumour_slices": 0.061})
    assert len(failed) == 2, failed
    assert failed[0].startswith("seeds:") and "5%" in failed[0]
    assert failed[1].startswith("validation:") and "0.06" in failed[1]
    collapsed = training_warnings({"segmenter_os": {"positive_seed_recall": 0.01}})
    assert len(collapsed) == 1 and collapsed[0].startswith("segmenter_os:") and "segmenter.zeta" in collapsed[0]
    assert training_warnings({"seeds": {"seed_overlap_positive": 0.71}, "segmenter_us": {"positive_seed_recall": 0.9}},
                             {"dice_fused_tumour_slices": 0.45}) == []
    assert training_warnings({"seeds": {"tumour_slices": 40}, "segmenter0": {"positive_seed_recall": None}},
                             {"dice_fused_tumour_slices": float("nan")}) == []


# ---------------------------------------------------------------------------------------------
# 7. resolve_config


def test_resolve_config_unknown_preset():
    from WeakTumorSegLib.errors import InputError
    from WeakTumorSegLib.training.presets import resolve_config

    with pytest.raises(InputError, match="no_such_preset"):
        resolve_config("no_such_preset")


def test_resolve_config_unknown_top_level_key(tmp_path):
    from WeakTumorSegLib.errors import InputError
    from WeakTumorSegLib.training.presets import resolve_config

    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"classifier": {"epochs": 1}, "clasifier": {"epochs": 2}}))
    with pytest.raises(InputError) as info:
        resolve_config("tiny", path)
    assert "clasifier" in str(info.value) and str(path) in str(info.value)


def test_resolve_config_takes_the_json_object_itself(tmp_path):
    from WeakTumorSegLib.errors import InputError
    from WeakTumorSegLib.training.presets import resolve_config

    path = tmp_path / "cfg.json"
    path.write_text(json.dumps({"seed": 3, "final": {"members": 2}}))
    inline = resolve_config("tiny", ' {"seed": 3, "final": {"members": 2}}')
    assert inline == resolve_config("tiny", path) and inline["seed"] == 3
    # errors name --config, not the JSON text, on one line
    for bad, problem in (('{"seed": 3,', "invalid JSON"), ('{"final": {"members": 0}}', "final.members"),
                         ('{"clasifier": {}}', "clasifier")):
        with pytest.raises(InputError) as info:
            resolve_config("tiny", bad)
        msg = str(info.value)
        assert msg.startswith("--config: ") and problem in msg and "\n" not in msg
    with pytest.raises(InputError, match="config file not found"):
        resolve_config("tiny", str(tmp_path / "missing.json"))
    with pytest.raises(InputError, match="cannot read the config file"):
        resolve_config("tiny", tmp_path)


def test_resolve_config_kwargs_replaced_whole(tmp_path):
    from WeakTumorSegLib.training.presets import PRESETS, resolve_config

    preset_before = json.dumps(PRESETS["tiny"], sort_keys=True)
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps({"classifier": {"kwargs": {"width": 3}, "epochs": 1}}))
    config = resolve_config("tiny", path)
    assert config["classifier"]["kwargs"] == {"width": 3}
    assert config["classifier"]["epochs"] == 1
    # the rest of the section is deep-merged, not replaced
    assert config["classifier"]["architecture"] == PRESETS["tiny"]["classifier"]["architecture"]
    assert config["classifier"]["lr"] == PRESETS["tiny"]["classifier"]["lr"]
    assert config["preset"] == "tiny"
    # explicit overrides follow the same rule
    config = resolve_config("tiny", path, {"classifier": {"kwargs": {"blocks": 2}}})
    assert config["classifier"]["kwargs"] == {"blocks": 2}
    assert config["classifier"]["epochs"] == 1
    assert json.dumps(PRESETS["tiny"], sort_keys=True) == preset_before


@pytest.mark.parametrize("key, value", [(("classifier", "members"), v) for v in (0, -1, 2.5, "3", True)]
                         + [(("converter", "disc_width"), v) for v in (0, -4, 2.5, "24", True)]
                         + [(("classifier", "augment"), v) for v in ("rotate", 1, None)]
                         + [(("final", "grow"), v) for v in (0, 1, -0.2, "0.2", True)]
                         + [(("final", "members"), v) for v in (0, 2.5, "3", True)])
def test_resolve_config_bad_value_is_refused_naming_the_file(key, value, tmp_path):
    from WeakTumorSegLib.errors import InputError
    from WeakTumorSegLib.training.presets import resolve_config

    section, name = key
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({section: {name: value}}))
    with pytest.raises(InputError) as info:
        resolve_config("tiny", path)
    msg = str(info.value)
    assert str(path) in msg and f"{section}.{name}" in msg and "\n" not in msg
    assert resolve_config("tiny", None, {"converter": {"disc_width": None}})["converter"]["disc_width"] is None

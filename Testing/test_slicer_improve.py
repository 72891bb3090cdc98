"""Tier B: the module's "Improve the model" section without Slicer's GUI (``slicer-core`` wheel, no Qt).

The training job runs a fake core (``fake_core.py`` below, behind a fake interpreter), never a real training:
it checks and answers the ``train --from-bundle`` command line as the core would, prints the core's JSON
progress and ends as told by ``$FAKE_CORE``: ``succeed`` (writes the new bundle), ``fail`` (the core's one-line
error), ``interrupt`` (exit 130) or ``hang`` (a child process, then waits for the cancel). The section's panel is
driven on stand-in widgets. Skipped where the wheel is not installed, as test_slicer_logic.py is.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import re
import shutil
import stat
import sys
import textwrap
import time
import types
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

slicer = pytest.importorskip(
    "slicer", reason="slicer-core is not installed (pip install -e '.[test]' installs it on Python 3.11 / Linux)")
if not hasattr(slicer, "vtkMRMLScene"):
    pytest.skip("the installed 'slicer' package is not slicer-core", allow_module_level=True)

from conftest import REPO_ROOT, STANDIN_BUNDLE  # noqa: E402

sys.path.insert(0, str(REPO_ROOT / "WeakTumorSeg"))
import WeakTumorSeg as W  # noqa: E402
from WeakTumorSegHelpers import core, improve  # noqa: E402
from WeakTumorSegHelpers import job as job_module  # noqa: E402

UI_FILE = REPO_ROOT / "WeakTumorSeg" / "Resources" / "UI" / "WeakTumorSeg.ui"

FAKE_CORE = textwrap.dedent('''
    """Stands in for ``python -m WeakTumorSegLib train --from-bundle ... --progress json``."""
    import argparse, json, os, shutil, subprocess, sys, time

    assert sys.argv[1:4] == ["-m", "WeakTumorSegLib", "train"], sys.argv
    parser = argparse.ArgumentParser()
    for option in ("--from-bundle", "--data", "--annotations", "--out", "--threads", "--device", "--progress"):
        parser.add_argument(option)
    args = parser.parse_args(sys.argv[4:])
    assert args.progress == "json" and os.path.isdir(args.data) and os.path.isdir(args.annotations), args
    mode = os.environ.get("FAKE_CORE", "succeed")


    def event(**fields):
        print(json.dumps(fields), flush=True)


    os.makedirs(args.out + ".run")  # the core's run folder, as train makes it
    with open(os.path.join(args.out + ".run", "config.json"), "w") as fh:
        fh.write("{}")
    print("final segmenter on 2 of 2 patients", file=sys.stderr, flush=True)
    print("not JSON: a stray line on stdout", flush=True)
    for done in range(3):
        event(stage="final labels", done=done, total=2)
    if mode == "fail":
        print(f"weaktumorseg: error: {args.annotations}/P1_manifest.csv: not an export manifest", file=sys.stderr)
        sys.exit(1)
    if mode == "interrupt":
        print("weaktumorseg: training interrupted; the finished epochs are kept", file=sys.stderr)
        sys.exit(130)
    if mode == "hang":
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
        with open(os.environ["FAKE_CORE_CHILD"], "w") as fh:
            fh.write(str(child.pid))
        event(stage="final round1 1/2", done=0, total=4)
        time.sleep(120)
    for epoch in (1, 2):
        for batch in range(5):
            event(stage=f"final round1 {epoch}/2", done=batch, total=4)
    os.makedirs(args.out)
    shutil.copy(os.path.join(args.from_bundle, "bundle.json"), args.out)
    event(stage="done", bundle=args.out, stage_seconds={"final": 0.1})
''')


@pytest.fixture
def fake_core(tmp_path, monkeypatch):
    """The core's interpreter replaced by a script that runs ``fake_core.py`` with the same arguments."""
    script = tmp_path / "fake_core.py"
    script.write_text(FAKE_CORE)
    python = tmp_path / "fakepython"
    python.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{script}" "$@"\n')
    python.chmod(python.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setattr(job_module, "pythonExecutable", lambda: str(python))
    monkeypatch.setenv("FAKE_CORE_CHILD", str(tmp_path / "child.pid"))
    return python


@pytest.fixture
def folders(tmp_path) -> types.SimpleNamespace:
    """A bundle (the stand-in's bundle.json only), an export folder with one manifest and a cohort folder."""
    bundle = tmp_path / "models" / "mybundle"
    bundle.mkdir(parents=True)
    shutil.copy(STANDIN_BUNDLE / "bundle.json", bundle)
    exports, cohort = tmp_path / "exports", tmp_path / "cohort"
    exports.mkdir()
    (exports / "P1_flair_manifest.csv").write_text("volume,slice,status,difference_score,tumor_pixels\n")
    (cohort / "P1").mkdir(parents=True)
    return types.SimpleNamespace(bundle=bundle, exports=exports, cohort=cohort, out=tmp_path / "models" / "new")


def start(folders, mode: str, monkeypatch, **kwargs) -> tuple[improve.TrainingJob, dict]:
    """Start the fake training through the Logic; returns the job and what its callbacks received."""
    monkeypatch.setenv("FAKE_CORE", mode)
    seen: dict = {"progress": [], "trained": [], "failed": []}
    job = W.WeakTumorSegLogic(slicer.vtkMRMLScene()).train(
        folders.bundle, folders.cohort, folders.exports, folders.out, device="cpu", wait=False,
        progressCallback=lambda *args: seen["progress"].append(args),
        trainedCallback=seen["trained"].append, failedCallback=seen["failed"].append, **kwargs)
    return job, seen


def finish(job, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not job.poll():
        assert time.monotonic() < deadline, "the fake core did not end"
        time.sleep(0.02)


# ------------------------------------------------------------------------------------------------
# the command line


def test_train_command_has_every_option_and_the_core_accepts_it(tmp_path):
    from WeakTumorSegLib.cli import build_parser

    bundle, cohort, exports, out = (tmp_path / name for name in ("b", "cohort", "exports", "b-improved"))
    command = improve.trainCommand(bundle, cohort, exports, out, device="cuda", threads=3)
    assert command == [core.pythonExecutable(), "-m", "WeakTumorSegLib", "train", "--from-bundle", str(bundle),
                       "--data", str(cohort), "--annotations", str(exports), "--out", str(out), "--threads", "3",
                       "--device", "cuda", "--progress", "json"]
    args = build_parser().parse_args(command[3:])  # the core's own parser reads it as meant
    assert (args.command, args.from_bundle, args.data, args.annotations, args.out) == (
        "train", bundle, cohort, exports, out)
    assert (args.threads, args.device, args.progress) == (3, "cuda", "json")
    plain = improve.trainCommand(bundle, cohort, exports, out, device="")
    assert "--threads" not in plain and plain[plain.index("--device") + 1] == "auto"


def test_the_job_runs_the_command_that_train_builds(fake_core, folders, monkeypatch):
    job, _seen = start(folders, "succeed", monkeypatch, threads=2)
    finish(job)
    assert job.command == improve.trainCommand(folders.bundle, folders.cohort, folders.exports, folders.out,
                                               "cpu", 2)
    assert job.command[0] == str(fake_core) and job.workdir == folders.out.parent


# ------------------------------------------------------------------------------------------------
# progress


def test_training_stages_become_a_growing_fraction_and_readable_messages():
    progress = improve.TrainingProgress()
    steps = [(("start", 0, 1), 0.0, "Starting (reading the bundle and the exports)"),
             (("final labels", 1, 2), 0.2, "Labelling the patients with the bundle (1/2)"),
             (("final round1 1/2", 0, 4), 0.35, "Training the final segmenter: epoch 1/2"),
             (("final round1 2/2", 2, 4), 0.35 + 0.65 * 6 / 8, "Training the final segmenter: epoch 2/2"),
             (("final round2 1/2", 0, 4), 0.35 + 0.65 * 6 / 8, "Training the final segmenter (round 2): epoch 1/2"),
             (("an unknown stage", 1, 3), 0.35 + 0.65 * 6 / 8, "an unknown stage (1/3)")]
    for (stage, done, total), fraction, message in steps:
        assert progress.update(stage, done, total) == message
        assert progress.fraction == pytest.approx(fraction), stage
    two_rounds = improve.TrainingProgress(rounds=2)
    two_rounds.update("final round2 1/2", 2, 4)  # half of round 2's first epoch: 2.5 of 4 epochs
    assert two_rounds.fraction == pytest.approx(0.35 + 0.65 * 10 / 16)
    assert improve.EPOCH_STAGE.fullmatch("final_round1 3/16") and not improve.EPOCH_STAGE.fullmatch("final labels")


def test_the_job_reports_the_fake_cores_progress(fake_core, folders, monkeypatch):
    job, seen = start(folders, "succeed", monkeypatch)
    finish(job)
    stages = [stage for stage, _fraction, _message in seen["progress"]]
    assert stages[0] == "start" and stages[-1] == "done" and "final labels" in stages
    assert "final round1 2/2" in stages
    fractions = [fraction for _stage, fraction, _message in seen["progress"]]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert 0.3 < fractions[stages.index("final round1 1/2")] < 0.4
    assert ("final round1 2/2", pytest.approx(1.0), "Training the final segmenter: epoch 2/2") in seen["progress"]


# ------------------------------------------------------------------------------------------------
# how it ends


def test_a_successful_training_reports_the_new_bundle(fake_core, folders, monkeypatch):
    job, seen = start(folders, "succeed", monkeypatch)
    assert job.running and not seen["trained"]
    finish(job)
    assert job.state == "succeeded" and job.result == folders.out
    assert seen["trained"] == [folders.out] and seen["failed"] == []
    assert core.readBundle(folders.out).channels == core.readBundle(folders.bundle).channels
    assert (folders.out.parent / "new.run").is_dir()  # the core's record of the run stays
    monkeypatch.setenv("FAKE_CORE", "succeed")
    other = folders.out.with_name("other")
    assert W.WeakTumorSegLogic(slicer.vtkMRMLScene()).train(
        folders.bundle, folders.cohort, folders.exports, other, device="cpu", timeout=60) == other


def test_a_failing_training_passes_its_one_line_error_on(fake_core, folders, monkeypatch):
    job, seen = start(folders, "fail", monkeypatch)
    finish(job)
    expected = f"{folders.exports}/P1_manifest.csv: not an export manifest"
    assert job.state == "failed" and seen["failed"] == [expected] and seen["trained"] == []
    assert str(job.error) == expected and "final segmenter on 2 of 2 patients" in job.error.details
    assert not (folders.out.parent / "new.run").exists()  # so that Train can run again with the same name
    with pytest.raises(improve.TrainingError, match="not an export manifest"):
        job.wait()
    interrupted, seen = start(folders, "interrupt", monkeypatch)
    finish(interrupted)
    assert seen["failed"] == ["the training was interrupted"] and interrupted.process.returncode == 130


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie, killed but not reaped yet, does not count)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux /proc")
def test_cancel_kills_the_training_and_its_children(fake_core, folders, monkeypatch, tmp_path):
    job, seen = start(folders, "hang", monkeypatch)
    deadline = time.monotonic() + 60
    while not any(stage == "final round1 1/2" for stage, *_ in seen["progress"]):
        assert not job.poll() and time.monotonic() < deadline, "the fake core did not start its epoch"
        time.sleep(0.02)
    child = int((tmp_path / "child.pid").read_text())
    assert _alive(job.process.pid) and _alive(child)
    job.cancel()
    assert job.state == "cancelled" and job.poll() and job.process.returncode is not None
    deadline = time.monotonic() + 5
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child), "the training's child process survived the cancel"
    assert seen["trained"] == seen["failed"] == []
    assert not folders.out.exists() and not (folders.out.parent / "new.run").exists()
    with pytest.raises(improve.TrainingError, match="the training was cancelled"):
        job.wait()


# ------------------------------------------------------------------------------------------------
# checks before starting, and where the new bundle goes


def test_train_refuses_missing_folders_and_a_taken_output_before_starting(folders, monkeypatch):
    monkeypatch.setattr(improve, "TrainingJob", None)  # nothing may start
    logic = W.WeakTumorSegLogic(slicer.vtkMRMLScene())

    def refused(pattern: str, **changes) -> None:
        given = {"bundlePath": folders.bundle, "cohortFolder": folders.cohort,
                 "annotationsFolder": folders.exports, "outPath": folders.out, **changes}
        with pytest.raises(core.SegmentationError, match=pattern) as info:
            logic.train(**given)
        assert "\n" not in str(info.value)

    refused("cohort folder not found", cohortFolder=folders.cohort / "absent")
    refused("export folder not found", annotationsFolder="")
    refused(r"no exported manifest \(<volume>_manifest.csv\)", annotationsFolder=folders.cohort)
    refused("not a model bundle", bundlePath=folders.exports)
    refused("already exists; choose another folder", outPath=folders.bundle)
    (folders.out.parent / "new.run").mkdir()
    (folders.out.parent / "new.run" / "config.json").write_text("{}")
    refused("run folder is in the way", outPath=folders.out)


def test_default_output_is_a_free_improved_folder_beside_the_bundle(folders, tmp_path, monkeypatch):
    bundle = folders.bundle
    assert improve.defaultOutputPath(bundle) == bundle.with_name("mybundle-improved")
    bundle.with_name("mybundle-improved").mkdir()
    bundle.with_name("mybundle-improved-2.run").mkdir()  # an earlier training's run folder
    assert improve.defaultOutputPath(bundle) == bundle.with_name("mybundle-improved-3")
    assert improve.defaultOutputPath(bundle.with_name("mybundle-improved")) == bundle.with_name("mybundle-improved-3")
    monkeypatch.setattr(improve, "USER_MODELS_DIR", tmp_path / "user models")
    assert improve.defaultOutputPath(STANDIN_BUNDLE) == tmp_path / "user models" / "phantom-standin-improved"


def test_the_training_code_uses_no_gui():
    gui_use = re.compile(r"\bqt\.|\bctk\.|slicer\.app\b|import qt|import ctk|errorDisplay|confirm\w*Display")
    for obj in (improve.train, improve.trainCommand, improve.defaultOutputPath, improve.TrainingJob,
                improve.TrainingProgress, job_module.CoreJob):
        match = gui_use.search(inspect.getsource(obj))
        assert not match, f"{obj.__name__} uses the GUI: {match.group(0)}"


# ------------------------------------------------------------------------------------------------
# the GUI section


class FakeWidget:
    """A stand-in Qt widget: properties, visibility and the slots connected to its signals."""

    def __init__(self, **properties) -> None:
        self.text, self.toolTip, self.enabled, self.visible, self.value, self.currentPath = "", "", True, True, 0, ""
        self.__dict__.update(properties)
        self.slots: dict[str, list] = {}

    def connect(self, signal: str, slot) -> None:
        self.slots.setdefault(signal, []).append(slot)

    def setVisible(self, visible: bool) -> None:
        self.visible = bool(visible)

    def emit(self, signal: str, *args) -> None:
        for slot in self.slots.get(signal, []):
            slot(*args)


class FakeTimer(FakeWidget):
    def setInterval(self, ms: int) -> None:
        self.interval = ms

    def start(self) -> None:
        self.active = True

    def stop(self) -> None:
        self.active = False


def choose_path(widget: FakeWidget, path) -> None:
    widget.currentPath = str(path)
    widget.emit("currentPathChanged(QString)", str(path))


@pytest.fixture
def panel(folders, monkeypatch):
    """The section on stand-in widgets with the real Logic; dialogs are recorded instead of shown."""
    monkeypatch.setattr(improve, "qt", types.SimpleNamespace(QTimer=FakeTimer))
    monkeypatch.setattr(improve, "installDependencies", lambda interactive: True)
    monkeypatch.setattr(slicer.util, "tryWithErrorDisplay", lambda *args, **kwargs: contextlib.nullcontext())
    errors: list = []
    monkeypatch.setattr(slicer.util, "errorDisplay", lambda text, **kwargs: errors.append(text))
    names = ("bundlePathLineEdit", "trainingExportsPathLineEdit", "trainingCohortPathLineEdit", "trainButton",
             "trainProgressBar", "trainStatusLabel")
    ui = types.SimpleNamespace(**{name: FakeWidget() for name in names})
    parameters = types.SimpleNamespace(bundlePath=Path(), trainingExports=folders.exports,
                                       trainingCohort=folders.cohort, improvedBundlePath=Path(), device="cpu")
    section = improve.ImprovePanel(ui, W.WeakTumorSegLogic(slicer.vtkMRMLScene()), lambda: parameters)
    section.errors, section.parameters = errors, parameters
    yield section
    section.cleanup()


def run_panel(section, timeout: float = 60.0) -> None:
    """What the panel's timer does until the job is over."""
    deadline = time.monotonic() + timeout
    while section.running:
        assert time.monotonic() < deadline, "the fake core did not end"
        section.poll()
        time.sleep(0.02)


def test_train_button_turns_into_cancel_and_the_new_bundle_is_selected(fake_core, folders, panel, monkeypatch):
    ui, parameters = panel.ui, panel.parameters
    assert ui.trainButton.text == "Train" and not ui.trainButton.enabled and not ui.trainProgressBar.visible
    choose_path(ui.trainingExportsPathLineEdit, folders.exports)
    choose_path(ui.trainingCohortPathLineEdit, folders.cohort)
    assert not ui.trainButton.enabled  # no bundle yet
    parameters.bundlePath = folders.bundle
    choose_path(ui.bundlePathLineEdit, folders.bundle)
    assert ui.trainButton.enabled and parameters.improvedBundlePath == folders.bundle.with_name("mybundle-improved")
    monkeypatch.setenv("FAKE_CORE", "succeed")
    panel.onTrainButton()
    assert panel.running and ui.trainButton.text == "Cancel" and ui.trainButton.enabled
    assert ui.trainProgressBar.visible and panel.timer.active
    assert panel.job.command[panel.job.command.index("--device") + 1] == "cpu"
    run_panel(panel)
    new = folders.bundle.with_name("mybundle-improved")
    assert parameters.bundlePath == new and core.readBundle(new).name == core.readBundle(folders.bundle).name
    assert ui.trainStatusLabel.text == f"Trained {new}; it is now the selected model bundle."
    assert ui.trainButton.text == "Train" and not ui.trainProgressBar.visible and not panel.timer.active
    choose_path(ui.bundlePathLineEdit, new)  # what the bound field does: the next name is free again
    assert parameters.improvedBundlePath == folders.bundle.with_name("mybundle-improved-2")
    assert panel.errors == []


def test_cancel_and_failure_show_in_the_section(fake_core, folders, panel, monkeypatch):
    ui, parameters = panel.ui, panel.parameters
    parameters.bundlePath, parameters.improvedBundlePath = folders.bundle, folders.out
    monkeypatch.setenv("FAKE_CORE", "hang")
    panel.onTrainButton()
    assert ui.trainButton.text == "Cancel"
    panel.onTrainButton()  # Cancel
    assert panel.job.state == "cancelled" and panel.job.process.returncode is not None
    assert ui.trainStatusLabel.text == "Training cancelled; the model bundle is unchanged."
    assert ui.trainButton.text == "Train" and not ui.trainProgressBar.visible
    assert parameters.bundlePath == folders.bundle and not folders.out.exists()
    monkeypatch.setenv("FAKE_CORE", "fail")
    panel.onTrainButton()
    run_panel(panel)
    message = f"{folders.exports}/P1_manifest.csv: not an export manifest"
    assert ui.trainStatusLabel.text == f"Training failed: {message}"
    assert panel.errors == [f"Training failed: {message}"] and parameters.bundlePath == folders.bundle


def test_the_section_is_in_the_ui_file():
    root = ET.parse(UI_FILE).getroot()
    section = next(w for w in root.iter("widget") if w.get("name") == "improveCollapsibleButton")
    assert section.get("class") == "ctkCollapsibleButton"
    assert section.find("property[@name='text']/string").text == "Improve the model"
    widgets = {w.get("name"): w for w in section.iter("widget")}
    bound = {w.find("property[@name='SlicerParameterName']/string").text: w.get("class")
             for w in widgets.values() if w.find("property[@name='SlicerParameterName']") is not None}
    assert bound == {name: "ctkPathLineEdit" for name in ("trainingExports", "trainingCohort", "improvedBundlePath")}
    assert {"trainButton", "trainProgressBar", "trainStatusLabel"} <= set(widgets)
    assert widgets["trainButton"].find("property[@name='text']/string").text == "Train"
    names = [w.get("name") for w in root.iter("widget")]
    assert len(names) == len(set(names)), "two widgets of the .ui file share a name"

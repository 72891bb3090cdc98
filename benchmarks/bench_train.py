"""Benchmark (c): training wall time, per stage, of ``weaktumorseg train``.

Three ways to get the figures:

* run a training: ``--data COHORT --out BUNDLE [--preset default]`` runs
  ``python -m WeakTumorSegLib train`` in a subprocess with a fixed number of CPU threads, times
  it end to end, and reads the per-stage seconds the run records (``training.stage_seconds`` of
  ``bundle.json`` and ``seconds`` of every ``<run>/stages/<stage>/done.json``). The default preset
  on the 50 TCGA-LGG patients takes about half an hour on 2 CPU cores;
* ``--phantoms N``: the same on a cohort of N small synthetic phantoms written to a temporary
  folder (a smoke check of the benchmark; use ``--preset tiny``);
* ``--from-bundle DIR`` or ``--run-dir DIR``: no training, only report the times recorded in an
  existing bundle or run directory (a run directory also works for an unfinished run).

Time outside the stages (interpreter start, imports, reading the cohort, the converter's
healthy variants between stages) is reported as the difference between the wall time and the
sum of the stages; reading the cohort is timed separately from the run's progress events.

Run from the repository root, e.g.
``python benchmarks/bench_train.py --data ../shared/data/lgg --out lgg-default --json train.json``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import REPO_ROOT, busy_note, load_average, machine_info, table, thread_env, write_json

#: Stage order of ``WeakTumorSegLib.training`` when it cannot be imported; stages a newer library
#: adds are found in the bundle and the run directory and listed as well.
FALLBACK_STAGES = ("classifier", "seeds", "gan", "converter", "segmenter0", "refine", "segmenter_us",
                   "segmenter_os", "bundle")


def library_stages() -> tuple[str, ...]:
    try:
        from WeakTumorSegLib.training import STAGES
    except ImportError:
        return FALLBACK_STAGES
    return tuple(STAGES)


def epoch_section(stage: str) -> str | None:
    """The configuration section holding a stage's number of epochs (None: not an epoch loop)."""
    if stage in ("classifier", "gan", "converter"):
        return stage
    return "segmenter" if stage.startswith("segmenter") else None


#: Settings that let the ``tiny`` preset train on small phantoms in about a minute (as
#: Testing/test_train.py does): no in-plane halving, keep slices whose 128-pixel patch is mostly
#: padding, small classifier batches (so that X_C is not empty), few masks and epochs.
PHANTOM_CONFIG = {
    "preprocessing": {"inplane_scale": 1.0},
    "data": {"max_zero_fraction": 0.9},
    "classifier": {"epochs": 6, "batch": 4},
    "rise": {"n_masks": 50, "batch": 50},
    "gan": {"epochs": 2},
    "converter": {"epochs": 2},
    "segmenter": {"epochs": 2},
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] + " See benchmarks/README.md.")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--data", type=Path, help="cohort folder or manifest CSV to train on")
    src.add_argument("--phantoms", type=int, metavar="N", help="train on N synthetic phantoms (smoke check)")
    src.add_argument("--from-bundle", type=Path, metavar="DIR", help="report the stage times of an existing bundle")
    p.add_argument("--run-dir", type=Path, default=None,
                   help="run directory (default <out>.run); alone (no --data/--phantoms/--from-bundle) it is "
                        "read instead of training")
    p.add_argument("--out", type=Path, default=None,
                   help="bundle folder to write (must not exist; default with --phantoms: a temporary folder)")
    p.add_argument("--geometry", type=Path, default=None,
                   help="pass --geometry: the cohort's true orientation and spacing (TCGA-LGG: "
                        "Resources/Cohorts/tcga-lgg.geometry.json)")
    p.add_argument("--preset", default="default", help="training preset (default: default)")
    p.add_argument("--config", type=Path, default=None,
                   help="JSON overrides passed to train --config (with --phantoms the default is the phantom "
                        "settings of Testing/test_train.py)")
    p.add_argument("--resume", action="store_true", help="pass --resume (continue a killed run in the run directory)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads (default 2)")
    p.add_argument("--device", default="cpu", help="cpu (default), auto or cuda[:N]")
    p.add_argument("--phantom-shape", default="12,96,96", help="Z,Y,X of each phantom (default 12,96,96)")
    p.add_argument("--json", type=Path, default=None, help="write all results to this JSON file")
    args = p.parse_args(argv)
    args.read_run_dir = args.data is None and args.phantoms is None and args.from_bundle is None
    if args.read_run_dir and args.run_dir is None:
        p.error("give one of --data, --phantoms, --from-bundle, or --run-dir alone")
    if args.data is not None and args.out is None:
        p.error("--data needs --out")
    if args.threads < 1:
        p.error("--threads must be at least 1")
    return args


def make_phantom_cohort(root: Path, n: int, shape: tuple[int, int, int]) -> Path:
    """``n`` phantom patients ``p00, p01, ...`` in the cohort folder layout (images, masks, labels)."""
    sys.path.insert(0, str(REPO_ROOT / "Testing"))  # the phantoms are test support
    from support.phantoms import make_phantom, write_case

    for i in range(n):
        pid = f"p{i:02d}"
        ph = make_phantom(shape=shape, n_tumors=1, tumor_slice_fraction=0.45, seed=100 + i)
        write_case(ph, root / pid, pid)
    return root


def run_training(args: argparse.Namespace, data: Path, out: Path, run_dir: Path, config: Path | None) -> dict:
    """Run ``train`` in a subprocess; return its wall time, exit code and progress-event times."""
    cmd = [sys.executable, "-m", "WeakTumorSegLib", "train", "--data", str(data), "--out", str(out),
           "--run-dir", str(run_dir), "--preset", args.preset, "--device", args.device,
           "--threads", str(args.threads), "--progress", "json"]
    if config is not None:
        cmd += ["--config", str(config)]
    if args.geometry is not None:
        cmd += ["--geometry", str(args.geometry)]
    if args.resume:
        cmd.append("--resume")
    print("running: " + " ".join(cmd), flush=True)
    first_seen: dict[str, float] = {}
    last_seen: dict[str, float] = {}
    done_event: dict = {}
    t0 = time.perf_counter()
    with subprocess.Popen(cmd, cwd=REPO_ROOT, env=thread_env(args.threads), stdout=subprocess.PIPE, text=True) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:  # JSON progress events; log lines go to stderr (shown as they come)
            now = time.perf_counter() - t0
            try:
                ev = json.loads(line)
            except json.JSONDecodeError:
                continue
            stage = str(ev.get("stage"))
            first_seen.setdefault(stage, now)
            last_seen[stage] = now
            if stage == "done":
                done_event = ev
        rc = proc.wait()
    wall = time.perf_counter() - t0
    return {"command": " ".join(cmd), "returncode": rc, "wall_s": wall,
            "data_loaded_at_s": last_seen.get("data"), "first_event_s": min(first_seen.values(), default=None),
            "done_event": done_event}


def read_stage_times(bundle: Path | None, run_dir: Path | None) -> dict:
    """Per-stage seconds from ``bundle.json`` (``training.stage_seconds``) and from the run
    directory's ``done.json`` files (which also time the ``bundle`` stage), with the config."""
    out: dict = {"stages": {}, "source": {}}
    config = None
    if bundle is not None and (bundle / "bundle.json").is_file():
        cfg = json.loads((bundle / "bundle.json").read_text())
        training = cfg.get("training", {})
        out["bundle_name"] = cfg.get("name")
        out["preset"] = training.get("preset")
        out["slices"] = training.get("slices")
        out["world_size"] = training.get("world_size")
        out["metrics"] = cfg.get("metrics")
        config = training.get("config")
        for stage, sec in (training.get("stage_seconds") or {}).items():
            out["stages"][stage] = float(sec)
            out["source"][stage] = "bundle.json"
    order = list(library_stages())
    if run_dir is not None and (run_dir / "stages").is_dir():
        if config is None and (run_dir / "config.json").is_file():
            config = json.loads((run_dir / "config.json").read_text())
            out.setdefault("preset", config.get("preset"))
        found = sorted((d for d in (run_dir / "stages").iterdir() if (d / "done.json").is_file()),
                       key=lambda d: (d / "done.json").stat().st_mtime)
        for sdir in found:
            info = json.loads((sdir / "done.json").read_text())
            if "seconds" in info:
                out["stages"][sdir.name] = float(info["seconds"])  # 2 decimals, bundle.json rounds to 1
                out["source"][sdir.name] = "done.json"
        # bundle.json records 0.0 for a stage that did not run (e.g. disabled by the config): without
        # a done.json, such a stage is reported as not run rather than as taking no time
        for stage in [s for s, src in out["source"].items() if src == "bundle.json"]:
            if out["stages"][stage] == 0.0 and not (run_dir / "stages" / stage / "done.json").is_file():
                del out["stages"][stage], out["source"][stage]
    order += [s for s in out["stages"] if s not in order]
    if config:
        out["epochs"] = {s: config[sec].get("epochs") for s in order
                         if (sec := epoch_section(s)) and isinstance(config.get(sec), dict)}
    out["stages"] = {s: out["stages"][s] for s in order if s in out["stages"]}
    out["missing_stages"] = [s for s in order if s not in out["stages"]]
    out["stage_sum_s"] = sum(out["stages"].values())
    return out


def report(res: dict) -> str:
    times = res["times"]
    total = times["stage_sum_s"]
    lines = []
    if res.get("load_average_start") is not None:
        lines.append(f"load average at start {res['load_average_start']}, at end {res.get('load_average_end')}")
    if res.get("note"):
        lines.append("NOTE: " + res["note"])
    lines.append(f"preset {times.get('preset') or '-'}; bundle {res.get('bundle')}; run dir {res.get('run_dir')}")
    rows = []
    for stage, sec in times["stages"].items():
        epochs = times.get("epochs", {}).get(stage)
        rows.append([stage, f"{sec:.1f}", f"{100 * sec / total:.0f}%" if total else "-",
                     epochs if epochs else "", f"{sec / epochs:.1f}" if epochs else ""])
    rows.append(["sum of stages", f"{total:.1f}", "100%" if total else "-", "", ""])
    run = res.get("run")
    if run:
        rows.append(["wall (process)", f"{run['wall_s']:.1f}", "", "", ""])
        rows.append(["outside stages", f"{run['wall_s'] - total:.1f}", "", "", ""])
        if run.get("data_loaded_at_s") is not None:
            rows.append(["  start + reading cohort", f"{run['data_loaded_at_s']:.1f}", "", "", ""])
    lines.append(table(rows, ["stage", "seconds", "share", "epochs", "s/epoch"]))
    if not times["stages"]:
        lines.append("no stage times recorded (training.stage_seconds in bundle.json, stages/*/done.json in the run "
                     "directory): was this bundle made by `weaktumorseg train`?")
    elif times["missing_stages"]:
        lines.append("stages without a recorded time (not run, not finished or not configured): " + ", ".join(times["missing_stages"]))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    res: dict = {"benchmark": "train", "threads": args.threads, "device": args.device}
    if args.from_bundle is not None or args.read_run_dir:
        bundle = args.from_bundle
        run_dir = args.run_dir
        if bundle is not None and run_dir is None:
            guess = bundle.with_name(bundle.name + ".run")
            run_dir = guess if guess.is_dir() else None
        if bundle is not None and not (bundle / "bundle.json").is_file():
            raise SystemExit(f"{bundle}: no bundle.json")
        if bundle is None and not (run_dir / "stages").is_dir():
            raise SystemExit(f"{run_dir}: not a run directory (no stages/)")
        res.update({"mode": "recorded", "bundle": str(bundle) if bundle else None,
                    "run_dir": str(run_dir) if run_dir else None,
                    "times": read_stage_times(bundle, run_dir)})
        print(report(res))
        write_json(args.json, res)
        return 0

    load_start = load_average()
    res.update({"mode": "run", "machine": machine_info(), "load_average_start": load_start})
    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
        config = args.config
        if args.phantoms is not None:
            shape = tuple(int(s) for s in args.phantom_shape.split(","))
            data = make_phantom_cohort(Path(tmp) / "cohort", args.phantoms, shape)  # type: ignore[arg-type]
            if config is None:
                config = Path(tmp) / "phantom_config.json"
                config.write_text(json.dumps(PHANTOM_CONFIG, indent=1))
            res["phantoms"] = {"count": args.phantoms, "shape": list(shape), "config": PHANTOM_CONFIG
                               if args.config is None else str(args.config)}
        else:
            data = args.data
        out = args.out or Path(tmp) / "bundle"
        if out.exists() and not args.resume:
            raise SystemExit(f"{out} already exists; choose another --out (or --resume)")
        run_dir = args.run_dir or out.with_name(out.name + ".run")
        print(f"load average {load_start}; {args.threads} threads; device {args.device}", flush=True)
        run = run_training(args, data, out, run_dir, config)
        temporary = " (temporary, deleted)" if args.out is None else ""
        res.update({"data": str(data), "bundle": f"{out}{temporary}", "run_dir": f"{run_dir}{temporary}", "run": run,
                    "times": read_stage_times(out, run_dir), "load_average_end": load_average(),
                    "note": busy_note(load_start)})
    print()
    print(report(res))
    write_json(args.json, res)
    if run["returncode"] != 0:
        print(f"training failed with exit code {run['returncode']}", file=sys.stderr)
        return run["returncode"]
    return 0


if __name__ == "__main__":
    sys.exit(main())

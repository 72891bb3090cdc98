"""Benchmark (a): wall time and throughput of ``weaktumorseg segment``.

For each case (the shipped sample patient in ``Resources/SampleData/`` and the BraTS case(s) in
``../shared/data/brats_samples`` beside the repository) it measures, with a fixed number of CPU threads:

* **CLI**: the whole ``python -m WeakTumorSegLib segment ...`` process, end to end (interpreter
  start, imports, bundle loading and verification, reading, inference, writing), median of
  ``--repeats`` runs after one untimed warm-up run;
* **in-process**: ``Bundle.load``, ``read_channels`` and ``inference.pipeline.segment_arrays`` (the model
  already loaded), each the median of ``--repeats`` runs (``segment_arrays`` after a warm-up),
  with the per-stage times ``segment_arrays`` reports;
* **FLOPs**: the matrix-multiply and convolution FLOPs of the forward passes one
  ``segment_arrays`` run actually executes (``torch.utils.flop_counter.FlopCounterMode``; gated-out
  patches cost nothing; element-wise ops, pooling, normalisation and resampling are not
  counted), per stage and in total, divided by the median times: achieved GFLOP/s, compared
  with the machine's measured float32 ``torch.mm`` peak.

Run from the repository root: ``python benchmarks/bench_segment.py --json out.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import (BRATS_CHANNELS, REPO_ROOT, busy_note, channel_files, load_average, machine_info, matmul_peak,
                     patient_samples, set_threads, summary, table, thread_env, timed, write_json)

DEFAULT_BRATS = REPO_ROOT.parent / "shared" / "data" / "brats_samples"  # ../shared/data/brats_samples
STAGES = ("preprocess", "classify", "segment", "convert", "seeds", "postprocess")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] + " See benchmarks/README.md.")
    p.add_argument("--bundle", type=Path, default=None,
                   help="model bundle folder (default: the shipped default bundle, default_bundle_dir())")
    p.add_argument("--sample", type=Path, action="append", default=None,
                   help="sample case folder(s) with <id>_<channel>.nii.gz files "
                        "(default: the real-patient folders of Resources/SampleData/, not PHANTOM_*)")
    p.add_argument("--brats", type=Path, default=DEFAULT_BRATS,
                   help=f"folder of BraTS case folders (*-t2f/-t1n/-t1c/-t2w.nii.gz; default {DEFAULT_BRATS}); "
                        "skipped with a message when absent")
    p.add_argument("--no-brats", action="store_true", help="skip the BraTS case(s)")
    p.add_argument("--no-cli", action="store_true", help="skip the end-to-end CLI timing")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per measurement, median reported (default 5)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads for torch and the CLI (default 2)")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]")
    p.add_argument("--seeds", action="store_true", help="also compute RISE seeds (segment --seeds)")
    p.add_argument("--matmul-size", type=int, default=2048, help="n of the n x n float32 torch.mm peak (default 2048)")
    p.add_argument("--json", type=Path, default=None, help="write all results to this JSON file")
    args = p.parse_args(argv)
    if args.repeats < 1 or args.threads < 1:
        p.error("--repeats and --threads must be at least 1")
    return args


def find_cases(args: argparse.Namespace) -> tuple[list[tuple[str, str, dict[str, Path]]], list[str]]:
    """``(kind, case id, {channel: path})`` for every case to run, and messages about skipped ones."""
    cases, notes = [], []
    samples = args.sample or patient_samples()
    if not samples:
        notes.append("no sample folder found under Resources/SampleData/")
    for folder in samples:
        cases.append(("sample", Path(folder).name, channel_files(Path(folder))))
    if args.no_brats:
        notes.append("BraTS case skipped (--no-brats)")
    elif not args.brats.is_dir():
        notes.append(f"BraTS case skipped: {args.brats} not found")
    else:
        folders = [d for d in sorted(args.brats.iterdir()) if d.is_dir()]
        if not folders:
            notes.append(f"BraTS case skipped: no case folder in {args.brats}")
        for folder in folders:
            cases.append(("brats", folder.name, channel_files(folder, BRATS_CHANNELS)))
    return cases, notes


def cli_runs(bundle_dir: Path, paths: dict[str, Path], name: str, args: argparse.Namespace, out: Path) -> dict:
    """Time ``python -m WeakTumorSegLib segment`` end to end: one warm-up run, then ``--repeats``."""
    cmd = [sys.executable, "-m", "WeakTumorSegLib", "segment", "--bundle", str(bundle_dir), "--out", str(out),
           "--name", name, "--overwrite", "--progress", "none", "--quiet", "--device", args.device,
           "--threads", str(args.threads)]
    for channel, path in paths.items():
        cmd += ["-c", f"{channel}={path}"]
    if args.seeds:
        cmd.append("--seeds")
    env = thread_env(args.threads)
    walls, reported = [], []
    for i in range(args.repeats + 1):
        t = time.perf_counter()
        proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t
        if proc.returncode != 0:
            raise RuntimeError(f"segment failed (exit {proc.returncode}): {proc.stderr.strip()[-500:]}")
        if i == 0:
            continue  # warm-up: file cache, .pyc files
        walls.append(wall)
        reported.append(json.loads((out / f"{name}_report.json").read_text())["timings_s"])
    in_cli = [r["total"] for r in reported]
    return {"command": " ".join(cmd), "wall": summary(walls),
            "reported_total": summary(in_cli),
            "startup_and_imports_median_s": statistics.median(w - r for w, r in zip(walls, in_cli, strict=True)),
            "reported_stages_median_s": {k: statistics.median(r[k] for r in reported) for k in reported[0]}}


def count_flops(bundle, channels: dict, device: str, seeds: bool) -> dict[str, int]:
    """FLOPs of one ``segment_arrays`` run, per stage (split at the progress callbacks) and in total."""
    from torch.utils.flop_counter import FlopCounterMode

    from WeakTumorSegLib.inference.pipeline import segment_arrays

    starts: dict[str, int] = {}
    with FlopCounterMode(display=False) as counter:
        def progress(stage: str, done: int, total: int) -> None:
            if stage not in starts:
                starts[stage] = counter.get_total_flops()

        segment_arrays(bundle, channels, device, seeds=seeds, progress=progress)
        total = counter.get_total_flops()
    order = list(starts)
    flops = {s: (starts[order[i + 1]] if i + 1 < len(order) else total) - starts[s] for i, s in enumerate(order)}
    flops["total"] = total
    return flops


def run_case(kind: str, case: str, paths: dict[str, Path], bundle_dir: Path, args: argparse.Namespace,
             peak_gflops: float, workdir: Path) -> dict:
    import numpy as np

    from WeakTumorSegLib.bundle.load import Bundle
    from WeakTumorSegLib.inference.pipeline import segment_arrays
    from WeakTumorSegLib.io.images import read_channels

    reps = args.repeats
    load_s, bundle = timed(lambda: Bundle.load(bundle_dir), reps, warmup=0)
    bundle.to(args.device)
    missing = [c for c in bundle.channels if c not in paths]
    if missing:
        return {"kind": kind, "case": case, "skipped": f"bundle '{bundle.name}' needs {', '.join(bundle.channels)}; "
                f"case has {', '.join(paths) or 'no channel'} (missing {', '.join(missing)})"}
    used = {c: paths[c] for c in bundle.channels}
    read_s, volume = timed(lambda: read_channels(used), reps, warmup=0)
    shape = next(iter(volume.channels.values())).shape
    stage_runs: list[dict] = []

    def one() -> object:
        res = segment_arrays(bundle, volume.channels, args.device, seeds=args.seeds)
        stage_runs.append(res.timings)
        return res

    print(f"  {kind} {case}: in-process segment_arrays x{reps} (+1 warm-up) ...", flush=True)
    seg_s, result = timed(one, reps, warmup=1, device=args.device)
    stage_runs = stage_runs[1:]
    stage_med = {k: statistics.median(r[k] for r in stage_runs) for k in stage_runs[0]}
    print(f"  {kind} {case}: counting FLOPs ...", flush=True)
    flops = count_flops(bundle, volume.channels, args.device, args.seeds)
    z = int(shape[0])
    med = statistics.median(seg_s)
    out = {
        "kind": kind, "case": case, "bundle": bundle.name, "bundle_path": str(bundle_dir),
        "channels": {c: str(p) for c, p in used.items()}, "shape_zyx": list(map(int, shape)), "slices": z,
        "counts": result.counts, "tumor_voxels": int(np.asarray(result.mask).sum()),
        "in_process": {
            "bundle_load": summary(load_s), "read": summary(read_s), "segment_arrays": summary(seg_s),
            "stages_median_s": stage_med, "slices_per_s": z / med,
            "load_read_segment_median_s": statistics.median(load_s) + statistics.median(read_s) + med,
        },
        "flops": flops,
        "gflops_per_s": {"segment_arrays": flops["total"] / med / 1e9,
                         **{s: flops[s] / stage_med[s] / 1e9 for s in flops if s != "total"
                            and stage_med.get(s, 0) > 0 and flops[s] > 0}},
    }
    out["fraction_of_matmul_peak"] = out["gflops_per_s"]["segment_arrays"] / peak_gflops
    if not args.no_cli:
        print(f"  {kind} {case}: CLI x{reps} (+1 warm-up) ...", flush=True)
        cli = cli_runs(bundle_dir, used, case, args, workdir / case)
        cli["slices_per_s"] = z / cli["wall"]["median_s"]
        cli["gflops_per_s"] = flops["total"] / cli["wall"]["median_s"] / 1e9
        out["cli"] = cli
    return out


def report(results: dict) -> str:
    peak = results["matmul_peak"]
    lines = [(f"load average at start {results['load_average_start']}, at end {results['load_average_end']}; "
              f"{results['threads']} threads, device {results['device']}"),
             (f"float32 torch.mm {peak['n']}x{peak['n']} peak: {peak['gflops']:.1f} GFLOP/s (median of "
              f"{len(peak['runs_s'])})")]
    if results.get("note"):
        lines.append("NOTE: " + results["note"])
    rows = []
    for r in results["cases"]:
        if "skipped" in r:
            lines.append(f"{r['kind']} {r['case']}: skipped - {r['skipped']}")
            continue
        ip, c = r["in_process"], r["counts"]
        cli = r.get("cli")
        rows.append([f"{r['kind']} {r['case']}", "x".join(map(str, r["shape_zyx"])),
                     f"{c['patches']}/{c['gated_patches']}",
                     f"{cli['wall']['median_s']:.2f} ({cli['wall']['min_s']:.2f})" if cli else "-",
                     f"{cli['startup_and_imports_median_s']:.2f}" if cli else "-",
                     f"{ip['bundle_load']['median_s']:.3f}", f"{ip['segment_arrays']['median_s']:.2f} ({ip['segment_arrays']['min_s']:.2f})",
                     f"{cli['slices_per_s']:.2f}" if cli else "-", f"{ip['slices_per_s']:.2f}",
                     f"{r['flops']['total'] / 1e9:.1f}", f"{r['gflops_per_s']['segment_arrays']:.1f}",
                     f"{100 * r['fraction_of_matmul_peak']:.0f}%"])
    if rows:
        lines += ["", table(rows, ["case", "ZxYxX", "patches/gated", "CLI s (min)", "startup s", "load s",
                                   "segment_arrays s (min)", "CLI sl/s", "in-proc sl/s", "GFLOP", "GFLOP/s",
                                   "of peak"]),
                  "times are medians (min in brackets); sl/s = axial slices per second; GFLOP counts conv/matmul "
                  "FLOPs of the forward passes run"]
        for r in results["cases"]:
            if "skipped" in r:
                continue
            st = r["in_process"]["stages_median_s"]
            parts = [f"{s} {st[s]:.2f} s" + (f" ({r['gflops_per_s'][s]:.1f} GFLOP/s)" if s in r["gflops_per_s"] else "")
                     for s in STAGES if s in st]
            lines.append(f"  {r['kind']} {r['case']} stages (median): " + ", ".join(parts))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    load_start = load_average()
    set_threads(args.threads)
    import torch

    from WeakTumorSegLib.bundle.info import default_bundle_dir

    torch.set_num_threads(args.threads)
    bundle_dir = args.bundle or default_bundle_dir()
    print(f"load average {load_start}; bundle {bundle_dir}; {args.threads} threads; device {args.device}", flush=True)
    peak = matmul_peak(args.threads, args.matmul_size, device=args.device)
    print(f"float32 torch.mm peak: {peak['gflops']:.1f} GFLOP/s", flush=True)
    cases, notes = find_cases(args)
    for n in notes:
        print(n)
    results = {"benchmark": "segment", "machine": machine_info(), "load_average_start": load_start,
               "threads": args.threads, "device": args.device, "repeats": args.repeats, "seeds": args.seeds,
               "bundle": str(bundle_dir), "matmul_peak": peak, "skipped": notes, "cases": []}
    with tempfile.TemporaryDirectory(prefix="bench_segment_") as tmp:
        for kind, case, paths in cases:
            results["cases"].append(run_case(kind, case, paths, bundle_dir, args, peak["gflops"], Path(tmp)))
    results["load_average_end"] = load_average()
    results["note"] = busy_note(load_start)
    print()
    print(report(results))
    write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())

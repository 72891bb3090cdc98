"""Benchmark (b): RISE explanation maps, the library's batched implementation against a naive one.

* **ours**: ``WeakTumorSegLib.stages.seeds.classifier_rise`` -> ``rise_maps``: the N masks are drawn up
  front as small grids and shifts (:class:`~WeakTumorSegLib.stages.seeds.MaskSource`) and expanded to
  full size one batch at a time; each batch explains every image, and the weighted sum is
  accumulated batch by batch; the forward passes run on ``classifier.inference_copy``, on a CPU
  in chunks of ``seeds.CPU_CHUNK`` masked images spread over worker threads.
* **naive**: the structure of the original RISE code (Petsiuk, Das and Saenko, BMVC 2018;
  ``explanations.py`` of github.com/eclique/RISE): all N full-size masks are generated first and
  held as one ``N x 1 x H x W`` tensor, every image is multiplied by all of them at once (the
  ``N x C x H x W`` stack), the stack goes through the classifier in batches, and the map is
  ``sal = p^T M / (N p1)``. It uses the *same* masks as ours (``seeds.generate_masks`` with the
  same size, cells, p1 and seed, i.e. the masks of ``MaskSource`` built all at once), at the
  classifier's input resolution, and the same area resampling to patch size as
  ``classifier_rise``, so the two maps must agree (float32 vs float64 accumulation only).
* **forward** (reference): only the ``n_images x N / batch`` forward passes of the classifier as
  given on masked images: the floor of the naive implementation (ours runs a copy with
  BatchNorm folded, channels-last, and can go below it).

Every run of an implementation is a subprocess of its own (so its peak resident memory,
``ru_maxrss``, is its own) with a fixed number of CPU threads; the implementations take turns,
one round per ``--repeats``, so that a change of machine load affects all of them; times are
medians over the rounds. The images are
the ``--images`` patches of the sample patient (``Resources/SampleData/``) the default bundle's
classifier scores highest (the gated patches ``segment --seeds`` explains). Exits with status 1
when the maps differ by more than ``--tol``.

Run from the repository root: ``python benchmarks/bench_rise.py --json out.json``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import (REPO_ROOT, busy_note, channel_files, load_average, machine_info, patient_samples, set_threads,
                     summary, table, thread_env, write_json)

IMPLEMENTATIONS = ("ours", "naive", "forward")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] + " See benchmarks/README.md.")
    p.add_argument("--bundle", type=Path, default=None, help="model bundle (default: the shipped default bundle)")
    p.add_argument("--sample", type=Path, default=None,
                   help="case folder the patches come from (default: the shipped real-patient sample)")
    p.add_argument("--masks", type=int, default=1000, help="number of RISE masks N (default 1000)")
    p.add_argument("--images", type=int, default=8, help="number of patches explained together (default 8)")
    p.add_argument("--batch", type=int, default=None, help="masks per forward batch (default: the bundle's rise.batch)")
    p.add_argument("--repeats", type=int, default=5, help="rounds; each round runs every implementation once, median reported (default 5)")
    p.add_argument("--warmup", type=int, default=0, help="untimed runs in each subprocess before the timed one (default 0)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads (default 2)")
    p.add_argument("--tol", type=float, default=1e-5, help="largest allowed |ours - naive| (default 1e-5)")
    p.add_argument("--no-forward", action="store_true", help="skip the forward-passes-only reference")
    p.add_argument("--json", type=Path, default=None, help="write all results to this JSON file")
    p.add_argument("--worker", choices=IMPLEMENTATIONS, help=argparse.SUPPRESS)
    p.add_argument("--patches", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if min(args.masks, args.images, args.repeats, args.threads) < 1 or args.warmup < 0:
        p.error("--masks, --images, --repeats and --threads must be at least 1, --warmup at least 0")
    return args


def rise_config(bundle, args: argparse.Namespace):
    from WeakTumorSegLib.stages.seeds import RiseConfig

    cfg = bundle.rise(args.masks).to_dict()
    if args.batch:
        cfg["batch"] = args.batch
    return RiseConfig(**cfg)


# -- the naive implementation -------------------------------------------------------------------------

def naive_rise(classifier, patches, config):
    """RISE as in the original code: all N masks at once, each image multiplied by all of them,
    batched forward passes, ``sal = p^T M / (N p1)``; masks from ``seeds.generate_masks`` (the same
    masks as ``rise_maps``), applied at the classifier's resolution and resampled as
    ``classifier_rise`` does. With ``config.centered`` (an option of the library, not of the
    original RISE) ``mean(p) sum_i M_i`` is subtracted before the division, as ``rise_maps`` does."""
    import torch
    import torch.nn.functional as F

    from WeakTumorSegLib.stages.seeds import generate_masks

    with torch.inference_mode():
        xu = classifier.upsample_input(patches)
        n, _, h, w = xu.shape
        big_n = config.n_masks
        masks = generate_masks(big_n, (h, w), config.cells, config.p1, config.seed, xu.device)  # (N, 1, H, W)
        sal = torch.empty(n, h, w, device=xu.device)
        for i in range(n):
            stack = torch.mul(masks, xu[i:i + 1])  # (N, C, H, W): every masked image at once
            p = torch.cat([classifier.forward_upsampled(stack[j:j + config.batch])
                           for j in range(0, big_n, config.batch)])
            sal[i] = torch.matmul(p[None, :], masks.view(big_n, h * w)).view(h, w)
            if getattr(config, "centered", False):  # the library's optional control variate
                sal[i] -= p.mean() * masks.sum(0)[0]
            sal[i] /= big_n * config.p1
        if (h, w) != tuple(patches.shape[-2:]):
            sal = F.interpolate(sal[:, None], size=patches.shape[-2:], mode="area")[:, 0]
    return sal


def forward_only(classifier, patches, config):
    """The classifier forward passes both implementations run (masked images of one fixed
    batch of masks), without mask generation or the weighted sum."""
    import torch

    from WeakTumorSegLib.stages.seeds import generate_masks

    with torch.inference_mode():
        xu = classifier.upsample_input(patches)
        masks = generate_masks(config.batch, tuple(xu.shape[-2:]), config.cells, config.p1, config.seed, xu.device)
        for start in range(0, config.n_masks, config.batch):
            m = masks[: min(config.batch, config.n_masks - start)]
            for i in range(len(xu)):
                classifier.forward_upsampled(xu[i:i + 1] * m)
    return None  # nothing to compare: timing only


# -- patches ---------------------------------------------------------------------------------------------

def sample_patches(bundle, folder: Path, count: int):
    """The ``count`` patches of a case the classifier scores highest, preprocessed and tiled as
    ``segment`` does, ``(count, C, P, P)`` float32."""
    import numpy as np
    import torch

    from WeakTumorSegLib.io.images import read_channels
    from WeakTumorSegLib.preprocessing.crop import brain_bbox, plan_crop, to_working
    from WeakTumorSegLib.preprocessing.intensity import normalize_channels
    from WeakTumorSegLib.preprocessing.tiling import Tiling

    files = channel_files(folder)
    missing = [c for c in bundle.channels if c not in files]
    if missing:
        raise SystemExit(f"{folder}: no file for channel(s) {', '.join(missing)} the bundle needs")
    volume = read_channels({c: files[c] for c in bundle.channels})
    pp, stride = bundle.preprocessing, bundle.settings().stride
    stack = normalize_channels(volume.channels, bundle.channels, pp.clip_percentiles)
    crop = plan_crop(brain_bbox(stack, pp.brain_threshold), pp.inplane_scale)
    work = to_working(stack, crop)
    tiling = Tiling.plan(len(work), crop.height, crop.width, bundle.patch_size, stride)
    patches = tiling.extract(work)
    patches = patches[patches.reshape(len(patches), -1).any(axis=1)]
    with torch.inference_mode():
        p = torch.cat([bundle.models["classifier"](torch.from_numpy(patches[i:i + 64]))
                       for i in range(0, len(patches), 64)]).numpy()
    order = np.argsort(-p, kind="stable")[:count]
    if len(order) < count:
        raise SystemExit(f"{folder}: only {len(order)} tissue patches, fewer than --images {count}")
    return np.ascontiguousarray(patches[order]), p[order]


# -- worker (one implementation per process) -----------------------------------------------------------

def maxrss_mib() -> float:
    """Peak resident memory of this process so far (Linux reports KiB, macOS bytes)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


def worker(args: argparse.Namespace) -> int:
    set_threads(args.threads)
    import numpy as np
    import torch

    from WeakTumorSegLib.bundle.load import Bundle
    from WeakTumorSegLib.bundle.info import default_bundle_dir
    from WeakTumorSegLib.stages.seeds import classifier_rise

    torch.set_num_threads(args.threads)
    bundle = Bundle.load(args.bundle or default_bundle_dir())
    clf = bundle.models["classifier"]
    patches = torch.from_numpy(np.load(args.patches, allow_pickle=False))
    config = rise_config(bundle, args)
    fn = {"ours": lambda: classifier_rise(clf, patches, config),
          "naive": lambda: naive_rise(clf, patches, config),
          "forward": lambda: forward_only(clf, patches, config)}[args.worker]
    with torch.inference_mode():  # set-up memory (weights, patches, one batch's activations) as baseline
        clf.forward_upsampled(clf.upsample_input(patches[:1]).expand(config.batch, -1, -1, -1).contiguous())
    base = maxrss_mib()
    for _ in range(args.warmup):
        fn()
    seconds, maps = [], None
    for _ in range(args.repeats):
        t = time.perf_counter()
        maps = fn()
        seconds.append(time.perf_counter() - t)
    peak = maxrss_mib()
    if maps is not None:
        np.save(args.result.with_suffix(".npy"), maps.numpy())
    args.result.write_text(json.dumps({"seconds": seconds, "rss_setup_mib": base, "rss_peak_mib": peak,
                                       "torch_threads": torch.get_num_threads()}))
    return 0


def run_worker(impl: str, args: argparse.Namespace, patches: Path, tmp: Path, tag: str) -> dict:
    """One subprocess running one implementation ``--warmup`` + 1 times; its timing and memory."""
    result = tmp / f"{impl}_{tag}.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", impl, "--patches", str(patches),
           "--result", str(result), "--masks", str(args.masks), "--repeats", "1",
           "--warmup", str(args.warmup), "--threads", str(args.threads)]
    if args.bundle:
        cmd += ["--bundle", str(args.bundle)]
    if args.batch:
        cmd += ["--batch", str(args.batch)]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=thread_env(args.threads), capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{impl} worker failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
    out = json.loads(result.read_text())
    print(f"    {impl}: {out['seconds'][0]:.2f} s, peak RSS {out['rss_peak_mib']:.0f} MiB", flush=True)
    return out


def collect(runs: list[dict]) -> dict:
    """Median time over the rounds; memory of the run with the largest increase over its set-up."""
    worst = max(runs, key=lambda o: o["rss_peak_mib"] - o["rss_setup_mib"])
    return {**summary([o["seconds"][0] for o in runs]), "rss_setup_mib": round(worst["rss_setup_mib"], 1),
            "rss_peak_mib": round(max(o["rss_peak_mib"] for o in runs), 1),
            "rss_increase_mib": round(worst["rss_peak_mib"] - worst["rss_setup_mib"], 1),
            "torch_threads": runs[0]["torch_threads"]}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        return worker(args)
    load_start = load_average()
    set_threads(args.threads)
    import numpy as np
    import torch

    from WeakTumorSegLib.bundle.load import Bundle
    from WeakTumorSegLib.bundle.info import default_bundle_dir

    torch.set_num_threads(args.threads)
    bundle_dir = args.bundle or default_bundle_dir()
    bundle = Bundle.load(bundle_dir)
    folder = args.sample or next(iter(patient_samples()), None)
    if folder is None:
        raise SystemExit("no sample folder under Resources/SampleData/; pass --sample DIR")
    patches, probs = sample_patches(bundle, Path(folder), args.images)
    config = rise_config(bundle, args)
    clf = bundle.models["classifier"]
    size = tuple(int(s * clf.upsample) for s in patches.shape[-2:])
    print(f"load average {load_start}; bundle {bundle_dir}; {args.images} patches {tuple(patches.shape[1:])} of "
          f"{Path(folder).name} (p {probs.min():.2f}-{probs.max():.2f}); masks at {size[0]}x{size[1]}; "
          f"RISE {config.to_dict()}; {args.threads} threads", flush=True)
    results = {"benchmark": "rise", "machine": machine_info(), "load_average_start": load_start,
               "threads": args.threads, "bundle": str(bundle_dir), "sample": str(folder),
               "images": list(patches.shape), "mask_size": list(size), "rise": config.to_dict(),
               "repeats": args.repeats, "warmup": args.warmup, "implementations": {}}
    impls = [i for i in IMPLEMENTATIONS if not (i == "forward" and args.no_forward)]
    with tempfile.TemporaryDirectory(prefix="bench_rise_") as tmp:
        ppath = Path(tmp) / "patches.npy"
        np.save(ppath, patches)
        runs: dict[str, list[dict]] = {i: [] for i in impls}
        for rnd in range(args.repeats):  # round robin, so that a change of load hits every implementation
            order = impls[rnd % len(impls):] + impls[:rnd % len(impls)]
            print(f"  round {rnd + 1}/{args.repeats} ({', '.join(order)}), one subprocess each ...", flush=True)
            for impl in order:
                runs[impl].append(run_worker(impl, args, ppath, Path(tmp), str(rnd)))
        results["implementations"] = {i: collect(runs[i]) for i in impls}
        ours, naive = (np.load(Path(tmp) / f"{i}_{args.repeats - 1}.npy") for i in ("ours", "naive"))
    diff = float(np.abs(ours.astype(np.float64) - naive).max())
    r = results["implementations"]
    results.update({
        "max_abs_diff": diff, "tol": args.tol, "maps_equal": diff <= args.tol,
        "map_range": [float(ours.min()), float(ours.max())],
        "speed_ratio_naive_over_ours": r["naive"]["median_s"] / r["ours"]["median_s"],
        # RSS grows in whole pages: below 1 MiB the ratio means nothing, so it is left out
        "memory_ratio_naive_over_ours": (r["naive"]["rss_increase_mib"] / r["ours"]["rss_increase_mib"]
                                         if r["ours"]["rss_increase_mib"] >= 1 else None),
        "full_mask_set_mib": args.masks * size[0] * size[1] * 4 / 2**20,
        "masked_stack_mib": args.masks * patches.shape[1] * size[0] * size[1] * 4 / 2**20,
        "load_average_end": load_average(), "note": busy_note(load_start),
    })
    forwards = args.images * args.masks
    rows = [[impl, f"{v['median_s']:.2f}", f"{v['min_s']:.2f}-{v['max_s']:.2f}", f"{forwards / v['median_s']:.0f}",
             f"{v['rss_peak_mib']:.0f}", f"{v['rss_increase_mib']:.0f}"] for impl, v in r.items()]
    print()
    print(f"load average at start {load_start}, at end {results['load_average_end']}")
    if results["note"]:
        print("NOTE: " + results["note"])
    print(table(rows, ["implementation", "median s", "range s", "masked images/s", "peak RSS MiB",
                       "RSS over set-up MiB"]))
    print(f"speed ratio naive / ours: {results['speed_ratio_naive_over_ours']:.2f} "
          "(> 1: ours is faster); memory over set-up naive / ours: "
          + (f"{results['memory_ratio_naive_over_ours']:.1f}x" if results["memory_ratio_naive_over_ours"]
             else f"ours adds < 1 MiB, naive {r['naive']['rss_increase_mib']:.0f} MiB"))
    print(f"all masks {results['full_mask_set_mib']:.0f} MiB, one image's masked stack "
          f"{results['masked_stack_mib']:.0f} MiB (float32)")
    print(f"max |ours - naive| = {diff:.3g} (tolerance {args.tol:g}; map values {ours.min():.3f}..{ours.max():.3f})")
    write_json(args.json, results)
    if diff > args.tol:
        print("FAIL: the maps differ by more than the tolerance", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

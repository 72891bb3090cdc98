"""Command line: ``weaktumorseg segment|train|evaluate|pack ...`` (also ``python -m WeakTumorSegLib``).

Bad input ends with a non-zero exit and one line naming the file and the problem (the
traceback only with ``--debug``); outputs are written under temporary names and renamed into
place together, so a failed or interrupted run leaves no partial output.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from . import __version__
from .bundle import BUNDLE_FILE, WEIGHT_DTYPES, Bundle, default_bundle_dir
from .errors import InputError, WeakTumorSegError
from .fusion import MAX_SLICE_SMOOTHING
from .inference import (SLICE_COLUMNS, component_fraction, flair_trim_fraction, resolve_device, scalp_margin_mm, segment_arrays,
                        slice_smoothing)
from .io import (NEGATIVE_SEED_COLOR, POSITIVE_SEED_COLOR, SEED_TERMINOLOGY, TUMOR_COLOR, TUMOR_TERMINOLOGY,
                 OutputSet, Segment, image_stem, read_channels, write_csv, write_mask, write_segmentation)
from .progress import MODES, Progress

PROG = "weaktumorseg"


class UsageError(WeakTumorSegError):
    """Command-line arguments that do not make sense together."""


def _channel_arg(text: str) -> tuple[str, str]:
    name, sep, path = text.partition("=")
    if not sep or not name.strip() or not path.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=PATH (e.g. flair=scan_flair.nii.gz), got {text!r}")
    return name.strip().lower(), path.strip()


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None


def _threshold_arg(text: str) -> float:
    value = _number(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must lie in [0, 1], got {value}")
    return value


def _millimetres_arg(text: str) -> float:
    value = _number(text)
    if not 0.0 <= value < 1000.0:
        raise argparse.ArgumentTypeError(f"must lie in [0, 1000) mm, got {value}")
    return value


def _smoothing_arg(text: str) -> float:
    value = _number(text)
    if not 0.0 <= value <= MAX_SLICE_SMOOTHING:
        raise argparse.ArgumentTypeError(f"must lie in [0, 1/3], got {value}")
    return value


SMOOTHING_HELP = ("weight W of each neighbouring slice when the classifier's outputs are averaged along the "
                  "slice axis before the gate (W, 1 - 2W, W); 0 classifies every slice on its own, as in the "
                  "paper (default: the bundle's inference.slice_smoothing)")
TRIM_HELP = ("clear the mask's voxels whose FLAIR is below F times the median FLAIR inside the volume's mask "
             "(for FLAIR-hyperintense targets); 0 keeps every voxel, as in the paper (default: the bundle's "
             "inference.flair_trim)")
COMPONENTS_HELP = ("keep only the mask's 3D connected components with at least F times the largest one's voxels, "
                   "and fill the holes of each axial slice's mask; 0 keeps the mask as it is, as in the paper "
                   "(default: the bundle's inference.keep_components)")
SCALP_HELP = ("clear the mask within this many mm of the head's outer surface (scalp and skull); "
              "0 turns it off, as skull-stripped images need (default: the bundle's inference.scalp_margin_mm)")


def _inference_settings(bundle: Bundle, args: argparse.Namespace) -> dict:
    """The scalp margin, slice smoothing, FLAIR trim and component filter a command used, each with its source (option
    or bundle), for ``report.json`` and ``metrics.json``."""
    settings = {}
    for name, unit, resolve in (("scalp_margin", "_mm", scalp_margin_mm), ("slice_smoothing", "", slice_smoothing),
                                ("flair_trim", "", flair_trim_fraction), ("keep_components", "", component_fraction)):
        given = getattr(args, name)  # the option --<name with dashes>, None when not given
        settings[name + unit] = resolve(bundle, given)
        settings[f"{name}_source"] = "--" + name.replace("_", "-") if given is not None else "bundle"
    return settings


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line (``weaktumorseg segment: error: ...``), exit code 2."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _add_run_options(parser: argparse.ArgumentParser, progress_help: str, quiet_help: str) -> None:
    """--threads, --progress, --quiet and --debug, shared by every subcommand."""
    parser.add_argument("--threads", type=_positive_int, default=None, help="CPU threads for PyTorch")
    parser.add_argument("--progress", choices=MODES, default="bar", help=progress_help)
    parser.add_argument("--quiet", "-q", action="store_true", help=quiet_help)
    parser.add_argument("--debug", action="store_true", help="show the full traceback on errors")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG, description="Weakly supervised brain-tumour segmentation of MR volumes (Yoo et al.).")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    seg = sub.add_parser(
        "segment", help="segment one patient's MR volume with a model bundle",
        description="Segment one patient's MR volume. Writes <name>.seg.nrrd (Slicer segmentation), "
                    "<name>_mask.nii.gz, <name>_slices.csv (one row per axial slice) and <name>_report.json.")
    seg.add_argument("--channel", "-c", action="append", type=_channel_arg, required=True, metavar="NAME=PATH",
                     help="an input channel, e.g. flair=patient_flair.nii.gz; repeat for each channel the bundle "
                          "needs (channels it does not use are ignored)")
    seg.add_argument("--bundle", "-b", type=Path, default=None,
                     help="model bundle folder (default: the shipped default bundle)")
    seg.add_argument("--out", "-o", type=Path, required=True, help="output folder (created if missing)")
    seg.add_argument("--name", default=None, help="output name stem (default: the first channel's file stem)")
    seg.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda or cuda:N (default auto)")
    seg.add_argument("--threshold", type=_threshold_arg, default=None,
                     help="difference-score threshold below which a non-empty slice is flagged "
                          "(default: the bundle's, 0.2 in the paper)")
    seg.add_argument("--seeds", action="store_true",
                     help="also write the classifier's RISE positive/negative seeds as segments")
    seg.add_argument("--seed-masks", type=_positive_int, default=None,
                     help="number of RISE masks for --seeds (default: the bundle's)")
    seg.add_argument("--scalp-margin", type=_millimetres_arg, default=None, metavar="MM", help=SCALP_HELP)
    seg.add_argument("--slice-smoothing", type=_smoothing_arg, default=None, metavar="W", help=SMOOTHING_HELP)
    seg.add_argument("--flair-trim", type=_threshold_arg, default=None, metavar="F", help=TRIM_HELP)
    seg.add_argument("--keep-components", type=_threshold_arg, default=None, metavar="F", help=COMPONENTS_HELP)
    seg.add_argument("--overwrite", action="store_true", help="replace existing output files")
    _add_run_options(seg, progress_help="bar: progress bars on stderr (default); json: one JSON object per line "
                                        "on stdout (stage, done, total); none: no progress",
                     quiet_help="no progress and no summary (errors still shown)")
    seg.set_defaults(func=cmd_segment)

    tr = sub.add_parser(
        "train", help="train a model bundle from slice-level labels (paper 000, stage by stage)",
        description="Train a bundle from slice labels only. Each stage checkpoints into the run directory "
                    "(default: <out>.run beside the bundle); --resume continues a killed run. Under torchrun "
                    "the stages train with DistributedDataParallel.")
    tr.add_argument("--data", type=Path, required=True,
                    help="cohort folder (one sub-folder per patient: <id>_<channel>.nii.gz, optional <id>_seg.nii.gz "
                         "and <id>_slice_labels.csv) or a manifest CSV (patient, one column per channel, mask, labels)")
    tr.add_argument("--out", "-o", type=Path, required=True, help="bundle folder to write")
    tr.add_argument("--preset", default="default", help="paper, default or tiny (default: default)")
    tr.add_argument("--config", type=Path, default=None, help="JSON file overriding any preset value")
    tr.add_argument("--channels", default=None,
                    help="comma-separated channel names, FLAIR included (default: the preset's flair,t1,t1ce)")
    tr.add_argument("--run-dir", type=Path, default=None, help="run directory (default: <out>.run)")
    tr.add_argument("--resume", action="store_true", help="continue the run in the run directory")
    tr.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    _add_run_options(tr, progress_help="bar (default), json or none", quiet_help="no progress and no log lines")
    tr.set_defaults(func=cmd_train)

    ev = sub.add_parser(
        "evaluate", help="evaluate a bundle against ground-truth masks (paper 000 Tables 2-6, C.1)",
        description="Segment patients with ground-truth masks and write metrics.json, tables.md, per_volume.csv, "
                    "per_slice.csv, filter_curve.csv and filter_curve.png into --out: classifier AUC / "
                    "sensitivity / specificity, seed overlap, Dice of every model and baseline (per-volume 3D, "
                    "per-slice with empty-vs-empty = 1, per-slice over tumour slices), the difference-score "
                    "filter curve and its correlation with Dice.")
    ev.add_argument("--bundle", "-b", type=Path, default=None,
                    help="model bundle folder (default: the shipped default bundle)")
    ev.add_argument("--data", type=Path, required=True,
                    help="cohort folder (<id>/<id>_<channel>.nii.gz with <id>_seg.nii.gz) or a manifest CSV "
                         "(patient, one column per channel, mask, optional labels); masks are required")
    ev.add_argument("--out", "-o", type=Path, required=True, help="output folder (created if missing)")
    who = ev.add_mutually_exclusive_group()
    who.add_argument("--patients", default=None,
                     help="'all' or comma-separated patient ids (default: the bundle's validation split when "
                          "--data is the bundle's training data, else all patients)")
    who.add_argument("--split", choices=("val", "train"), default=None,
                     help="the patients of the split recorded in the bundle")
    ev.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda or cuda:N (default auto)")
    seeds = ev.add_mutually_exclusive_group()
    seeds.add_argument("--seed-masks", type=_positive_int, default=None,
                       help="number of RISE masks for the seed overlap metric (default: the bundle's)")
    seeds.add_argument("--no-seeds", action="store_true", help="skip the (slow) RISE seed overlap metric")
    ev.add_argument("--residual-threshold", type=_threshold_arg, default=None,
                    help="threshold of the residual baseline (default: the bundle's baselines.residual.threshold, "
                         "chosen on its training split; never choose it on the evaluated patients)")
    ev.add_argument("--scalp-margin", type=_millimetres_arg, default=None, metavar="MM", help=SCALP_HELP)
    ev.add_argument("--slice-smoothing", type=_smoothing_arg, default=None, metavar="W", help=SMOOTHING_HELP)
    ev.add_argument("--flair-trim", type=_threshold_arg, default=None, metavar="F", help=TRIM_HELP)
    ev.add_argument("--keep-components", type=_threshold_arg, default=None, metavar="F", help=COMPONENTS_HELP)
    ev.add_argument("--overwrite", action="store_true", help="replace existing output files")
    _add_run_options(ev, progress_help="bar: progress on stderr (default); json: one JSON object per line on stdout; "
                                       "none", quiet_help="no progress and no summary (errors still shown)")
    ev.set_defaults(func=cmd_evaluate)

    pk = sub.add_parser(
        "pack", help="copy a bundle with smaller weights (float16) and only the models it needs",
        description="Copy a trained bundle for shipping: weights stored as float16 (half the size; loading casts "
                    "them back to float32) and, with --models, only the inference models plus the ones listed "
                    "(e.g. segmenter0 for evaluate's Table 4). Weights are verified before they are copied.")
    pk.add_argument("--bundle", "-b", type=Path, required=True, help="bundle folder to copy")
    pk.add_argument("--out", "-o", type=Path, required=True, help="new bundle folder")
    pk.add_argument("--dtype", choices=tuple(WEIGHT_DTYPES), default="float16",
                    help="storage type of the weights (default float16)")
    pk.add_argument("--models", default=None,
                    help="comma-separated optional models to keep besides the inference models (classifier, "
                         "converter, segmenter_us, segmenter_os), e.g. segmenter0,baseline_seed_only; "
                         "'none' keeps only the inference models (default: keep all)")
    pk.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    pk.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    pk.set_defaults(func=cmd_pack)
    return parser


def cmd_pack(args: argparse.Namespace) -> int:
    from .bundle import pack_bundle

    if args.out.resolve() == args.bundle.resolve():
        raise UsageError("--out must differ from --bundle")
    models = None
    if args.models is not None:
        models = [] if args.models.strip().lower() == "none" else [m.strip() for m in args.models.split(",") if m.strip()]
    out = pack_bundle(args.bundle, args.out, models, args.dtype, overwrite=args.overwrite)
    size = sum(f.stat().st_size for f in out.iterdir())
    print(f"wrote {out} ({size / 2**20:.1f} MiB)")
    return 0


def _warn_training(bundle: Bundle, note: Callable[[str], None]) -> None:
    """Repeat the warnings its training run recorded about a bundle (a failed run may still have
    written one)."""
    for line in bundle.training_warnings:
        note(f"bundle '{bundle.name}' may not work: its training warned: {line}")


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .dataset import discover
    from .evaluate import (OUTPUTS, EvaluateOptions, build_metrics, load_evaluation_bundle, require_masks,
                           residual_setting, run_evaluation, select_cases, write_outputs)

    t_start = time.perf_counter()
    quiet = args.quiet
    progress = Progress("none" if quiet else args.progress)
    note = (lambda msg: None) if quiet else (lambda msg: print(f"{PROG}: note: {msg}", file=sys.stderr))
    if args.out.exists() and not args.out.is_dir():
        raise UsageError("output path exists and is not a folder", args.out)
    if not args.overwrite:
        for fname in OUTPUTS.values():
            if (args.out / fname).exists():
                raise UsageError("output already exists; pass --overwrite to replace it", args.out / fname)
    bundle = load_evaluation_bundle(args.bundle if args.bundle is not None else default_bundle_dir())
    _warn_training(bundle, note)
    if not args.data.exists():
        raise InputError("data path does not exist", args.data)
    cases = discover(args.data, bundle.channels)
    cases, source, notes = select_cases(cases, bundle.config, args.data, args.patients, args.split, bundle.path)
    require_masks(cases, args.data)
    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    threshold, threshold_source, median = residual_setting(bundle, args.residual_threshold)
    options = EvaluateOptions(seeds=not args.no_seeds, seed_masks=args.seed_masks, residual_threshold=threshold,
                              residual_threshold_source=threshold_source, residual_median=median,
                              scalp_margin=args.scalp_margin, smoothing=args.slice_smoothing,
                              trim=args.flair_trim, components=args.keep_components)
    for msg in notes:
        note(msg)
    bundle.to(device)

    def done_case(i: int, n: int, ev) -> None:
        progress("evaluate", i, n)
        progress.event(stage="patient", patient=ev.id, done=i, total=n, seconds=round(ev.seconds, 2))
        for msg in ev.notes:
            note(msg)

    progress("evaluate", 0, len(cases))
    evaluations = run_evaluation(bundle, cases, device, options, on_case=done_case)
    rise = bundle.rise.to_dict()
    if args.seed_masks is not None:
        rise["n_masks"] = int(args.seed_masks)
    inf = bundle.inference
    configuration = {
        "command": "evaluate", "data": str(args.data.resolve()), "patients": [c.id for c in cases],
        "patients_source": source, "device": str(device), "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(), "seeds": options.seeds, "rise": rise,
        "torch_seed": options.torch_seed, "gate_threshold": inf["gate_threshold"],
        "mask_threshold": inf["mask_threshold"], "difference_threshold": inf["filter_threshold"],
        "undecided_margin": inf["undecided_margin"], "filter_thresholds": list(options.filter_thresholds),
        **_inference_settings(bundle, args),
        "residual": {"threshold": threshold, "threshold_source": threshold_source, "median": median,
                     "healthy": "converter on every tissue patch (no classifier gate), positive part of "
                                "FLAIR - healthy on the normalised [0, 1] scale, median per axial slice"},
        "slices": "every axial slice of every volume",
    }
    progress("write", 0, len(OUTPUTS))
    metrics = build_metrics(evaluations, bundle, options, configuration,
                            {"notes": notes, "outputs": dict(OUTPUTS),
                             "timings_s": {"total": round(time.perf_counter() - t_start, 2),
                                           "per_patient": {e.id: round(e.seconds, 2) for e in evaluations}}})
    written = write_outputs(args.out, metrics, evaluations)
    progress("write", len(OUTPUTS), len(OUTPUTS))
    progress.close()
    seg = metrics["segmentation"]["fused"]
    clf = metrics["classifier"]["from_masks"]
    progress.event(stage="done", outputs={k: str(args.out / v) for k, v in OUTPUTS.items()},
                   fused=seg, classifier=clf)
    if not quiet and args.progress != "json":
        fmt = lambda x: "n/a" if x is None else f"{x:.4f}"  # noqa: E731
        print(f"Evaluated bundle '{bundle.name}' on {len(cases)} patients ({source}) in "
              f"{time.perf_counter() - t_start:.1f} s: classifier AUC {fmt(clf['auc'])}; fused Dice "
              f"{fmt(seg['per_volume_3d'])} per volume (3D, tumour-bearing volumes), "
              f"{fmt(seg['per_slice_paper'])} per slice (paper, empty-vs-empty = 1), "
              f"{fmt(seg['per_slice_tumour'])} per tumour slice.")
        for path in written:
            print(f"  {path}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from .presets import resolve_config
    from .train import TrainingRun, setup_distributed

    overrides = {}
    if args.channels:
        names = [c.strip().lower() for c in args.channels.split(",") if c.strip()]
        overrides["channels"] = names
        if "flair" not in names:
            raise UsageError("--channels must include flair (the converter and the difference score use it)")
    config = resolve_config(args.preset, args.config, overrides)
    run_dir = args.run_dir or args.out.with_name(args.out.name + ".run")
    if args.out.exists() and not args.resume:
        raise UsageError("bundle folder already exists; choose another --out or pass --resume", args.out)
    if not args.data.exists():
        raise UsageError("data not found", args.data)
    if args.threads:
        torch.set_num_threads(args.threads)
    dist = setup_distributed(args.device)
    quiet = args.quiet
    progress = Progress("none" if quiet or not dist.main else args.progress)

    def log(msg: str) -> None:
        if not quiet and dist.main:
            progress.close()
            print(msg, file=sys.stderr if args.progress == "json" else sys.stdout, flush=True)

    run = TrainingRun(run_dir, config, args.data, args.out, dist=dist, resume=args.resume, log=log,
                      progress=progress)
    path = run.run()
    progress.close()
    progress.event(stage="done", bundle=str(path), stage_seconds={k: round(v, 1) for k, v in run.timings.items()})
    return 0


def _match_channels(given: Sequence[tuple[str, str]], bundle: Bundle) -> tuple[dict[str, str], list[str]]:
    """Map the bundle's channels to the given paths; return (paths, notes about ignored channels)."""
    seen: dict[str, str] = {}
    for name, path in given:
        if name in seen:
            raise UsageError(f"channel '{name}' is given twice ({seen[name]} and {path})")
        seen[name] = path
    needed = bundle.channels
    missing = [c for c in needed if c not in seen]
    if missing:
        raise InputError(f"bundle '{bundle.name}' needs channels {', '.join(needed)}; not given: "
                         f"{', '.join(missing)} (pass --channel NAME=PATH for each)", bundle.path)
    notes = [f"channel '{n}' ({p}) is ignored: bundle '{bundle.name}' uses {', '.join(needed)}"
             for n, p in seen.items() if n not in needed]
    return {c: seen[c] for c in needed}, notes


def cmd_segment(args: argparse.Namespace) -> int:
    t_start = time.perf_counter()
    quiet = args.quiet
    progress = Progress("none" if quiet else args.progress)
    note = (lambda msg: None) if quiet else (lambda msg: print(f"{PROG}: note: {msg}", file=sys.stderr))

    bundle_dir = args.bundle if args.bundle is not None else default_bundle_dir()
    t = time.perf_counter()
    bundle = Bundle.load(bundle_dir)
    t_load = time.perf_counter() - t
    _warn_training(bundle, note)
    paths, notes = _match_channels(args.channel, bundle)
    name = args.name or image_stem(args.channel[0][1])
    if not name or "/" in name or name.startswith("."):
        raise UsageError(f"invalid output name {name!r}; pass --name")
    outputs = {"segmentation": f"{name}.seg.nrrd", "mask": f"{name}_mask.nii.gz",
               "slices": f"{name}_slices.csv", "report": f"{name}_report.json"}
    if args.out.exists() and not args.out.is_dir():
        raise UsageError("output path exists and is not a folder", args.out)
    if not args.overwrite:
        for fname in outputs.values():
            if (args.out / fname).exists():
                raise UsageError("output already exists; pass --overwrite to replace it", args.out / fname)
    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)

    t = time.perf_counter()
    volume = read_channels(paths)
    t_read = time.perf_counter() - t
    progress("read", len(paths), len(paths))
    notes += volume.notes
    for msg in notes:
        note(msg)

    bundle.to(device)
    result = segment_arrays(bundle, volume.channels, device, threshold=args.threshold, seeds=args.seeds,
                            seed_masks=args.seed_masks, progress=progress, spacing=volume.geometry.inplane_spacing,
                            scalp_margin=args.scalp_margin, smoothing=args.slice_smoothing, trim=args.flair_trim,
                            components=args.keep_components)

    progress("write", 0, len(outputs))
    t = time.perf_counter()
    geom = volume.geometry
    segments = [Segment("Tumor", result.mask, TUMOR_COLOR, TUMOR_TERMINOLOGY)]
    if args.seeds:
        segments += [Segment("Positive seeds", result.positive_seeds, POSITIVE_SEED_COLOR, SEED_TERMINOLOGY),
                     Segment("Negative seeds", result.negative_seeds, NEGATIVE_SEED_COLOR, SEED_TERMINOLOGY)]
    voxel_ml = float(np.prod(geom.spacing)) / 1000.0
    with OutputSet(args.out) as out:
        write_segmentation(segments, geom, out.path(outputs["segmentation"]))
        write_mask(result.mask, geom, out.path(outputs["mask"]))
        write_csv(result.slice_rows(), SLICE_COLUMNS, out.path(outputs["slices"]))
        timings = {"load_bundle": t_load, "read": t_read, **result.timings,
                   "write": time.perf_counter() - t}
        timings["total"] = time.perf_counter() - t_start
        report = {
            "version": __version__,
            "bundle": {"name": bundle.name, "path": str(bundle.path.resolve()),
                       "bundle_json_sha256": hashlib.sha256((bundle.path / BUNDLE_FILE).read_bytes()).hexdigest(),
                       "channels": bundle.channels},
            "inputs": {c: str(Path(p).resolve()) for c, p in paths.items()},
            "device": str(device),
            "torch_threads": torch.get_num_threads(),
            "platform": platform.platform(),
            "threshold": result.threshold,
            "threshold_source": "--threshold" if args.threshold is not None else "bundle",
            "seeds": bool(args.seeds),
            **_inference_settings(bundle, args),
            "geometry": {"size": list(geom.size), "spacing": list(geom.spacing), "origin": list(geom.origin),
                         "direction": list(geom.direction)},
            "counts": {**result.counts, "tumor_volume_ml": round(result.counts.get("tumor_voxels", 0) * voxel_ml, 3)},
            "timings_s": {k: round(v, 4) for k, v in timings.items()},
            "notes": notes,
            "outputs": outputs,
        }
        Path(out.path(outputs["report"])).write_text(json.dumps(report, indent=2) + "\n")
        written = out.commit()
    progress("write", len(outputs), len(outputs))
    progress.close()
    progress.event(stage="done", outputs={k: str(args.out / v) for k, v in outputs.items()},
                   counts=report["counts"], timings_s=report["timings_s"])
    if not quiet and args.progress != "json":
        c = report["counts"]
        print(f"Segmented {name} with bundle '{bundle.name}' on {device} in {timings['total']:.1f} s: "
              f"{c['tumor_slices']} of {c['slices']} slices with tumour ({c['tumor_volume_ml']} ml), "
              f"{c['flagged_slices']} flagged for review (threshold {result.threshold:g})"
              + (f"; scalp margin {result.scalp_margin:g} mm (--scalp-margin 0 for skull-stripped images)."
                 if result.scalp_margin else "."))
        for path in written:
            print(f"  {path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # a closed pipe is reported here, inside the handlers below
        return code
    except WeakTumorSegError as exc:
        if getattr(args, "debug", False):
            raise
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; no outputs were written", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader of stdout went away (``... | head -1``): stop quietly, as on SIGPIPE
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except MemoryError:
        print(f"{PROG}: error: out of memory (try --device cpu, or a machine with more memory)", file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 - one readable line unless --debug
        if getattr(args, "debug", False):
            raise
        first = str(exc).splitlines()[0] if str(exc) else ""
        print(f"{PROG}: error: unexpected {type(exc).__name__}: {first} (rerun with --debug for details)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""``weaktumorseg evaluate``: a bundle against ground-truth masks, Tables 2-6 and C.1 of Yoo et al."""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

from ..bundle.info import default_bundle_dir
from ..errors import InputError
from .arguments import (
    GEOMETRY_HELP,
    DEVICE_HELP,
    add_postprocess_options,
    add_run_options,
    fraction_arg,
    positive_int,
    postprocess_overrides,
)
from .common import check_outputs, printers, warn_training

#: what ``--help`` and the configuration say about the residual baseline's healthy FLAIR
RESIDUAL_HEALTHY = ("converter on every tissue patch (no classifier gate), positive part of FLAIR - healthy on the "
                    "normalised [0, 1] scale, median per axial slice")


HELP = "evaluate a bundle against ground-truth masks (Yoo et al., Tables 2-6 and C.1)"
DESCRIPTION = ("Segment patients with ground-truth masks and write metrics.json, tables.md, per_volume.csv, "
               "per_slice.csv, filter_curve.csv and filter_curve.png into --out: classifier AUC / "
               "sensitivity / specificity, seed overlap, Dice of every model and baseline (per-volume 3D, "
               "per-slice with empty-vs-empty = 1, per-slice over tumour slices), the difference-score "
               "filter curve and its correlation with Dice.")


def add_parser(sub) -> None:
    ev = sub.add_parser("evaluate", help=HELP, description=DESCRIPTION)
    ev.add_argument("--bundle", "-b", type=Path, default=None,
                    help="model bundle folder (default: the shipped default bundle)")
    ev.add_argument("--data", type=Path, required=True,
                    help="cohort folder (<id>/<id>_<channel>.nii.gz with <id>_seg.nii.gz) or a manifest CSV "
                         "(patient, one column per channel, mask, optional labels); masks are required")
    ev.add_argument("--out", "-o", type=Path, required=True, help="output folder (created if missing)")
    ev.add_argument("--geometry", type=Path, default=None, help=GEOMETRY_HELP)
    who = ev.add_mutually_exclusive_group()
    who.add_argument("--patients", default=None,
                     help="'all' or comma-separated patient ids (default: the bundle's validation split when "
                          "--data is the bundle's training data, else all patients)")
    who.add_argument("--split", choices=("val", "train"), default=None,
                     help="the patients of the split recorded in the bundle")
    ev.add_argument("--device", default="auto", help=DEVICE_HELP)
    seeds = ev.add_mutually_exclusive_group()
    seeds.add_argument("--seed-masks", type=positive_int, default=None,
                       help="number of RISE masks for the seed overlap metric (default: the bundle's)")
    seeds.add_argument("--no-seeds", action="store_true", help="skip the (slow) RISE seed overlap metric")
    ev.add_argument("--residual-threshold", type=fraction_arg, default=None,
                    help="threshold of the residual baseline (default: the bundle's baselines.residual.threshold, "
                         "chosen on its training split; never choose it on the evaluated patients)")
    add_postprocess_options(ev)
    ev.add_argument("--overwrite", action="store_true", help="replace existing output files")
    add_run_options(ev, progress_help="bar: progress on stderr (default); json: one JSON object per line on stdout; "
                                      "none", quiet_help="no progress and no summary (errors and warnings still shown)")
    ev.set_defaults(func=run)


def _configuration(args, cases, source, device, options, seeds, residual: dict) -> dict:
    """The evaluate configuration recorded in ``metrics.json``."""
    import torch

    settings = options.settings
    return {
        "command": "evaluate", "data": str(args.data.resolve()), "patients": [c.id for c in cases],
        "patients_source": source, "device": str(device), "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(), "seeds": options.seeds is not None,
        "rise": seeds.rise.to_dict(), "seed_method": seeds.to_dict(),
        "torch_seed": options.torch_seed, "gate_threshold": settings.gate_threshold,
        "mask_threshold": settings.mask_threshold, "difference_threshold": settings.filter_threshold,
        "undecided_margin": settings.undecided_margin, "filter_thresholds": list(options.filter_thresholds),
        **settings.report(),
        "residual": {**residual, "healthy": RESIDUAL_HEALTHY},
        "slices": "every axial slice of every volume",
    }


def _print_summary(bundle, cases, source, metrics, written, seconds: float) -> None:
    seg, clf = metrics["segmentation"]["fused"], metrics["classifier"]["from_masks"]
    fmt = lambda x: "n/a" if x is None else f"{x:.4f}"  # noqa: E731
    print(f"Evaluated bundle '{bundle.name}' on {len(cases)} patients ({source}) in {seconds:.1f} s: "
          f"classifier AUC {fmt(clf['auc'])}; fused Dice {fmt(seg['per_volume_3d'])} per volume (3D, tumour-bearing "
          f"volumes), {fmt(seg['per_slice_paper'])} per slice (empty slices count 1, as in Yoo et al.), "
          f"{fmt(seg['per_slice_tumour'])} per tumour slice.")
    final = metrics["segmentation"].get("final") or {}
    if final.get("available"):
        print(f"Final segmenter (the main mask): Dice {fmt(final['per_volume_3d'])} per volume, "
              f"{fmt(final['per_slice_paper'])} per slice, {fmt(final['per_slice_tumour'])} per tumour slice.")
    for path in written:
        print(f"  {path}")


def run(args: argparse.Namespace) -> int:
    import torch

    from ..evaluation.cases import require_masks, select_cases
    from ..evaluation.evaluate import (
        EvaluateOptions,
        build_metrics,
        load_evaluation_bundle,
        residual_setting,
        run_evaluation,
    )
    from ..evaluation.report import OUTPUTS, write_outputs
    from ..inference.device import resolve_device
    from ..io.cohort import discover

    t_start = time.perf_counter()
    progress, note, warn = printers(args)
    check_outputs(args.out, OUTPUTS.values(), args.overwrite)
    bundle = load_evaluation_bundle(args.bundle if args.bundle is not None else default_bundle_dir())
    warn_training(bundle, warn)
    settings = bundle.settings(**postprocess_overrides(args))
    if not args.data.exists():
        raise InputError("data path does not exist", args.data)
    cases = discover(args.data, bundle.channels, args.geometry)
    cases, source, notes = select_cases(cases, bundle.config, args.data, args.patients, args.split, bundle.path)
    require_masks(cases, args.data)
    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    threshold, threshold_source, median = residual_setting(bundle, args.residual_threshold)
    seeds = bundle.seeds(n_masks=args.seed_masks)
    options = EvaluateOptions(settings, None if args.no_seeds else seeds, threshold, threshold_source, median)
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
    configuration = _configuration(args, cases, source, device, options, seeds,
                                   {"threshold": threshold, "threshold_source": threshold_source, "median": median})
    progress("write", 0, len(OUTPUTS))
    metrics = build_metrics(evaluations, bundle, options, configuration,
                            {"notes": notes, "outputs": dict(OUTPUTS),
                             "timings_s": {"total": round(time.perf_counter() - t_start, 2),
                                           "per_patient": {e.id: round(e.seconds, 2) for e in evaluations}}})
    written = write_outputs(args.out, metrics, evaluations)
    progress("write", len(OUTPUTS), len(OUTPUTS))
    progress.close()
    progress.event(stage="done", outputs={k: str(args.out / v) for k, v in OUTPUTS.items()},
                   fused=metrics["segmentation"]["fused"], classifier=metrics["classifier"]["from_masks"])
    if not args.quiet and args.progress != "json":
        _print_summary(bundle, cases, source, metrics, written, time.perf_counter() - t_start)
    return 0

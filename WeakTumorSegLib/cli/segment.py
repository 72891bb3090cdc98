"""``weaktumorseg segment``: one patient's volume -> mask, segmentation file, slice table, report."""

from __future__ import annotations

import argparse
import difflib
import json
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .. import __version__
from ..bundle.info import BUNDLE_FILE, BundleInfo, default_bundle_dir, sha256_file
from ..errors import InputError, WeakTumorSegError
from ..inference.result import SegmentationResult
from ..io.atomic import OutputSet
from ..io.images import Geometry, Volume, image_stem, read_channels, write_mask
from ..io.names import (NEGATIVE_SEEDS_SEGMENT, POSITIVE_SEEDS_SEGMENT, SEED_METHODS, SLICE_COLUMNS, TUMOR_SEGMENT,
                        segment_outputs)
from ..io.segmentation import (
    NEGATIVE_SEED_COLOR,
    POSITIVE_SEED_COLOR,
    SEED_TERMINOLOGY,
    TUMOR_COLOR,
    TUMOR_TERMINOLOGY,
    Segment,
    write_segmentation,
)
from ..io.tables import write_csv
from .arguments import (
    DEVICE_HELP,
    UsageError,
    add_postprocess_options,
    add_run_options,
    channel_arg,
    fraction_arg,
    orientation_arg,
    positive_int,
    postprocess_overrides,
    spacing_arg,
)
from .common import check_outputs, printers, warn_training


def _default_channels() -> str:
    """The default bundle's channels, for the help text."""
    try:
        info = BundleInfo.read(default_bundle_dir())
    except WeakTumorSegError:
        return "no default bundle is installed: pass --bundle"
    return f"the default bundle '{info.name}' needs {', '.join(info.channels)}"


HELP = "segment one patient's MR volume with a model bundle"
DESCRIPTION = ("Segment one patient's MR volume. Writes <name>.seg.nrrd (Slicer segmentation), "
               "<name>_mask.nii.gz, <name>_slices.csv (one row per axial slice) and <name>_report.json.")


def add_parser(sub) -> None:
    seg = sub.add_parser("segment", help=HELP, description=DESCRIPTION)
    seg.add_argument("--channel", "-c", action="append", type=channel_arg, required=True, metavar="NAME=PATH",
                     help="an input channel, e.g. flair=patient_flair.nii.gz; repeat for each channel the bundle "
                          f"needs ({_default_channels()}; channels it does not use are ignored)")
    seg.add_argument("--bundle", "-b", type=Path, default=None,
                     help="model bundle folder (default: the shipped default bundle)")
    seg.add_argument("--out", "-o", type=Path, required=True, help="output folder (created if missing)")
    seg.add_argument("--name", default=None, help="output name stem (default: the first channel's file stem)")
    seg.add_argument("--device", default="auto", help=DEVICE_HELP)
    seg.add_argument("--threshold", type=fraction_arg, default=None,
                     help="difference-score threshold below which a non-empty slice is flagged "
                          "(default: the bundle's; 0.2 in Yoo et al.)")
    seg.add_argument("--seeds", action="store_true",
                     help="also write the classifier's positive/negative seeds as segments")
    seg.add_argument("--seed-method", choices=SEED_METHODS, default=None,
                     help="explanation map of --seeds: rise, superpixel, gradcam or acam (acam needs a bundle trained "
                          "with it; default: the bundle's seeds.method)")
    seg.add_argument("--seed-masks", type=positive_int, default=None,
                     help="number of RISE masks for --seeds (default: the bundle's)")
    seg.add_argument("--orientation", type=orientation_arg, default=None, metavar="CODE",
                     help="the input's true orientation when its header is wrong: where the column, row and slice "
                          "indices point, e.g. PLS (default: the header's direction)")
    seg.add_argument("--spacing", type=spacing_arg, default=None, metavar="MM",
                     help="the input's true in-plane voxel size in mm when its header is wrong: one number or "
                          "COLUMN,ROW (default: the header's)")
    add_postprocess_options(seg)
    seg.add_argument("--overwrite", action="store_true", help="replace existing output files")
    add_run_options(seg, progress_help="bar: progress bars on stderr (default); json: one JSON object per line "
                                       "on stdout (stage, done, total); none: no progress",
                    quiet_help="no progress and no summary (errors and warnings still shown)")
    seg.set_defaults(func=run)


def match_channels(given: Sequence[tuple[str, str]], bundle: BundleInfo) -> tuple[dict[str, str], list[str]]:
    """Map the bundle's channels to the given paths; return (paths, notes about ignored channels).
    A channel the bundle needs but was not given is an error that suggests a given name it may
    have been misspelt as."""
    seen: dict[str, str] = {}
    for name, path in given:
        if name in seen:
            raise UsageError(f"channel '{name}' is given twice ({seen[name]} and {path})")
        seen[name] = path
    needed = bundle.channels
    missing = [c for c in needed if c not in seen]
    unknown = [n for n in seen if n not in needed]
    if missing:
        hints = [f"'{n}' is not a channel of the bundle; did you mean '{close[0]}'?"
                 for n in unknown for close in [difflib.get_close_matches(n, missing, n=1, cutoff=0.6)] if close]
        raise InputError(f"bundle '{bundle.name}' needs channels {', '.join(needed)}; not given: "
                         f"{', '.join(missing)} (pass --channel NAME=PATH for each)"
                         + ("; " + " ".join(hints) if hints else ""), bundle.path)
    notes = [f"channel '{n}' ({seen[n]}) is ignored: bundle '{bundle.name}' uses {', '.join(needed)}"
             for n in unknown]
    return {c: seen[c] for c in needed}, notes


def _segments(result, seeds: bool) -> list[Segment]:
    segments = [Segment(TUMOR_SEGMENT, result.mask, TUMOR_COLOR, TUMOR_TERMINOLOGY)]
    if seeds:
        segments += [Segment(POSITIVE_SEEDS_SEGMENT, result.positive_seeds, POSITIVE_SEED_COLOR, SEED_TERMINOLOGY),
                     Segment(NEGATIVE_SEEDS_SEGMENT, result.negative_seeds, NEGATIVE_SEED_COLOR, SEED_TERMINOLOGY)]
    return segments


@dataclass
class _Done:
    """One finished segmentation, everything its outputs are written from."""

    args: argparse.Namespace
    bundle: BundleInfo
    paths: dict[str, str]
    device: object
    volume: Volume
    result: SegmentationResult
    notes: list[str]
    outputs: dict[str, str]
    timings: dict[str, float]
    declared: dict  #: the values --orientation and --spacing declared
    geometry: Geometry  #: the voxel grid the volume was segmented on: the header's with the declared values


def _report(done: _Done) -> dict:
    import torch

    geom, result = done.volume.geometry, done.result
    voxel_ml = float(done.geometry.spacing[0] * done.geometry.spacing[1] * done.geometry.spacing[2]) / 1000.0
    return {
        "version": __version__,
        "bundle": {"name": done.bundle.name, "path": str(done.bundle.path.resolve()),
                   "bundle_json_sha256": sha256_file(done.bundle.path / BUNDLE_FILE),
                   "channels": done.bundle.channels, "training_warnings": done.bundle.training_warnings},
        "inputs": {c: str(Path(p).resolve()) for c, p in done.paths.items()},
        "device": str(done.device),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "threshold": result.threshold,
        "threshold_source": result.settings.source("filter_threshold"),
        "seeds": bool(done.args.seeds),
        "seed_method": (done.args.seed_method or done.bundle.seeds().method) if done.args.seeds else None,
        "network": result.network,
        **result.settings.report(),
        "geometry": {"size": list(geom.size), "spacing": list(geom.spacing), "origin": list(geom.origin),
                     "direction": list(geom.direction)},
        "preprocessing": {**result.preprocessing, "declared": done.declared},
        "warnings": result.warnings,
        "counts": {**result.counts, "tumor_volume_ml": round(result.counts.get("tumor_voxels", 0) * voxel_ml, 3)},
        "timings_s": {k: round(v, 4) for k, v in done.timings.items()},
        "notes": done.notes,
        "outputs": done.outputs,
    }


def _write(done: _Done, t_start: float, progress: Callable) -> tuple[list[Path], dict]:
    """Write the four outputs together (or none of them); return them and the report."""
    outputs, result, geom = done.outputs, done.result, done.volume.geometry
    progress("write", 0, len(outputs))
    t = time.perf_counter()
    with OutputSet(done.args.out) as out:
        write_segmentation(_segments(result, done.args.seeds), geom, out.path(outputs["segmentation"]))
        write_mask(result.mask, geom, out.path(outputs["mask"]))
        write_csv(result.slice_rows(), SLICE_COLUMNS, out.path(outputs["slices"]))
        done.timings["write"] = time.perf_counter() - t
        done.timings["total"] = time.perf_counter() - t_start
        report = _report(done)
        Path(out.path(outputs["report"])).write_text(json.dumps(report, indent=2) + "\n")
        written = out.commit()
    progress("write", len(outputs), len(outputs))
    return written, report


def _summary(name: str, done: _Done, report: dict, written: list[Path]) -> None:
    c, total = report["counts"], report["timings_s"]["total"]
    margin, threshold = done.result.settings.scalp_margin_mm, done.result.threshold
    stripped = done.result.preprocessing.get("skull_stripped")
    print(f"Segmented {name} with bundle '{done.bundle.name}' on {done.device} in {total:.1f} s: "
          f"{c['tumor_slices']} of {c['slices']} slices with tumour ({c['tumor_volume_ml']} ml), "
          f"{c['flagged_slices']} flagged for review (threshold {threshold:g})"
          + (f"; scalp margin {margin:g} mm (--scalp-margin 0 for skull-stripped images)" if margin else "")
          + {True: "; the input was skull-stripped already.", False: "; brain extracted.", None: "."}[stripped])
    for path in written:
        print(f"  {path}")


def seed_settings(bundle, args: argparse.Namespace):
    """The bundle's seed settings with ``--seed-method`` and ``--seed-masks`` applied; ACAM refused on
    a bundle without its attention."""
    seeds = bundle.seeds(args.seed_method, args.seed_masks)
    if seeds.method == "acam" and "attention" not in bundle.models:
        raise InputError("--seed-method acam needs a bundle trained with seeds.method 'acam' (this one has no "
                         "attention network)", bundle.path / BUNDLE_FILE)
    return seeds


def run(args: argparse.Namespace) -> int:
    import torch

    from ..bundle.load import Bundle
    from ..inference.device import resolve_device
    from ..inference.pipeline import segment_arrays

    t_start = time.perf_counter()
    progress, note, warn = printers(args)
    t = time.perf_counter()
    bundle = Bundle.load(args.bundle if args.bundle is not None else default_bundle_dir())
    t_load = time.perf_counter() - t
    warn_training(bundle, warn)
    settings = bundle.settings(filter_threshold=args.threshold, **postprocess_overrides(args))
    paths, notes = match_channels(args.channel, bundle)
    name = args.name or image_stem(args.channel[0][1])
    if not name or "/" in name or name.startswith("."):
        raise UsageError(f"invalid output name {name!r}; pass --name")
    outputs = segment_outputs(name)
    check_outputs(args.out, outputs.values(), args.overwrite)
    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)

    t = time.perf_counter()
    volume = read_channels(paths)
    t_read = time.perf_counter() - t
    progress("read", len(paths), len(paths))
    notes += volume.notes
    if volume.geometry.size[2] == 1:
        notes.append(f"{paths[bundle.channels[0]]}: the volume has a single axial slice; it is segmented as one "
                     "slice, so the slice smoothing and the 3D component filter have no neighbours to use")
    for msg in notes:
        note(msg)

    bundle.to(device)
    declared = {k: v for k, v in (("orientation", args.orientation), ("spacing_mm", args.spacing)) if v is not None}
    geometry = volume.geometry.declared(args.orientation, args.spacing)
    result = segment_arrays(bundle, volume.channels, device, settings,
                            seeds=seed_settings(bundle, args) if args.seeds else None,
                            geometry=geometry, progress=progress)
    for msg in result.warnings:
        warn(msg)
    done = _Done(args, bundle, paths, device, volume, result, notes, outputs,
                 {"load_bundle": t_load, "read": t_read, **result.timings}, declared, geometry)
    written, report = _write(done, t_start, progress)
    progress.close()
    progress.event(stage="done", outputs={k: str(args.out / v) for k, v in outputs.items()},
                   counts=report["counts"], timings_s=report["timings_s"])
    if not args.quiet and args.progress != "json":
        _summary(name, done, report, written)
    return 0

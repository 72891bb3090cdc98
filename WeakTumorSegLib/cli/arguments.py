"""Argument types, help texts and options shared by the subcommands."""

from __future__ import annotations

import argparse

from ..errors import WeakTumorSegError
from ..bundle.settings import (FINAL_GATES, FINAL_MODES, MAX_SCALP_MARGIN_MM, MAX_SLICE_SMOOTHING, OPTIONS,
                               POSTPROCESS_OPTIONS)
from ..progress import MODES

PROG = "weaktumorseg"


GEOMETRY_HELP = ("JSON file declaring the cohort's true orientation and in-plane voxel size, for headers that are "
                 "wrong (default: geometry.json beside the patient folders or the manifest, if present; "
                 "docs/options.md)")


def orientation_arg(text: str) -> str:
    """argparse type of an orientation code (``PLS``)."""
    from ..io.orientation import check_code

    try:
        return check_code(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def spacing_arg(text: str) -> tuple[float, float]:
    """argparse type of an in-plane voxel size: ``0.9`` or ``0.9,0.94`` (column, row) in mm."""
    try:
        values = [float(x) for x in text.split(",")]
    except ValueError:
        values = []
    if len(values) == 1:
        values *= 2
    if len(values) != 2 or not all(v > 0 and v < 100 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r} is not a voxel size in mm: give one number or COLUMN,ROW")
    return values[0], values[1]


class UsageError(WeakTumorSegError):
    """Command-line arguments that do not make sense together."""


class Parser(argparse.ArgumentParser):
    """Usage errors as one line (``weaktumorseg segment: error: ...``), exit code 2."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def channel_arg(text: str) -> tuple[str, str]:
    name, sep, path = text.partition("=")
    if not sep or not name.strip() or not path.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=PATH (e.g. flair=scan_flair.nii.gz), got {text!r}")
    return name.strip().lower(), path.strip()


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None


def fraction_arg(text: str) -> float:
    value = _number(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must lie in [0, 1], got {value}")
    return value


def millimetres_arg(text: str) -> float:
    value = _number(text)
    if not 0.0 <= value < MAX_SCALP_MARGIN_MM:
        raise argparse.ArgumentTypeError(f"must lie in [0, {MAX_SCALP_MARGIN_MM:g}) mm, got {value}")
    return value


def smoothing_arg(text: str) -> float:
    value = _number(text)
    if not 0.0 <= value <= MAX_SLICE_SMOOTHING:
        raise argparse.ArgumentTypeError(f"must lie in [0, 1/3], got {value}")
    return value


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


DEVICE_HELP = "auto (CUDA if available), cpu, cuda or cuda:N (default auto)"
SMOOTHING_HELP = ("weight W of each neighbouring slice when the classifier's outputs are averaged along the "
                  "slice axis before the gate (W, 1 - 2W, W); 0 classifies every slice on its own, as Yoo et al. "
                  "do (default: the bundle's inference.slice_smoothing)")
TRIM_HELP = ("clear the mask's voxels whose FLAIR is below F times the median FLAIR inside the volume's mask "
             "(for FLAIR-hyperintense targets); 0 keeps every voxel, as Yoo et al. do (default: the bundle's "
             "inference.flair_trim)")
COMPONENTS_HELP = ("keep only the mask's 3D connected components with at least F times the largest one's voxels, "
                   "and fill the holes of each axial slice's mask; 0 keeps the mask as it is, as Yoo et al. do "
                   "(default: the bundle's inference.keep_components)")
FINAL_HELP = ("with a bundle that has a final segmenter: weight W of its map in the mask, the fused S_US / S_OS "
              "map weighing 1 - W (1: the final segmenter alone; default: the bundle's inference.final_weight)")
FINAL_MODE_HELP = ("how a final segmenter makes the mask: average (its map weighted by --final-weight, the fused "
                   "map by the rest) or extend (the fused mask, each lesion grown by the final segmenter's 3D "
                   "components that touch it; final weight 0 still turns the final segmenter off; default: the "
                   "bundle's inference.final_mode)")
FINAL_GATE_HELP = ("which patches a final segmenter reads: classifier (those the classifier's gate passes, as the "
                   "fused segmenters) or tissue (every patch with tissue: the final segmenter decides alone where "
                   "the tumour is; default: the bundle's inference.final_gate)")
GATE_LOW_HELP = ("also segment the patches whose classifier output lies above P (but not above the gate, 0.5) "
                 "when consecutive slices above P join them to a gated patch, with the under-segmenting model "
                 "alone; 0 gates every patch on its own, as Yoo et al. do (default: the bundle's inference.gate_low)")
SCALP_HELP = ("clear the mask within this many mm of the head's outer surface (scalp and skull); "
              "0 turns it off, as skull-stripped images need (default: the bundle's inference.scalp_margin_mm)")


def add_postprocess_options(parser: argparse.ArgumentParser) -> None:
    """--scalp-margin, --slice-smoothing, --flair-trim, --keep-components, --final-weight, --final-mode,
    --final-gate and --gate-low (segment, evaluate)."""
    parser.add_argument("--scalp-margin", type=millimetres_arg, default=None, metavar="MM", help=SCALP_HELP)
    parser.add_argument("--slice-smoothing", type=smoothing_arg, default=None, metavar="W", help=SMOOTHING_HELP)
    parser.add_argument("--flair-trim", type=fraction_arg, default=None, metavar="F", help=TRIM_HELP)
    parser.add_argument("--keep-components", type=fraction_arg, default=None, metavar="F", help=COMPONENTS_HELP)
    parser.add_argument("--final-weight", type=fraction_arg, default=None, metavar="W", help=FINAL_HELP)
    parser.add_argument("--final-mode", choices=FINAL_MODES, default=None, help=FINAL_MODE_HELP)
    parser.add_argument("--final-gate", choices=FINAL_GATES, default=None, help=FINAL_GATE_HELP)
    parser.add_argument("--gate-low", type=fraction_arg, default=None, metavar="P", help=GATE_LOW_HELP)


def postprocess_overrides(args: argparse.Namespace) -> dict[str, float | str | None]:
    """The inference settings the post-processing options override (None: not given)."""
    return {name: getattr(args, OPTIONS[name].removeprefix("--").replace("-", "_")) for name in POSTPROCESS_OPTIONS}


def add_run_options(parser: argparse.ArgumentParser, progress_help: str, quiet_help: str) -> None:
    """--threads, --progress, --quiet and --debug, shared by every long-running subcommand."""
    parser.add_argument("--threads", type=positive_int, default=None, help="CPU threads for PyTorch")
    parser.add_argument("--progress", choices=MODES, default="bar", help=progress_help)
    parser.add_argument("--quiet", "-q", action="store_true", help=quiet_help)
    parser.add_argument("--debug", action="store_true", help="show the full traceback on errors")

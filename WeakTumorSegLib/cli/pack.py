"""``weaktumorseg pack``: a copy of a bundle with smaller weights, for shipping."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..bundle.info import WEIGHT_DTYPE_NAMES
from .arguments import UsageError

HELP = "copy a bundle with smaller weights (float16) and only the models it needs"
DESCRIPTION = ("Copy a trained bundle for shipping: weights stored as float16 (half the size; loading casts them back "
               "to float32) and, with --models, only the inference models plus the ones listed (e.g. segmenter0 "
               "for evaluate's Table 4). Every weight file is verified before it is copied; nothing is written "
               "unless all of them are sound.")


def add_parser(sub) -> None:
    pk = sub.add_parser("pack", help=HELP, description=DESCRIPTION)
    pk.add_argument("--bundle", "-b", type=Path, required=True, help="bundle folder to copy")
    pk.add_argument("--out", "-o", type=Path, required=True, help="new bundle folder")
    pk.add_argument("--dtype", choices=WEIGHT_DTYPE_NAMES, default="float16",
                    help="storage type of the weights (default float16)")
    pk.add_argument("--models", default=None,
                    help="comma-separated optional models to keep besides the inference models (classifier, "
                         "converter, segmenter_us, segmenter_os), e.g. segmenter0,baseline_seed_only; "
                         "'none' keeps only the inference models (default: keep all)")
    pk.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    pk.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    pk.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..bundle.save import pack_bundle

    if args.out.resolve() == args.bundle.resolve():
        raise UsageError("--out must differ from --bundle")
    models = None
    if args.models is not None:
        names = [m.strip() for m in args.models.split(",") if m.strip()]
        models = [] if args.models.strip().lower() == "none" else names
    out = pack_bundle(args.bundle, args.out, models, args.dtype, overwrite=args.overwrite)
    size = sum(f.stat().st_size for f in out.iterdir())
    print(f"wrote {out} ({size / 2**20:.1f} MiB)")
    return 0

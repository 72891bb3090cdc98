"""``weaktumorseg train``: a bundle from slice labels, stage by stage in the order of Yoo et al."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from .arguments import DEVICE_HELP, GEOMETRY_HELP, PROG, UsageError, add_run_options

PRESETS_HELP = ("paper: the settings of Yoo et al. (VGG16 classifier, 100-200 epochs per network; for a GPU); "
                "default: compact networks and short schedules that train on about 40 patients in about half an "
                "hour on 2 CPU cores (the shipped bundles' recipe); tiny: a smoke test of the whole pipeline in a "
                "few minutes, meant for small synthetic phantoms, not for real patients (its bundles find little "
                "or nothing on MR). Default: default")


HELP = "train a model bundle from slice-level labels (Yoo et al., stage by stage)"
DESCRIPTION = ("Train a bundle from slice labels only. Each stage checkpoints into the run directory "
               "(default: <out>.run beside the bundle); --resume continues a killed run. Under torchrun "
               "the stages train with DistributedDataParallel.")


def add_parser(sub) -> None:
    tr = sub.add_parser("train", help=HELP, description=DESCRIPTION)
    tr.add_argument("--data", type=Path, required=True,
                    help="cohort folder (one sub-folder per patient: <id>_<channel>.nii.gz, optional <id>_seg.nii.gz "
                         "and <id>_slice_labels.csv) or a manifest CSV (patient, one column per channel, mask, labels)")
    tr.add_argument("--out", "-o", type=Path, required=True, help="bundle folder to write")
    tr.add_argument("--preset", default="default", help=PRESETS_HELP)
    tr.add_argument("--config", default=None,
                    help="JSON file overriding any preset value, or the JSON object itself, e.g. "
                         "'{\"seed\": 1}' (docs/options.md lists the keys)")
    tr.add_argument("--channels", default=None,
                    help="comma-separated channel names, FLAIR included (default: the preset's flair,t1,t1ce)")
    tr.add_argument("--geometry", type=Path, default=None, help=GEOMETRY_HELP)
    tr.add_argument("--run-dir", type=Path, default=None, help="run directory (default: <out>.run)")
    tr.add_argument("--resume", action="store_true", help="continue the run in the run directory")
    tr.add_argument("--annotations", type=Path, default=None, metavar="DIR",
                    help="folder of reviewed exports from the Slicer module (<volume>_mask.nii.gz and "
                         "<volume>_manifest.csv): the final segmenter reads their kept and corrected slices as "
                         "fully annotated, flagged ones as weakly labelled, and skips excluded ones; their patients "
                         "must be in --data")
    tr.add_argument("--from-bundle", type=Path, default=None, metavar="BUNDLE",
                    help="train only the final segmenter, on top of this bundle: its fused pipeline labels the "
                         "patients of --data it was trained on (all of them if none), and --out gets a copy of it "
                         "with the final segmenter (minutes on a CPU). The final section comes from --preset and "
                         "--config; everything else from the bundle")
    tr.add_argument("--device", default="auto", help=DEVICE_HELP)
    add_run_options(tr, progress_help="bar (default), json or none", quiet_help="no progress and no log lines")
    tr.set_defaults(func=run)


def resume_command(argv: list[str]) -> str:
    """The command line that continues an interrupted ``train`` (``argv`` as given, ``--resume`` added)."""
    args = list(argv) if "--resume" in argv else [*argv, "--resume"]
    return shlex.join([PROG, *args])


def run(args: argparse.Namespace) -> int:
    import torch

    from ..progress import Progress
    from ..training.distributed import setup_distributed
    from ..training.presets import resolve_config
    from ..training.run import TrainingRun

    overrides = {}
    if args.channels:
        names = [c.strip().lower() for c in args.channels.split(",") if c.strip()]
        overrides["channels"] = names
        if "flair" not in names:
            raise UsageError("--channels must include flair (the converter and the difference score use it)")
    if args.geometry is not None:
        if not args.geometry.is_file():
            raise UsageError("geometry declaration file not found", args.geometry)
        overrides["data"] = {"geometry": str(args.geometry.resolve())}
    if args.annotations is not None:
        if not args.annotations.is_dir():
            raise UsageError("annotation folder not found", args.annotations)
        overrides.setdefault("data", {})["annotations"] = str(args.annotations.resolve())
    if args.from_bundle is not None:
        from ..bundle.info import read_bundle_config
        from ..training.presets import final_only_config

        config = final_only_config(read_bundle_config(args.from_bundle), args.preset, args.config,
                                   args.from_bundle)
        config["data"].update(overrides.get("data", {}))
    else:
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

    training = TrainingRun(run_dir, config, args.data, args.out, dist=dist, resume=args.resume, log=log,
                           progress=progress)
    try:
        path = training.run() if args.from_bundle is None else training.run_final(args.from_bundle)
    except KeyboardInterrupt:
        progress.close()
        if dist.main:
            print(f"{PROG}: training interrupted; the finished epochs are kept in {run_dir}. Continue with:\n"
                  f"  {resume_command(args.argv)}", file=sys.stderr)
        return 130
    progress.close()
    progress.event(stage="done", bundle=str(path),
                   stage_seconds={k: round(v, 1) for k, v in training.timings.items()})
    return 0

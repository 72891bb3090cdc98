"""What the subcommands share: progress and note printers, the bundle's training warnings."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from pathlib import Path

from ..bundle.info import BundleInfo
from ..progress import Progress
from .arguments import PROG, UsageError


def printers(args) -> tuple[Progress, Callable[[str], None], Callable[[str], None]]:
    """``(progress, note, warn)`` for a command's ``--progress`` and ``--quiet``; notes and warnings
    go to stderr as ``weaktumorseg: note: ...`` / ``weaktumorseg: WARNING: ...``."""
    quiet = args.quiet
    progress = Progress("none" if quiet else args.progress)

    def note(msg: str) -> None:
        if not quiet:
            progress.close()
            print(f"{PROG}: note: {msg}", file=sys.stderr)

    def warn(msg: str) -> None:
        progress.close()
        print(f"{PROG}: WARNING: {msg}", file=sys.stderr)

    return progress, note, warn


def warn_training(bundle: BundleInfo, warn: Callable[[str], None]) -> None:
    """Repeat the warnings its training run recorded about a bundle (a failed run may still have
    written one)."""
    for line in bundle.training_warnings:
        warn(f"bundle '{bundle.name}' may not work: its training warned: {line}")


def check_outputs(folder: Path, names: Iterable[str], overwrite: bool) -> None:
    """Refuse an output folder that is a file, and existing outputs unless ``overwrite``."""
    if folder.exists() and not folder.is_dir():
        raise UsageError("output path exists and is not a folder", folder)
    if not overwrite:
        for fname in names:
            if (folder / fname).exists():
                raise UsageError("output already exists; pass --overwrite to replace it", folder / fname)

"""Atomic writing: every file is written under a temporary name in its destination folder and
renamed into place, so an interrupted or failed run never leaves a half-written output behind."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(final: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; rename it onto ``final`` only on success."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(final.suffixes[-2:]) if final.name.endswith(".gz") else final.suffix
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".part" + suffix, dir=final.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, final)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


class OutputSet:
    """Write several files that appear together or not at all.

    Each file is first written to a hidden temporary name; :meth:`commit` renames them all into
    place, and :meth:`discard` (or an exception inside the ``with`` block) removes them.
    """

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self._pending: list[tuple[Path, Path]] = []
        self._created_folder = False

    def path(self, name: str) -> Path:
        """Temporary path to write; it becomes ``folder/name`` on :meth:`commit`."""
        if not self.folder.exists():
            self.folder.mkdir(parents=True)
            self._created_folder = True
        final = self.folder / name
        tmp = self.folder / f".{name}.part-{os.getpid()}{_write_suffix(name)}"
        self._pending.append((tmp, final))
        return tmp

    def commit(self) -> list[Path]:
        for tmp, final in self._pending:
            os.replace(tmp, final)
        done = [final for _, final in self._pending]
        self._pending = []
        return done

    def discard(self) -> None:
        for tmp, _ in self._pending:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        self._pending = []
        if self._created_folder:
            with contextlib.suppress(OSError):
                self.folder.rmdir()

    def __enter__(self) -> "OutputSet":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.discard()


def _write_suffix(name: str) -> str:
    """Suffix that keeps writers choosing the right format for a temporary name."""
    for suffix in (".seg.nrrd", ".nii.gz", ".nii", ".nrrd", ".csv", ".json", ".png"):
        if name.endswith(suffix):
            return suffix
    return ""

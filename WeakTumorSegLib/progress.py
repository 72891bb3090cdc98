"""Progress reporting for long commands: a bar per stage, JSON lines, or nothing.

``--progress json`` prints one JSON object per line on stdout, ``{"stage": ..., "done": ...,
"total": ...}``, which the Slicer module reads while the command runs in a background process.
"""

from __future__ import annotations

import json
import sys
from typing import TextIO

from tqdm import tqdm

MODES = ("bar", "json", "none")
#: What a stage counts, shown on its bar.
UNITS = {"read": "file", "classify": "patch", "segment": "patch", "convert": "patch", "seeds": "mask batch",
         "write": "file"}


class Progress:
    """Callable ``progress(stage, done, total)`` that renders according to ``mode``."""

    def __init__(self, mode: str = "bar", stream: TextIO | None = None):
        if mode not in MODES:
            raise ValueError(f"progress mode must be one of {MODES}")
        self.mode = mode
        self.stream = stream
        self._bar: tqdm | None = None
        self._stage: str | None = None

    def __call__(self, stage: str, done: int, total: int) -> None:
        if self.mode == "json":
            out = self.stream or sys.stdout
            out.write(json.dumps({"stage": stage, "done": int(done), "total": int(total)}) + "\n")
            out.flush()
        elif self.mode == "bar":
            if stage != self._stage:
                self.close()
                self._stage = stage
                self._bar = tqdm(total=max(int(total), 1), desc=f"{stage:<11}", file=self.stream or sys.stderr,
                                 leave=True, dynamic_ncols=True, unit=UNITS.get(stage, "step"))
            bar = self._bar
            target = min(int(done), bar.total) if total else bar.total
            if target > bar.n:
                bar.update(target - bar.n)  # tqdm rate-limits redrawing itself

    def event(self, **fields) -> None:
        """A final or special record (JSON mode only), e.g. ``event(stage="done", outputs=...)``."""
        if self.mode == "json":
            out = self.stream or sys.stdout
            out.write(json.dumps(fields) + "\n")
            out.flush()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

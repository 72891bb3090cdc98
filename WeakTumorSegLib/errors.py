"""Errors the command line reports as one line: the file concerned and what is wrong."""

from __future__ import annotations

from pathlib import Path


class WeakTumorSegError(Exception):
    """A problem with the user's input that is reported without a traceback.

    ``path`` names the file (or folder) at fault, when there is one; ``str(error)`` is the
    one-line message ``"<path>: <problem>"``.
    """

    def __init__(self, problem: str, path: str | Path | None = None):
        self.problem = problem.strip().replace("\n", " ")
        self.path = None if path is None else str(path)
        super().__init__(f"{self.path}: {self.problem}" if self.path else self.problem)


class InputError(WeakTumorSegError):
    """An input image is missing, unreadable or inconsistent with the other inputs."""


class BundleError(WeakTumorSegError):
    """A model bundle is missing, malformed, altered or incompatible with the input."""

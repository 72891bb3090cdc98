"""Shared fixtures and helpers for the WeakTumorSegLib tests.

Fixtures (all session-scoped, built once under pytest's temporary folder):

* ``tiny_bundle`` -- :class:`pathlib.Path` of an untrained, tiny inference bundle (channels
  ``flair, t1, t1ce``; a 3-block compact classifier of width 4 and U-Nets of width 4). Fast
  enough for CPU; its outputs mean nothing, only its plumbing is real. Treat it as read-only:
  copy it (``shutil.copytree``) before tampering with it.
* ``phantom`` -- the :class:`support.phantoms.Phantom` written by ``phantom_case``
  (shape ``(12, 140, 150)``, seed 3).
* ``phantom_case`` -- ``dict`` of written paths as returned by
  :func:`support.phantoms.write_case`: one entry per channel (``"flair"``, ``"t1"``,
  ``"t1ce"``) plus ``"seg"`` and ``"slice_labels"``. Read-only as well.

Helpers (import them with ``from conftest import run_cli, ...``):

* :func:`run_cli` -- run ``python -m WeakTumorSegLib ARGS...`` in a subprocess.
* :func:`run_cli_many` -- many independent CLI runs, several processes at a time.
* :func:`channel_args` -- ``["-c", "flair=PATH", ...]`` for a mapping of channel paths.
* :func:`files_in` -- every entry of a folder, hidden ones included (empty if it is absent).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

#: Root of the source checkout (the folder holding ``WeakTumorSegLib`` and ``Testing``).
REPO_ROOT = Path(__file__).resolve().parent.parent
#: The shipped phantom-trained stand-in bundle: tests on synthetic phantoms that need a non-empty
#: mask use it (the default bundle is trained on real MR).
STANDIN_BUNDLE = REPO_ROOT / "Resources" / "Models" / "phantom-standin"
if str(REPO_ROOT) not in sys.path:  # make ``import WeakTumorSegLib`` work without installing
    sys.path.insert(0, str(REPO_ROOT))

#: Channels of the tiny test bundle, in order.
TINY_CHANNELS = ["flair", "t1", "t1ce"]
#: Shape ``(Z, Y, X)`` and seed of the session phantom.
PHANTOM_SHAPE = (12, 140, 150)
PHANTOM_SEED = 3


def tiny_bundle_config(**extra) -> dict:
    """The ``bundle.json`` settings of the tiny test bundle; keyword arguments override keys."""
    config = {
        "name": "tiny-test",
        "channels": list(TINY_CHANNELS),
        "flair_channel": "flair",
        "patch_size": 128,
        "preprocessing": {"inplane_scale": 1.0},
        "inference": {"filter_threshold": 0.2},
    }
    config.update(extra)
    return config


def tiny_architectures() -> dict:
    """Architecture specs ``{model: (architecture, kwargs)}`` of the tiny test bundle."""
    from WeakTumorSegLib.bundle.save import inference_architectures

    return inference_architectures(len(TINY_CHANNELS), ("compact_classifier", {"width": 4, "blocks": 3}),
                                   unet_width=4, latent=16)


def build_tiny_models(seed: int = 0) -> tuple[dict, dict]:
    """Freshly initialised tiny networks (``torch.manual_seed(seed)`` first) and their specs."""
    import torch

    from WeakTumorSegLib.networks.registry import build

    torch.manual_seed(seed)
    architectures = tiny_architectures()
    models = {name: build(arch, kwargs) for name, (arch, kwargs) in architectures.items()}
    return models, architectures


def save_tiny_bundle(path: str | Path, seed: int = 0, **config_overrides) -> Path:
    """Write an untrained tiny bundle to ``path`` (which must not exist) and return it."""
    from WeakTumorSegLib.bundle.save import save_bundle

    models, architectures = build_tiny_models(seed)
    return save_bundle(path, tiny_bundle_config(**config_overrides), models, architectures)


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory) -> Path:
    """An untrained tiny inference bundle folder (read-only; copy it before changing it)."""
    return save_tiny_bundle(tmp_path_factory.mktemp("bundles") / "tiny")


@pytest.fixture(scope="session")
def phantom():
    """The synthetic phantom of ``phantom_case`` (shape ``(12, 140, 150)``, seed 3)."""
    from support.phantoms import make_phantom

    return make_phantom(shape=PHANTOM_SHAPE, seed=PHANTOM_SEED)


@pytest.fixture(scope="session")
def phantom_case(tmp_path_factory, phantom) -> dict[str, Path]:
    """The phantom written as case ``phantom``: ``{channel or "seg"/"slice_labels": path}``."""
    from support.phantoms import write_case

    return write_case(phantom, tmp_path_factory.mktemp("phantom_case"), "phantom")


def cli_env(**extra: str) -> dict[str, str]:
    """Environment for CLI subprocesses: ``PYTHONPATH`` = the checkout, no default bundle
    override, and few threads so that parallel runs do not oversubscribe small machines."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.pop("WEAKTUMORSEG_BUNDLE", None)
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("MKL_NUM_THREADS", "1")
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def run_cli(*args: object, timeout: float = 300, env: Mapping[str, str] | None = None,
            cwd: str | Path | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m WeakTumorSegLib *args`` and return the finished process (text mode).

    Arguments are converted with ``str`` (so paths can be passed directly). The command runs
    in the repository root unless ``cwd`` is given, with :func:`cli_env` (plus ``env``).
    Never raises for a non-zero exit; check ``returncode``, ``stdout`` and ``stderr``.
    """
    return subprocess.run(
        [sys.executable, "-m", "WeakTumorSegLib", *(str(a) for a in args)],
        cwd=str(cwd or REPO_ROOT), env=cli_env(**(env or {})), capture_output=True, text=True,
        timeout=timeout, stdin=subprocess.DEVNULL)


def run_cli_many(arg_lists: Iterable[Sequence[object]], workers: int = 4, timeout: float = 300,
                 cwd: str | Path | None = None) -> list[subprocess.CompletedProcess]:
    """Run ``python -m WeakTumorSegLib ARGS...`` for each argument list, ``workers`` at a time.

    Returns finished processes in input order, like :func:`run_cli`. Only for independent runs
    (distinct output folders). Each run is a fresh interpreter, so C-level messages (from ITK,
    say) reach its stderr exactly as a user would see them.
    """
    arg_lists = [list(args) for args in arg_lists]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda a: run_cli(*a, timeout=timeout, cwd=cwd), arg_lists))


def channel_args(paths: Mapping[str, str | Path], names: Sequence[str] | None = None) -> list[str]:
    """``["-c", "NAME=PATH", ...]`` for ``names`` (default: the tiny bundle's channels)."""
    out: list[str] = []
    for name in names or TINY_CHANNELS:
        out += ["-c", f"{name}={paths[name]}"]
    return out


def files_in(folder: str | Path) -> list[str]:
    """Sorted names of everything in ``folder``, hidden entries included; ``[]`` if absent."""
    folder = Path(folder)
    return sorted(os.listdir(folder)) if folder.is_dir() else []


def stderr_lines(proc: subprocess.CompletedProcess) -> list[str]:
    """The non-empty lines a process wrote on stderr."""
    return [ln for ln in proc.stderr.splitlines() if ln.strip()]

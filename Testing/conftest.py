"""Shared fixtures and helpers for the WeakTumorSegLib tests.

Fixtures (all session-scoped, built once under pytest's temporary folder):

* ``tiny_bundle`` -- :class:`pathlib.Path` of an untrained, tiny inference bundle (channels
  ``flair, t1, t1ce``; a 3-block compact classifier of width 4 and U-Nets of width 4). Fast
  enough for CPU; its outputs mean nothing, only its plumbing is real. Treat it as read-only:
  copy it (``shutil.copytree``) before tampering with it.
* ``phantom`` -- the :class:`WeakTumorSegLib.phantoms.Phantom` written by ``phantom_case``
  (shape ``(12, 140, 150)``, seed 3).
* ``phantom_case`` -- ``dict`` of written paths as returned by
  :func:`WeakTumorSegLib.phantoms.write_case`: one entry per channel (``"flair"``, ``"t1"``,
  ``"t1ce"``) plus ``"seg"`` and ``"slice_labels"``. Read-only as well.

Helpers (import them with ``from conftest import run_cli, ...``):

* :func:`run_cli` -- run ``python -m WeakTumorSegLib ARGS...`` in a subprocess.
* :func:`run_cli_many` -- many independent CLI runs at once, each in its own process (forked
  from one pre-imported helper, since the interpreter start-up, mostly ``import torch``, costs
  seconds per run).
* :func:`channel_args` -- ``["-c", "flair=PATH", ...]`` for a mapping of channel paths.
* :func:`files_in` -- every entry of a folder, hidden ones included (empty if it is absent).
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

#: Root of the source checkout (the folder holding ``WeakTumorSegLib`` and ``Testing``).
REPO_ROOT = Path(__file__).resolve().parent.parent
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
    from WeakTumorSegLib.bundle import inference_architectures

    return inference_architectures(len(TINY_CHANNELS), ("compact_classifier", {"width": 4, "blocks": 3}),
                                   unet_width=4, latent=16)


def build_tiny_models(seed: int = 0) -> tuple[dict, dict]:
    """Freshly initialised tiny networks (``torch.manual_seed(seed)`` first) and their specs."""
    import torch

    from WeakTumorSegLib.networks import build

    torch.manual_seed(seed)
    architectures = tiny_architectures()
    models = {name: build(arch, kwargs) for name, (arch, kwargs) in architectures.items()}
    return models, architectures


def save_tiny_bundle(path: str | Path, seed: int = 0, **config_overrides) -> Path:
    """Write an untrained tiny bundle to ``path`` (which must not exist) and return it."""
    from WeakTumorSegLib.bundle import save_bundle

    models, architectures = build_tiny_models(seed)
    return save_bundle(path, tiny_bundle_config(**config_overrides), models, architectures)


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory) -> Path:
    """An untrained tiny inference bundle folder (read-only; copy it before changing it)."""
    return save_tiny_bundle(tmp_path_factory.mktemp("bundles") / "tiny")


@pytest.fixture(scope="session")
def phantom():
    """The synthetic phantom of ``phantom_case`` (shape ``(12, 140, 150)``, seed 3)."""
    from WeakTumorSegLib.phantoms import make_phantom

    return make_phantom(shape=PHANTOM_SHAPE, seed=PHANTOM_SEED)


@pytest.fixture(scope="session")
def phantom_case(tmp_path_factory, phantom) -> dict[str, Path]:
    """The phantom written as case ``phantom``: ``{channel or "seg"/"slice_labels": path}``."""
    from WeakTumorSegLib.phantoms import write_case

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


def run_cli_many(arg_lists: Iterable[Sequence[object]], workers: int | None = None, fresh: bool = False,
                 timeout: float = 300, cwd: str | Path | None = None) -> list[subprocess.CompletedProcess]:
    """Run ``python -m WeakTumorSegLib ARGS...`` for each argument list, several at a time.

    Returns finished processes in input order, like :func:`run_cli`. Only for independent runs
    (distinct output folders). ``workers`` defaults to ``cpu_count`` (at least 2, at most 8).

    Each run is its own child process with its own exit status, stdout and stderr, but by
    default (``fresh=False``, on POSIX) the children are forked from one helper process that has
    already imported ``WeakTumorSegLib.cli`` (and so torch): that start-up costs a few CPU
    seconds per interpreter, which dominates error-case runs. A child runs the package's
    ``__main__`` exactly as ``python -m`` would, including the interpreter's traceback and
    exit status 1 on an uncaught exception. ``fresh=True`` (or ``WTS_TESTS_FRESH_CLI=1`` in the
    environment) starts a new interpreter per run instead.
    """
    arg_lists = [[str(a) for a in args] for args in arg_lists]
    workers = workers or min(8, max(2, os.cpu_count() or 2))
    if fresh or os.environ.get("WTS_TESTS_FRESH_CLI") or not hasattr(os, "fork"):
        with ThreadPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(lambda a: run_cli(*a, timeout=timeout, cwd=cwd), arg_lists))
    return _ForkServer.get().run(arg_lists, workers, str(cwd or REPO_ROOT), timeout)


#: Code of the fork server: reads one JSON batch per line on stdin, runs each request in a
#: forked child (at most ``workers`` at a time) and answers one JSON line ``{index: status}``.
_FORK_SERVER = r"""
import json, os, runpy, sys, traceback
import WeakTumorSegLib.cli  # the expensive imports, done once

def child(req):
    try:
        os.close(proto_out.fileno())
        os.chdir(req["cwd"])
        fd = os.open(os.devnull, os.O_RDONLY); os.dup2(fd, 0); os.close(fd)
        for name, target in (("stdout", 1), ("stderr", 2)):
            fd = os.open(req[name], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(fd, target); os.close(fd)
        sys.stdin = open(0, "r", closefd=False)
        sys.stdout = open(1, "w", closefd=False, buffering=1)
        sys.stderr = open(2, "w", closefd=False, buffering=1)
        sys.argv = [os.path.join(os.path.dirname(WeakTumorSegLib.__file__), "__main__.py"), *req["argv"]]
        code = 0
        try:
            runpy.run_module("WeakTumorSegLib", run_name="__main__", alter_sys=True)
        except SystemExit as exc:
            if exc.code is None:
                code = 0
            elif isinstance(exc.code, int):
                code = exc.code
            else:
                print(exc.code, file=sys.stderr)
                code = 1
        except BaseException:
            traceback.print_exc()
            code = 1
        sys.stdout.flush(); sys.stderr.flush()
    except BaseException:
        code = 99
    os._exit(code & 0xFF)

proto_out = os.fdopen(os.dup(1), "w")  # the answers; stray prints go to stderr, not into them
os.dup2(2, 1)
for line in sys.stdin:
    batch = json.loads(line)
    pending, running, status = list(enumerate(batch["requests"])), {}, {}
    while pending or running:
        while pending and len(running) < batch["workers"]:
            i, req = pending.pop(0)
            sys.stdout.flush(); sys.stderr.flush(); proto_out.flush()
            pid = os.fork()
            if pid == 0:
                child(req)
            running[pid] = i
        pid, st = os.wait()
        if pid in running:
            status[running.pop(pid)] = os.waitstatus_to_exitcode(st)
    proto_out.write(json.dumps(status) + "\n")
    proto_out.flush()
"""


class _ForkServer:
    """One helper process per test session that forks CLI runs (see :func:`run_cli_many`)."""

    _instance: "_ForkServer | None" = None

    def __init__(self):
        import tempfile

        self.tmp = Path(tempfile.mkdtemp(prefix="wts-cli-runs-"))
        self.count = 0
        self.proc = subprocess.Popen([sys.executable, "-c", _FORK_SERVER], cwd=str(REPO_ROOT), env=cli_env(),
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    @classmethod
    def get(cls) -> "_ForkServer":
        if cls._instance is None or cls._instance.proc.poll() is not None:
            cls._instance = cls()
            atexit.register(cls._instance.close)
        return cls._instance

    def run(self, arg_lists: list[list[str]], workers: int, cwd: str,
            timeout: float) -> list[subprocess.CompletedProcess]:
        requests = []
        for argv in arg_lists:
            self.count += 1
            base = self.tmp / f"run{self.count}"
            requests.append({"argv": argv, "cwd": cwd, "stdout": f"{base}.out", "stderr": f"{base}.err"})
        self.proc.stdin.write(json.dumps({"requests": requests, "workers": workers}) + "\n")
        self.proc.stdin.flush()
        timer = threading.Timer(timeout * max(1, len(requests)), self.proc.kill)
        timer.start()
        try:
            line = self.proc.stdout.readline()
        finally:
            timer.cancel()
        if not line:
            raise RuntimeError("the CLI fork server died; rerun with WTS_TESTS_FRESH_CLI=1")
        status = {int(k): v for k, v in json.loads(line).items()}
        cmd = [sys.executable, "-m", "WeakTumorSegLib"]
        return [subprocess.CompletedProcess(cmd + req["argv"], status[i], Path(req["stdout"]).read_text(),
                                            Path(req["stderr"]).read_text())
                for i, req in enumerate(requests)]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.tmp, ignore_errors=True)


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

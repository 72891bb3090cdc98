"""Helpers shared by the benchmark scripts: machine description, load average, medians,
thread settings, channel discovery and result files.

The scripts run as ``python benchmarks/bench_x.py`` from the repository root without installing
the package: importing this module puts the repository root on ``sys.path``.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # ``import WeakTumorSegLib`` without installing the package
    sys.path.insert(0, str(REPO_ROOT))

#: Load average (1 min) above which figures are marked as measured on a busy machine.
BUSY_LOAD = 1.5
#: BraTS 2023 file suffixes and the channel names the bundles use.
BRATS_CHANNELS = {"t2f": "flair", "t1n": "t1", "t1c": "t1ce", "t2w": "t2"}
IMAGE_SUFFIX = ".nii.gz"


def patient_samples() -> list[Path]:
    """The shipped real-patient sample folders, ``Resources/SampleData/*/`` without the synthetic
    ``PHANTOM_*`` one (which only the phantom stand-in bundle is meant for)."""
    root = REPO_ROOT / "Resources" / "SampleData"
    return sorted(d for d in root.glob("*/") if d.is_dir() and not d.name.startswith("PHANTOM_"))


def set_threads(threads: int) -> None:
    """Limit this process (and children started afterwards) to ``threads`` CPU threads.

    Must run before ``import torch`` for the OpenMP pool to honour the environment variables;
    ``torch.set_num_threads`` is applied as well when torch is already imported.
    """
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)


def thread_env(threads: int) -> dict[str, str]:
    """Environment for a child process limited to ``threads`` threads, able to import the library."""
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = str(threads)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), *filter(None, [env.get("PYTHONPATH")])])
    return env


def load_average() -> list[float]:
    """1, 5 and 15 minute load averages (empty where the platform has none)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (OSError, AttributeError):
        return []


def busy_note(load: Sequence[float]) -> str | None:
    """A note when the 1-minute load average shows other work on the machine."""
    if load and load[0] > BUSY_LOAD:
        return f"measured while the machine was otherwise busy (load average {load[0]:.2f} > {BUSY_LOAD})"
    return None


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict:
    """What the figures were measured on."""
    import torch

    info = {
        "date": _dt.date.today().isoformat(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    try:
        mem = Path("/proc/meminfo").read_text().splitlines()[0].split()[1]
        info["memory_gib"] = round(int(mem) / 2**20, 1)
    except (OSError, IndexError, ValueError):
        pass
    return info


def sync(device: str) -> None:
    """Wait for queued GPU work so that wall-clock timings are complete."""
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def timed(fn: Callable[[], object], repeats: int, warmup: int = 1, device: str = "cpu") -> tuple[list[float], object]:
    """Run ``fn`` ``warmup`` times untimed, then ``repeats`` times; return the seconds and the last result."""
    result = None
    for _ in range(warmup):
        result = fn()
        sync(device)
    seconds = []
    for _ in range(repeats):
        t = time.perf_counter()
        result = fn()
        sync(device)
        seconds.append(time.perf_counter() - t)
    return seconds, result


def summary(seconds: Sequence[float]) -> dict:
    """Median, min and max of a list of timings (all runs kept)."""
    return {"median_s": statistics.median(seconds), "min_s": min(seconds), "max_s": max(seconds),
            "runs_s": [round(s, 4) for s in seconds]}


def matmul_peak(threads: int, n: int = 2048, repeats: int = 7, device: str = "cpu") -> dict:
    """Measured float32 matrix-multiply throughput: ``torch.mm`` of two ``n x n`` matrices,
    median of ``repeats`` timed runs after one warm-up, as GFLOP/s (2 n^3 FLOPs per product)."""
    import torch

    if device == "cpu":
        torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(0)
    a = torch.rand(n, n, generator=gen).to(device)
    b = torch.rand(n, n, generator=gen).to(device)
    out = torch.empty(n, n, device=device)
    seconds, _ = timed(lambda: torch.mm(a, b, out=out), repeats, warmup=1, device=device)
    med = statistics.median(seconds)
    return {"n": n, "threads": threads if device == "cpu" else None, "device": device, **summary(seconds),
            "gflops": 2 * n**3 / med / 1e9}


def channel_files(folder: Path, mapping: Mapping[str, str] | None = None) -> dict[str, Path]:
    """Channel images of one case folder, keyed by channel name.

    Without ``mapping`` the files are ``<id>_<channel>.nii.gz`` (``<id>`` = folder name; the
    ``seg`` mask is left out). With ``mapping`` (file suffix -> channel name) a file whose name
    ends in ``-<suffix>.nii.gz`` or ``_<suffix>.nii.gz`` is that channel (BraTS: ``-t2f`` -> flair).
    """
    found: dict[str, Path] = {}
    for path in sorted(folder.glob(f"*{IMAGE_SUFFIX}")):
        stem = path.name[: -len(IMAGE_SUFFIX)]
        if mapping is None:
            prefix = f"{folder.name}_"
            if stem.startswith(prefix) and stem[len(prefix):] != "seg":
                found[stem[len(prefix):].lower()] = path
        else:
            for suffix, name in mapping.items():
                if stem.lower().endswith((f"-{suffix}", f"_{suffix}")):
                    found[name] = path
    return found


def write_json(path: str | Path | None, obj: Mapping) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(obj, indent=2) + "\n")
        print(f"results written to {path}")


def table(rows: Sequence[Sequence[object]], header: Sequence[str]) -> str:
    """A plain-text table with aligned columns."""
    cells = [[str(c) for c in header]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)

"""Which device a run uses: ``auto`` picks CUDA when PyTorch sees a GPU, else the CPU."""

from __future__ import annotations

import torch

from ..errors import BundleError


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when available; ``cuda`` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise BundleError("--device cuda was requested but no CUDA GPU is available to PyTorch "
                          f"(torch {torch.__version__}); use --device cpu or install a CUDA build of torch")
    if name not in ("cpu",) and not name.startswith("cuda"):
        raise BundleError(f"unknown device {name!r}; use auto, cpu or cuda")
    return torch.device(name)

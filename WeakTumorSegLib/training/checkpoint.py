"""Atomic training checkpoints and stage files without pickle: tensors in ``.safetensors``, the
rest in JSON or CSV.

A checkpoint holds any number of named models and optimizers plus a JSON-able ``state``
(epoch, history, random seeds). Optimizer states are flattened to tensors (``opt.<name>.<i>.<key>``)
and their parameter groups (learning rates) go to JSON, so resuming never unpickles a file.
Both files are written under temporary names and renamed into place, the JSON last: a
checkpoint whose JSON exists is complete, and a kill at any moment leaves the previous one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..io.atomic import atomic_path
from ..io.tables import write_csv


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel wrapper (or the model itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def save_checkpoint(path: str | Path, models: Mapping[str, nn.Module],
                    optimizers: Mapping[str, torch.optim.Optimizer] | None = None,
                    state: Mapping | None = None, tensors: Mapping[str, torch.Tensor] | None = None) -> None:
    """Write ``<path>.safetensors`` and ``<path>.json`` atomically (JSON last)."""
    path = Path(path)
    flat: dict[str, torch.Tensor] = {}
    groups: dict[str, list] = {}
    for name, model in models.items():
        for key, value in unwrap(model).state_dict().items():
            flat[f"model.{name}.{key}"] = value.detach().cpu().contiguous()
    for name, opt in (optimizers or {}).items():
        sd = opt.state_dict()
        for idx, st in sd["state"].items():
            for key, value in st.items():
                t = value if torch.is_tensor(value) else torch.tensor(value)
                flat[f"opt.{name}.{idx}.{key}"] = t.detach().cpu().contiguous()
        groups[name] = sd["param_groups"]
    for name, value in (tensors or {}).items():
        flat[f"data.{name}"] = value.detach().cpu().contiguous()
    with atomic_path(path.with_suffix(".safetensors")) as tmp:
        save_file(flat, str(tmp))
    with atomic_path(path.with_suffix(".json")) as tmp:
        tmp.write_text(json.dumps({"state": dict(state or {}), "param_groups": groups}, indent=1))


def checkpoint_exists(path: str | Path) -> bool:
    path = Path(path)
    return path.with_suffix(".json").is_file() and path.with_suffix(".safetensors").is_file()


def load_checkpoint(path: str | Path, models: Mapping[str, nn.Module],
                    optimizers: Mapping[str, torch.optim.Optimizer] | None = None,
                    device: torch.device | str = "cpu") -> tuple[dict, dict[str, torch.Tensor]]:
    """Restore models and optimizers in place; return ``(state, extra tensors)``."""
    path = Path(path)
    meta = json.loads(path.with_suffix(".json").read_text())
    flat = load_file(str(path.with_suffix(".safetensors")), device=str(device))
    for name, model in models.items():
        prefix = f"model.{name}."
        unwrap(model).load_state_dict({k[len(prefix):]: v for k, v in flat.items() if k.startswith(prefix)})
    for name, opt in (optimizers or {}).items():
        prefix = f"opt.{name}."
        state: dict[int, dict] = {}
        for key, value in flat.items():
            if key.startswith(prefix):
                idx, sub = key[len(prefix):].split(".", 1)
                state.setdefault(int(idx), {})[sub] = value
        opt.load_state_dict({"state": state, "param_groups": meta["param_groups"][name]})
    extra = {k[len("data."):]: v for k, v in flat.items() if k.startswith("data.")}
    return meta["state"], extra


def remove_checkpoint(path: str | Path) -> None:
    path = Path(path)
    for suffix in (".json", ".safetensors"):
        try:
            os.remove(path.with_suffix(suffix))
        except FileNotFoundError:
            pass


def json_default(o):
    """JSON for numpy scalars and paths in stage records."""
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, Path):
        return str(o)
    raise TypeError(type(o))


def write_json(path: Path, obj) -> None:
    """``obj`` as indented JSON, written atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, default=json_default) + "\n")


def write_log(path: Path, rows: list[dict]) -> None:
    """Rewrite a stage's log atomically; columns are the union of the rows' keys, in order."""
    if not rows:
        return
    columns = list(dict.fromkeys(k for row in rows for k in row))
    with atomic_path(path) as tmp:
        write_csv([{c: row.get(c, "") for c in columns} for row in rows], columns, tmp)


def write_tensors(path: Path, tensors: Mapping[str, torch.Tensor]) -> None:
    """Named tensors as safetensors, written atomically."""
    with atomic_path(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp))


def write_weights(path: Path, model: nn.Module) -> None:
    """A model's weights as safetensors, written atomically."""
    write_tensors(path, unwrap(model).state_dict())

"""Which PyTorch and GPUs the core's interpreter sees, and the device menu made from that.

:class:`DeviceProbe` asks in a background process (so that Slicer's own Python never imports PyTorch);
:func:`deviceChoices` turns its answer into the entries of the *Device* menu, and :class:`DeviceMenu`
keeps a combo box filled with them (GUI only; it is handed the widget, so this file imports no Qt).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .core import pythonExecutable
from .slicerbase import _


@dataclass(frozen=True)
class DeviceChoice:
    """One entry of the device menu: the core's ``--device`` value, a label, and whether it can be used."""

    value: str
    label: str
    enabled: bool = True


_PROBE_CODE = """
import json
try:
    import torch
except Exception as exc:
    print(json.dumps({"torch": None, "error": str(exc)}))
else:
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    print(json.dumps({"torch": torch.__version__, "cuda_build": torch.version.cuda,
                      "gpus": [torch.cuda.get_device_name(i) for i in range(n)]}))
"""


def deviceChoices(probe: Mapping[str, Any] | None) -> list[DeviceChoice]:
    """Device menu entries for the result of a device probe (``None``: not probed yet)."""
    if probe is None:
        return [DeviceChoice("auto", _("auto (checking for a GPU...)")), DeviceChoice("cpu", _("CPU"))]
    if not probe.get("torch"):
        return [DeviceChoice("auto", _("auto (PyTorch is installed on first Segment)")), DeviceChoice("cpu", _("CPU")),
                DeviceChoice("cuda", _("CUDA (install PyTorch first)"), False)]
    gpus = list(probe.get("gpus") or [])
    if gpus:
        choices = [DeviceChoice("auto", _("auto (GPU: {name})").format(name=gpus[0])), DeviceChoice("cpu", _("CPU"))]
        if len(gpus) == 1:
            choices.append(DeviceChoice("cuda", _("CUDA: {name}").format(name=gpus[0])))
        else:
            choices += [DeviceChoice(f"cuda:{i}", f"CUDA:{i}: {name}") for i, name in enumerate(gpus)]
        return choices
    why = _("PyTorch is a CPU-only build") if not probe.get("cuda_build") else _("no GPU visible to PyTorch")
    return [DeviceChoice("auto", _("auto (CPU: {why})").format(why=why)), DeviceChoice("cpu", _("CPU")),
            DeviceChoice("cuda", _("CUDA ({why})").format(why=why), False)]


class DeviceProbe:
    """Asks, in a background process, which PyTorch and GPUs the core's interpreter sees."""

    def __init__(self, python: str | None = None) -> None:
        self.result: dict | None = None
        flags = getattr(subprocess, "CREATE_NO_WINDOW", 0) if os.name == "nt" else 0
        self._process = subprocess.Popen([python or pythonExecutable(), "-c", _PROBE_CODE], stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
                                         creationflags=flags)

    def poll(self) -> dict | None:
        """The probe's result once the process has finished, else ``None``."""
        if self.result is None and self._process.poll() is not None:
            out, err = self._process.communicate()
            try:
                self.result = json.loads(out.strip().splitlines()[-1])
            except (ValueError, IndexError):
                logging.warning(f"WeakTumorSeg: device probe failed: {err.strip()[-500:]}")
                self.result = {"torch": None, "error": err.strip()}
        return self.result

    def wait(self, timeout: float = 120) -> dict:
        """Block until the probe has finished."""
        self._process.wait(timeout)
        return self.poll() or {}


class DeviceMenu:
    """Keeps the *Device* combo box filled with :func:`deviceChoices`; ``onChosen(value)`` is called when
    the user picks an entry (not when the menu is refilled)."""

    def __init__(self, comboBox: Any, onChosen: Callable[[str], None]) -> None:
        self.comboBox = comboBox
        self.onChosen = onChosen
        self._updating = False
        comboBox.connect("currentIndexChanged(int)", self._onIndexChanged)

    def fill(self, probe: Mapping[str, Any] | None, current: str) -> None:
        """Show the entries for ``probe`` (None: not probed yet) and select ``current`` again."""
        combo = self.comboBox
        self._updating = True
        try:
            combo.clear()
            for choice in deviceChoices(probe):
                combo.addItem(choice.label, choice.value)
                item = combo.model().item(combo.count - 1) if hasattr(combo.model(), "item") else None
                if not choice.enabled and item is not None:
                    item.setEnabled(False)
        finally:
            self._updating = False
        self.select(current)
        if probe is not None:
            combo.toolTip = _("PyTorch {torch}; GPUs: {gpus}").format(
                torch=probe.get("torch") or _("not installed"), gpus=", ".join(probe.get("gpus") or []) or _("none"))

    def select(self, value: str) -> None:
        """Select the entry for ``value`` (the first one when there is none)."""
        index = self.comboBox.findData(value)
        self._updating = True
        try:
            self.comboBox.currentIndex = index if index >= 0 else 0
        finally:
            self._updating = False

    def _onIndexChanged(self, index: int) -> None:
        value = self.comboBox.itemData(index)
        if not self._updating and value:
            self.onChosen(str(value))

"""Installing what the core needs into Slicer's Python, on first use (never at import).

PyTorch comes from the PyTorch extension (``PyTorchUtils``, which picks the CUDA build that fits the
driver) when it is installed, else from pip after a confirmation. The other packages come from the
module's ``Resources/requirements.txt``. The checks (:func:`torchInstalled`, :func:`missingRequirements`)
run anywhere; :func:`installDependencies` may show dialogs and is called from the GUI and the self-test only.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import re
import sys
from pathlib import Path

import slicer

from .core import MODULE_DIR, SegmentationError
from .slicerbase import _

#: PyTorch requirement of the core (installed separately from the requirements file).
TORCH_REQUIREMENT = "torch>=2.1"
#: The core's other requirements (kept in step with ``pyproject.toml``).
REQUIREMENTS_FILE = MODULE_DIR / "Resources" / "requirements.txt"


def torchInstalled() -> bool:
    """True when PyTorch can be imported (checked without importing it)."""
    return importlib.util.find_spec("torch") is not None


def requirementName(requirement: str) -> str:
    """The distribution name of a requirement line (``numpy>=1.24`` -> ``numpy``)."""
    return re.split(r"[\s<>=!~;\[]", requirement.strip(), maxsplit=1)[0]


def _installedVersion(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _satisfied(line: str) -> bool:
    """Whether the installed packages satisfy one requirement line (without ``packaging``: whether the
    distribution is installed at all)."""
    try:
        from packaging.requirements import Requirement
    except ImportError:
        return _installedVersion(requirementName(line)) is not None
    requirement = Requirement(line)
    if requirement.marker is not None and not requirement.marker.evaluate():
        return True
    installed = _installedVersion(requirement.name)
    return installed is not None and requirement.specifier.contains(installed, prereleases=True)


def missingRequirements(path: str | os.PathLike | None = None) -> list[str]:
    """Lines of the requirements file (default :data:`REQUIREMENTS_FILE`) that the installed packages do
    not satisfy."""
    lines = [line.split("#", 1)[0].strip() for line in Path(path or REQUIREMENTS_FILE).read_text().splitlines()]
    return [line for line in lines if line and not line.startswith("-") and not _satisfied(line)]


def installDependencies(interactive: bool = True) -> bool:
    """Install PyTorch and the missing requirements; False when the user declines. A restart is proposed
    when an already imported package was updated."""
    if not torchInstalled():
        if not _installTorch(interactive):
            return False
        importlib.invalidate_caches()
        if not torchInstalled():
            raise SegmentationError("PyTorch could not be installed; see the Python console for pip's messages")
    missing = missingRequirements()
    return not missing or _installRequirements(missing, interactive)


def _installTorch(interactive: bool) -> bool:
    try:
        import PyTorchUtils
    except ImportError:
        PyTorchUtils = None
    if PyTorchUtils is not None:
        torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(
            askConfirmation=interactive, torchVersionRequirement=TORCH_REQUIREMENT[len("torch"):])
        return torch is not None
    if interactive and not slicer.util.confirmOkCancelDisplay(
            _("WeakTumorSeg needs PyTorch ({req}), a download of up to a few GB. Install it now?\n\n"
              "For an NVIDIA GPU, cancel, install the 'PyTorch' extension from the Extensions Manager, "
              "restart Slicer and click Segment again: it installs the CUDA build that fits your driver.")
            .format(req=TORCH_REQUIREMENT), _("Install PyTorch?")):
        return False
    slicer.util.pip_install(TORCH_REQUIREMENT)
    return True


def _installRequirements(missing: list[str], interactive: bool) -> bool:
    try:
        import slicer.packaging as packaging
    except ImportError:
        packaging = None
    if packaging is not None and hasattr(packaging, "pip_ensure"):
        try:
            packaging.pip_ensure(missing, requester="WeakTumorSeg", prompt_install=interactive, skip_in_testing=False)
        except RuntimeError as exc:
            if "declined" in str(exc):
                return False
            raise
        return True
    return _pipInstall(missing, interactive)


def _pipInstall(missing: list[str], interactive: bool) -> bool:
    """Slicer without ``slicer.packaging``: confirm, install, propose a restart when needed."""
    if interactive and not slicer.util.confirmOkCancelDisplay(
            _("WeakTumorSeg needs these Python packages:\n{packages}\n\nInstall them now?").format(
                packages="\n".join(missing)), _("Install Python packages?")):
        return False
    loaded = [req for req in missing if requirementName(req).replace("-", "_").lower() in sys.modules]
    slicer.util.pip_install(" ".join(missing))
    importlib.invalidate_caches()
    if loaded and interactive and slicer.util.confirmYesNoDisplay(
            _("Updated packages were already loaded ({packages}); restart Slicer now so that the new "
              "versions are used?").format(packages=", ".join(loaded)), _("Restart Slicer?")):
        slicer.util.restart()
    return True

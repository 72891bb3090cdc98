"""Slicer's scripted-module base classes, or stand-ins where Slicer's GUI is absent.

With the ``slicer-core`` wheel (MRML and VTK, no Qt) only the Logic is usable; the stand-ins let
``WeakTumorSeg.py`` be imported there all the same. :data:`GUI_AVAILABLE` tells which case applies,
:data:`qt` is Qt's module or None, and ``_`` is Slicer's translation function (or the identity).
"""

from __future__ import annotations

from typing import Any

try:  # Slicer's GUI (absent with the slicer-core wheel, where only the Logic is usable)
    import qt
except ImportError:
    qt = None

__all__ = ["GUI_AVAILABLE", "ScriptedLoadableModule", "ScriptedLoadableModuleLogic", "ScriptedLoadableModuleTest",
           "ScriptedLoadableModuleWidget", "VTKObservationMixin", "WithinRange", "parameterNodeWrapper", "qt", "_"]

if qt is not None:
    from slicer.parameterNodeWrapper import WithinRange, parameterNodeWrapper
    from slicer.ScriptedLoadableModule import (
        ScriptedLoadableModule,
        ScriptedLoadableModuleLogic,
        ScriptedLoadableModuleTest,
        ScriptedLoadableModuleWidget,
    )
    from slicer.util import VTKObservationMixin

    try:
        from slicer.i18n import tr as _
    except ImportError:  # Slicer < 5.4

        def _(text: str) -> str:
            return text

    GUI_AVAILABLE = True
else:
    GUI_AVAILABLE = False

    def _(text: str) -> str:
        return text

    class ScriptedLoadableModule:  # type: ignore[no-redef]
        """Stand-in (no Slicer GUI)."""

        def __init__(self, parent: Any) -> None:
            self.parent = parent

    class ScriptedLoadableModuleWidget:  # type: ignore[no-redef]
        """Stand-in (no Slicer GUI)."""

        def __init__(self, parent: Any = None) -> None:
            self.parent = parent

    class ScriptedLoadableModuleLogic:  # type: ignore[no-redef]
        """Stand-in (no Slicer GUI)."""

        def __init__(self, parent: Any = None) -> None:
            self.parent = parent

    class ScriptedLoadableModuleTest:  # type: ignore[no-redef]
        """Stand-in (no Slicer GUI); deliberately not a unittest.TestCase so pytest ignores it."""

    class VTKObservationMixin:  # type: ignore[no-redef]
        """Stand-in (no Slicer GUI)."""

        def __init__(self) -> None:
            pass

    class WithinRange:  # type: ignore[no-redef]
        """Stand-in (no Slicer GUI)."""

        def __init__(self, *args: Any) -> None:
            pass

    def parameterNodeWrapper(cls: type) -> type:  # type: ignore[no-redef]
        """Stand-in (no Slicer GUI): the class unchanged."""
        return cls

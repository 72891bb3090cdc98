"""The bundle line and the per-channel volume selectors of the module's Inputs section.

GUI only: it is handed the module's widgets (``ui``) and Logic, so this file imports no Qt.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from .core import BundleInfo, SegmentationError, readBundle
from .slicerbase import _


class InputsPanel:
    """Shows the chosen bundle and one labelled volume selector per channel it needs (``inputVolume<i>``
    of the parameter node holds the volume of the bundle's channel ``i``)."""

    def __init__(self, ui: Any, logic: Any, parameterNode: Callable[[], Any], maxChannels: int) -> None:
        self.ui = ui
        self.logic = logic
        self.parameterNode = parameterNode
        self.maxChannels = maxChannels

    def showBundle(self, path: str) -> BundleInfo | None:
        """Describe the bundle at ``path`` under the path field; returns it when the module can use it."""
        try:
            bundle = readBundle(path)
        except SegmentationError as exc:
            self.ui.bundleInfoLabel.text, self.ui.bundleInfoLabel.toolTip = str(exc), ""
            return None
        if len(bundle.channels) > self.maxChannels:
            self.ui.bundleInfoLabel.text = _("Bundle '{name}' needs {n} channels; this module supports up to {m}.") \
                .format(name=bundle.name, n=len(bundle.channels), m=self.maxChannels)
            return None
        self.ui.bundleInfoLabel.text = _("Bundle '{name}': channels {channels}").format(
            name=bundle.name, channels=", ".join(bundle.channels))
        self.ui.bundleInfoLabel.toolTip = bundle.description
        if bundle.training_warnings:  # a run can finish and still have failed
            self.ui.bundleInfoLabel.text += " " + _("(may not work: its training warned)")
            self.ui.bundleInfoLabel.toolTip = "\n".join(bundle.training_warnings)
        return bundle

    def showChannels(self, channels: Sequence[str]) -> None:
        """One labelled volume selector per channel, filled with a volume named after it where empty."""
        parameterNode = self.parameterNode()
        for i in range(self.maxChannels):
            label, selector = getattr(self.ui, f"inputVolumeLabel{i}"), getattr(self.ui, f"inputVolumeSelector{i}")
            label.setVisible(i < len(channels))
            selector.setVisible(i < len(channels))
            if i >= len(channels):
                continue
            name = channels[i].upper() if len(channels[i]) <= 5 else channels[i]
            label.text = _("{channel} volume:").format(channel=name)
            selector.toolTip = _("Volume for the bundle's '{channel}' channel").format(channel=channels[i])
            if parameterNode and not getattr(parameterNode, f"inputVolume{i}"):
                guess = self.logic.guessVolumeForChannel(channels[i])
                if guess is not None:
                    setattr(parameterNode, f"inputVolume{i}", guess)

    def inputVolumes(self, bundle: BundleInfo | None) -> dict[str, Any]:
        """Selected volume per bundle channel (only the channels that have one)."""
        parameterNode = self.parameterNode()
        if not bundle or not parameterNode:
            return {}
        volumes = {c: getattr(parameterNode, f"inputVolume{i}") for i, c in enumerate(bundle.channels)}
        return {channel: node for channel, node in volumes.items() if node is not None}

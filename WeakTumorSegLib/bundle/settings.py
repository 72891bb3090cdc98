"""The inference settings of one run, resolved once from the bundle and the user's overrides.

``segment``, ``evaluate`` and the Slicer module (through ``segment``'s command line) all take
their settings from :meth:`InferenceSettings.resolve`: the bundle's ``inference`` section
(``bundle.json``) over the defaults below, then every option the user gave. Each value records
where it came from (``bundle`` or the option's name), and ``report.json`` / ``metrics.json``
carry both. This module imports neither torch nor numpy, so the Slicer module can read a
bundle's settings before PyTorch is installed.

The thresholds, the stride and the batch size belong to the paper's method (Yoo et al., sections
2.4, 2.5 and 3; the stride is not given there); the scalp margin, slice smoothing, FLAIR trim and
component filter are not in the paper and are off by default (docs/options.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path

from ..errors import BundleError

#: The largest neighbour weight of the slice smoothing: the slice itself must weigh at least as
#: much as each neighbour.
MAX_SLICE_SMOOTHING = 1.0 / 3.0
#: The scalp margin must lie below this many mm.
MAX_SCALP_MARGIN_MM = 1000.0

#: The value that turns an optional step off.
OFF = 0.0
#: Settings a user may override, with the command-line option that does it.
OPTIONS = {"filter_threshold": "--threshold", "scalp_margin_mm": "--scalp-margin",
           "slice_smoothing": "--slice-smoothing", "flair_trim": "--flair-trim",
           "keep_components": "--keep-components", "final_weight": "--final-weight", "final_mode": "--final-mode",
           "final_gate": "--final-gate", "gate_low": "--gate-low"}
#: The post-processing settings among them (segment and evaluate; ``--threshold`` is segment's own).
POSTPROCESS_OPTIONS = tuple(name for name in OPTIONS if name != "filter_threshold")
#: How the final segmenter's map makes the main mask (``inference.final_mode``).
FINAL_MODES = ("average", "extend")
#: Which patches the final segmenter reads (``inference.final_gate``).
FINAL_GATES = ("classifier", "tissue")
#: Closed ranges ``(low, high, how high is written)`` of the settings that have one.
_RANGES = {"filter_threshold": (0.0, 1.0, "1"), "slice_smoothing": (0.0, MAX_SLICE_SMOOTHING, "1/3"),
           "flair_trim": (0.0, 1.0, "1"), "keep_components": (0.0, 1.0, "1"), "final_weight": (0.0, 1.0, "1"),
           "gate_low": (0.0, 1.0, "1")}


@dataclass(frozen=True)
class InferenceSettings:
    """Everything that decides how one volume is segmented, besides the networks."""

    stride: int = 64
    """Tile stride in pixels of the 128-pixel patches (not given in the paper; 64: every interior pixel is
    covered by up to four patches)."""
    gate_threshold: float = 0.5
    """A patch whose classifier output is at or below this is gated out (empty map)."""
    gate_low: float = OFF
    """A patch above this (and at or below ``gate_threshold``) passes the gate when consecutive slices'
    patches above it join it to one above ``gate_threshold`` (hysteresis; 0: off)."""
    mask_threshold: float = 0.5
    """The fused probability is binarised above this."""
    filter_threshold: float = 0.2
    """A non-empty slice whose difference score is below this is flagged for review."""
    undecided_margin: float = 0.1
    """A slice whose classifier output lies this close to the gate is flagged as undecided."""
    scalp_margin_mm: float = OFF
    """Clear masks this many mm below the head's outer surface (0: off; for images that are not
    skull-stripped)."""
    slice_smoothing: float = OFF
    """Weight of each neighbouring slice's classifier output in the gate's average (0: off)."""
    flair_trim: float = OFF
    """Clear mask voxels whose FLAIR is below this fraction of the mask's median FLAIR (0: off)."""
    keep_components: float = OFF
    """Keep the mask's 3D components of at least this fraction of the largest one (0: off)."""
    final_weight: float = 1.0
    """With a final segmenter in the bundle: its map's weight in the main map, the fused map's 1 minus it
    (1: the final segmenter alone; 0: the final segmenter is not run; bundles without one ignore it)."""
    final_mode: str = "average"
    """``average``: the main map is the weighted mean above; ``extend``: the fused mask, each of its
    lesions extended by the final segmenter's 3D components that touch it (``final_weight`` above 0)."""
    final_gate: str = "classifier"
    """Which patches the final segmenter reads: ``classifier``, those the classifier's gate passes (as
    the fused segmenters); ``tissue``, every patch with tissue (it was trained on tumour-free slices too)."""
    batch_size: int = 32
    """Patches per forward pass."""
    sources: Mapping[str, str] = field(default_factory=dict, compare=False)
    """Where each overridable setting came from: ``bundle`` or its command-line option."""

    @classmethod
    def resolve(cls, section: Mapping | None = None, overrides: Mapping[str, float | str | None] | None = None,
                path: str | Path | None = None) -> "InferenceSettings":
        """The defaults, then the bundle's ``inference`` ``section``, then the ``overrides`` that
        are not None (keys of :data:`OPTIONS`). A bundle value that is missing or null means
        "off" for the optional steps. Raises :class:`BundleError` (naming ``path``, the bundle)
        for an unknown key or a value out of range."""
        names = [f.name for f in fields(cls) if f.name != "sources"]
        section = dict(section or {})
        unknown = sorted(set(section) - set(names))
        if unknown:
            raise BundleError(f"unknown inference setting(s): {', '.join(unknown)}", path)
        given = {k: v for k, v in (overrides or {}).items() if v is not None}
        wrong = sorted(set(given) - set(OPTIONS))
        if wrong:
            raise ValueError(f"these inference settings cannot be overridden: {', '.join(wrong)}")
        values: dict[str, object] = {}
        for name in names:
            default = getattr(cls, name)
            raw = given.get(name, section.get(name, default))
            try:
                values[name] = type(default)(default if raw is None else raw)
            except (TypeError, ValueError):
                raise BundleError(f"inference.{name} must be a number, got {raw!r}", path) from None
        settings = cls(**values, sources={k: OPTIONS[k] if k in given else "bundle" for k in OPTIONS})
        settings.check(path)
        return settings

    def check(self, path: str | Path | None = None) -> None:
        """Raise :class:`BundleError` when a setting lies outside its range."""
        for name, (low, high, written) in _RANGES.items():
            value = getattr(self, name)
            if not low <= value <= high:
                raise BundleError(f"inference.{name} must lie in [0, {written}], got {value:g}", path)
        if not 0.0 <= self.scalp_margin_mm < MAX_SCALP_MARGIN_MM:
            raise BundleError(f"inference.scalp_margin_mm must lie in [0, {MAX_SCALP_MARGIN_MM:g}) mm, "
                              f"got {self.scalp_margin_mm:g}", path)
        if self.stride < 1 or self.batch_size < 1:
            raise BundleError("inference.stride and inference.batch_size must be at least 1", path)
        if 0 < self.gate_threshold <= self.gate_low:
            raise BundleError(f"inference.gate_low must lie below gate_threshold ({self.gate_threshold:g}), "
                              f"got {self.gate_low:g}", path)
        if self.final_mode not in FINAL_MODES:
            raise BundleError(f"inference.final_mode must be one of {', '.join(FINAL_MODES)}, got {self.final_mode!r}",
                              path)
        if self.final_gate not in FINAL_GATES:
            raise BundleError(f"inference.final_gate must be one of {', '.join(FINAL_GATES)}, got {self.final_gate!r}",
                              path)

    def section(self) -> dict:
        """The settings as a bundle's ``inference`` section (without their sources)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "sources"}

    def source(self, name: str) -> str:
        """Where the setting ``name`` came from: ``bundle`` or the option that set it."""
        return self.sources.get(name, "bundle")

    def report(self) -> dict:
        """The post-processing settings and their sources, as ``report.json`` and ``metrics.json``
        record them (``scalp_margin_mm``, ``scalp_margin_source``, ...)."""
        out: dict[str, object] = {}
        for name in POSTPROCESS_OPTIONS:
            out[name] = getattr(self, name)
            out[name.removesuffix("_mm") + "_source"] = self.source(name)
        return out

"""The files ``evaluate`` writes: ``metrics.json``, ``tables.md`` (Tables 2-6 and C.1 in the
paper's style), ``per_volume.csv``, ``per_slice.csv`` and the filter curve as CSV and PNG, all
written atomically (they appear together or not at all)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ..io.atomic import OutputSet
from ..io.tables import write_csv
from ..metrics import RESAMPLES, dice_from_counts
from .summary import CONVENTIONS, CaseEvaluation, volume_dice

#: Output file names inside ``--out``.
OUTPUTS = {"metrics": "metrics.json", "tables": "tables.md", "per_volume": "per_volume.csv",
           "per_slice": "per_slice.csv", "filter_curve": "filter_curve.csv", "filter_plot": "filter_curve.png"}

def _fmt(x, digits: int = 6) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return ""
    if isinstance(x, (bool, np.bool_)):
        return str(int(x))
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    return f"{float(x):.{digits}f}"


def per_slice_rows(cases: Sequence[CaseEvaluation], keys: Sequence[str]) -> tuple[list[dict], list[str]]:
    columns = ["patient", "slice", "truth_pixels", "label_csv", "p_tumor", "difference_score", "flagged",
               "flag_reason"]
    for key in keys:
        columns += [f"pixels_{key}", f"overlap_{key}", f"dice_{key}"]
    rows = []
    for c in cases:
        dices = {k: dice_from_counts(*c.models[k], c.truth_pixels) for k in keys}
        for s in range(c.slices):
            row = {"patient": c.id, "slice": s, "truth_pixels": int(c.truth_pixels[s]),
                   "label_csv": "" if c.label_csv is None else int(c.label_csv[s]),
                   "p_tumor": _fmt(c.p_tumor[s]), "difference_score": _fmt(c.difference_score[s]),
                   "flagged": int(c.flagged[s]), "flag_reason": c.flag_reason[s]}
            for k in keys:
                row[f"pixels_{k}"] = int(c.models[k][0][s])
                row[f"overlap_{k}"] = int(c.models[k][1][s])
                row[f"dice_{k}"] = _fmt(dices[k][s])
            rows.append(row)
    return rows, columns


def per_volume_rows(cases: Sequence[CaseEvaluation], keys: Sequence[str], seeds: bool) -> tuple[list[dict], list[str]]:
    columns = ["patient", "slices", "tumour_slices", "truth_voxels", "tumour_bearing"]
    for key in keys:
        columns += [f"dice_3d_{key}", f"dice_per_slice_paper_{key}", f"voxels_{key}", f"voxels_away_{key}"]
    if seeds:
        columns += ["positive_seed_voxels", "positive_seed_overlap", "negative_seed_voxels", "negative_seed_overlap"]
    columns += ["flagged_slices", "seconds"]
    rows = []
    for c in cases:
        row = {"patient": c.id, "slices": c.slices, "tumour_slices": int((c.truth_pixels > 0).sum()),
               "truth_voxels": int(c.truth_pixels.sum()), "tumour_bearing": int(c.truth_pixels.sum() > 0),
               "flagged_slices": int(np.sum(c.flagged)), "seconds": f"{c.seconds:.2f}"}
        for k in keys:
            row[f"dice_3d_{k}"] = _fmt(volume_dice(c, k))
            row[f"dice_per_slice_paper_{k}"] = _fmt(float(dice_from_counts(*c.models[k], c.truth_pixels).mean()))
            row[f"voxels_{k}"] = int(c.models[k][0].sum())
            row[f"voxels_away_{k}"] = c.away.get(k, "")
        if seeds:
            s = c.seeds
            row["positive_seed_voxels"] = s["positive_voxels"]
            row["positive_seed_overlap"] = _fmt(s["positive_in_truth"] / s["positive_voxels"]
                                                if s["positive_voxels"] else float("nan"))
            row["negative_seed_voxels"] = s["negative_voxels"]
            row["negative_seed_overlap"] = _fmt(s["negative_outside_truth"] / s["negative_voxels"]
                                                if s["negative_voxels"] else float("nan"))
        rows.append(row)
    return rows, columns


FILTER_COLUMNS = ("threshold", "slices_kept", "slices_removed", "percent_removed", "percent_removed_of_nonempty",
                  "dice_kept_per_slice_paper", "dice_removed_per_slice_paper", "dice_kept_per_slice_tumour")


def _interval_line(seg: dict, keys) -> list[str]:
    """How far Table 4's per-volume means can be trusted: each one's bootstrap interval over the patients."""
    shown = [k for k in keys if seg[k]["available"]
             and all(x is not None and math.isfinite(x) for x in seg[k].get("per_volume_3d_interval") or [None])]
    if not shown:
        return []
    rows = [(seg[k]["label"], seg[k]["per_volume_3d_interval"]) for k in shown]
    return ["", ("Per-volume 3D Dice, 95 % interval of the mean (bootstrap over the "
                 f"{seg[shown[0]]['volumes']} tumour-bearing volumes, {RESAMPLES:,} resamples): "
                 + "; ".join(f"{label} {iv[0]:.2f}-{iv[1]:.2f}" for label, iv in rows) + ".")]


def _num(x, digits: int = 4) -> str:
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.{digits}f}"


def tables_markdown(metrics: Mapping) -> str:
    """Markdown tables in the style of Yoo et al.'s Tables 2-6 and C.1, for a README or a model card."""
    cfg, cohort = metrics["configuration"], metrics["cohort"]
    out = [f"### Evaluation of bundle `{metrics['bundle']['name']}`", "",
           (f"{cohort['patients']} patients ({cfg['patients_source']}), {cohort['slices']} axial slices, "
            f"{cohort['tumour_slices']} with tumour; {cohort['tumour_bearing_volumes']} tumour-bearing volumes. "
            f"Data: `{cfg['data']}`."), "",
           "Dice conventions: **per-volume 3D** = " + CONVENTIONS["per_volume_3d"] + "; **per-slice (paper)** = "
           + CONVENTIONS["per_slice_paper"] + "; **per-slice (tumour slices)** = " + CONVENTIONS["per_slice_tumour"]
           + ".", ""]
    c = metrics["classifier"]
    out += [f"**Table 2 - classifier** (slice score p_tumor, decision at p > {c['decision_threshold']:g})", "",
            "| slice truth | slices | tumour slices | AUC | sensitivity | specificity |", "|---|---|---|---|---|---|"]
    for key, name in (("from_masks", "ground-truth mask"), ("from_labels", "slice-label CSV")):
        r = c.get(key)
        if r:
            out.append(f"| {name} | {r['slices']} | {r['tumour_slices']} | {_num(r['auc'])} | "
                       f"{_num(r['sensitivity'])} | {_num(r['specificity'])} |")
    if cfg.get("slice_smoothing"):
        w = cfg["slice_smoothing"]
        out += ["", (f"Slice smoothing {w:g} ({cfg['slice_smoothing_source']}): each p_tumor is the classifier's "
                     f"output averaged with its neighbouring slices' (weights {w:g}, {1 - 2 * w:g}, {w:g}), "
                     "before the gate.")]
    s = metrics["seeds"]
    method = (cfg.get("seed_method") or {}).get("method", "rise")
    out += ["", f"**Table 3 - seed overlap** ({method} seeds; voxels pooled over patients)", ""]
    if s.get("computed"):
        out += ["| seeds | voxels | overlap |", "|---|---|---|",
                f"| positive (inside truth) | {s['positive_voxels']} | {_num(s['positive_overlap'])} |",
                f"| negative (outside truth) | {s['negative_voxels']} | {_num(s['negative_overlap'])} |",
                "", f"RISE masks: {cfg['rise']['n_masks']}." if method == "rise" else ""]
    else:
        out.append(f"Not computed ({s.get('reason', '')}).")
    seg = metrics["segmentation"]
    final = ("final",) if seg.get("final", {}).get("available") else ()
    for table, title, keys in (("4", "Table 4 - Dice of each step", ("s0", "s_os", "s_us", "fused", *final)),
                               ("5", "Table 5 - comparison to baselines",
                                ("s0", "fused", *final, "seed_only", "residual"))):
        out += ["", f"**{title}**", "",
                "| model | per-volume 3D Dice | per-slice Dice (paper) | per-slice Dice (tumour slices) |",
                "|---|---|---|---|"]
        for key in keys:
            e = seg[key]
            if e["available"]:
                out.append(f"| {e['label']} | {_num(e['per_volume_3d'])} | {_num(e['per_slice_paper'])} | "
                           f"{_num(e['per_slice_tumour'])} |")
            else:
                out.append(f"| {e['label']} | not available | not available | not available |")
        if table == "4":
            out += _interval_line(seg, keys)
        if table == "4" and cfg.get("scalp_margin_mm"):
            out += ["", (f"Scalp margin {cfg['scalp_margin_mm']:g} mm ({cfg['scalp_margin_source']}): every "
                         "segmenter's mask is cleared that close to the head's outer surface.")]
        if table == "4" and cfg.get("flair_trim"):
            out += ["", (f"FLAIR trim {cfg['flair_trim']:g} ({cfg['flair_trim_source']}): every segmenter's mask "
                         f"loses its voxels whose FLAIR is below {cfg['flair_trim']:g} times the median FLAIR "
                         "inside that mask.")]
        if table == "4" and cfg.get("keep_components"):
            out += ["", (f"Components {cfg['keep_components']:g} ({cfg['keep_components_source']}): every segmenter's "
                         f"mask keeps its 3D connected components of at least {cfg['keep_components']:g} times the "
                         "largest one's voxels, each slice's holes filled.")]
        if table == "4" and final and cfg.get("final_mode") == "extend":
            out += ["", (f"Final mode extend ({cfg['final_mode_source']}): the final segmenter's row is the fused "
                         "mask, each lesion grown by the final segmenter's 3D components that touch it.")]
        elif table == "4" and final and cfg.get("final_weight", 1.0) < 1.0:
            out += ["", (f"Final weight {cfg['final_weight']:g} ({cfg['final_weight_source']}): the final segmenter's "
                         f"map is averaged with the fused map, weights {cfg['final_weight']:g} and "
                         f"{1 - cfg['final_weight']:g}, before it is binarised.")]
        if table == "4" and final and cfg.get("final_gate") == "tissue":
            out += ["", (f"Final gate tissue ({cfg['final_gate_source']}): the final segmenter reads every patch "
                         "with tissue, not only those the classifier gates.")]
        if table == "5" and seg["residual"]["available"]:
            res = cfg["residual"]
            out += ["", (f"Residual threshold {res['threshold']:g} ({res['threshold_source']}), "
                         f"{res['median']}x{res['median']} median per slice.")]
    fc = metrics["filter_curve"]["rows"]
    out += ["", ("**Table 6 / A.1 - difference-score filter** (fused model; a slice is removed when its mask is "
                 "non-empty and its difference score is below the threshold; per-slice Dice, paper convention)"), "",
            ("| threshold | Dice of kept slices | Dice of removed slices | Dice of kept tumour slices "
             "| % slices removed |"),
            "|---|---|---|---|---|"]
    for r in fc:
        out.append(f"| {r['threshold']:.1f} | {_num(r['dice_kept_per_slice_paper'])} | "
                   f"{_num(r['dice_removed_per_slice_paper'])} | {_num(r['dice_kept_per_slice_tumour'])} | "
                   f"{_num(r['percent_removed'], 2)} |")
    cor = metrics["correlation"]
    out += ["", "**Table C.1 - correlation**", "",
            (f"Pearson r between difference score and per-slice Dice of the fused model: "
             f"{_num(cor['pearson_difference_score_vs_dice'])} over {cor['slices']} slices with a non-empty mask."),
            ""]
    return "\n".join(out)


def curve_series(rows: Sequence[Mapping]) -> dict[str, list[float]]:
    """The filter curve's plotted series (NaN = a gap): thresholds, Dice of the kept slices, Dice of
    the kept tumour slices (a gap where the filter keeps no non-empty mask: their Dice would be the
    0 of empty masks) and the percentage of slices removed."""
    nan = float("nan")
    val = lambda r, k: nan if r[k] is None else float(r[k])  # noqa: E731
    no_mask_kept = [r["percent_removed_of_nonempty"] is not None and r["percent_removed_of_nonempty"] >= 100
                    for r in rows]
    return {"threshold": [float(r["threshold"]) for r in rows],
            "kept": [val(r, "dice_kept_per_slice_paper") for r in rows],
            "kept_tumour": [nan if gap else val(r, "dice_kept_per_slice_tumour") for r, gap in zip(rows, no_mask_kept)],
            "removed": [val(r, "percent_removed") for r in rows]}


def plot_filter_curve(rows: Sequence[Mapping], path: str | Path, title: str = "",
                      threshold: float | None = None) -> None:
    """PNG of the filter curve (:func:`curve_series`) with ``threshold`` (the bundle's) marked."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    series = curve_series(rows)
    t = series["threshold"]
    fig = Figure(figsize=(6.4, 4.0), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(t, series["kept"], "o-", color="tab:blue", label="Dice of kept slices (per slice, empty slices count 1)")
    ax.plot(t, series["kept_tumour"], "s--", color="tab:cyan", label="Dice of kept tumour slices")
    if threshold is not None:
        ax.axvline(threshold, color="0.4", linestyle=":", label=f"bundle's threshold ({threshold:g})")
    ax.set_xlabel("difference-score threshold")
    ax.set_ylabel("mean Dice")
    ax.set_ylim(0, 1.02)
    ax2 = ax.twinx()
    ax2.plot(t, series["removed"], "^-", color="tab:red", label="% slices removed")
    ax2.set_ylabel("% slices removed", color="tab:red")
    ax2.set_ylim(0, max(5.0, max((x for x in series["removed"] if x == x), default=0) * 1.1))
    lines = ax.get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], loc="lower right", fontsize=8)
    ax.set_title(title or "Difference-score filter (Yoo et al., Tables 6 / A.1)", fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(str(path), format="png")


def write_outputs(out_dir: str | Path, metrics: Mapping, evaluations: Sequence[CaseEvaluation]) -> list[Path]:
    """Write every output file atomically (all appear together or none)."""
    keys = [k for k, e in metrics["segmentation"].items() if e["available"]]
    seeds = bool(metrics["seeds"].get("computed"))
    slice_rows, slice_cols = per_slice_rows(evaluations, keys)
    vol_rows, vol_cols = per_volume_rows(evaluations, keys, seeds)
    curve = metrics["filter_curve"]["rows"]
    with OutputSet(out_dir) as out:
        Path(out.path(OUTPUTS["metrics"])).write_text(json.dumps(metrics, indent=2, allow_nan=False) + "\n")
        Path(out.path(OUTPUTS["tables"])).write_text(tables_markdown(metrics))
        write_csv(vol_rows, vol_cols, out.path(OUTPUTS["per_volume"]))
        write_csv(slice_rows, slice_cols, out.path(OUTPUTS["per_slice"]))
        write_csv([{k: _fmt(r[k]) if k != "threshold" else f"{r[k]:.1f}" for k in FILTER_COLUMNS} for r in curve],
                  FILTER_COLUMNS, out.path(OUTPUTS["filter_curve"]))
        plot_filter_curve(curve, out.path(OUTPUTS["filter_plot"]),
                          f"{metrics['bundle']['name']}: difference-score filter (fused model)",
                          metrics["configuration"].get("difference_threshold"))
        return out.commit()

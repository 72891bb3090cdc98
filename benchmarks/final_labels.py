"""How good the final segmenter's labels are, and what label refinements would change: the pooled
2D Dice of the masked tumour tiles' labels against the true masks, and how many true tumour tiles
get a label, for the fused masks as the `final` stage takes them and for refinements of them.

Refinements measured (none changes a tumour-free slice's empty label):

* ``flair_growth``: each masked tile's mask grown into the FLAIR-bright tissue connected to it
  (FLAIR at least the ``--quantile`` quantile of the patient's FLAIR inside its masks);
* ``flagged_kept``: the fused mask also on tumour slices the filter flagged (more labels, worse ones);
* ``neighbours``: a weak tumour slice between two masked slices of the same patient gets the
  intersection of their masks;
* ``grown_<p>`` (``--grow``): the stage's own refinement, ``final.grow`` = p
  (:func:`WeakTumorSegLib.stages.label_refinement.grow_labels`), one labelling per value.

Uses the training patients of the bundle (its split) and their masks, for measurement only::

    python benchmarks/final_labels.py --bundle inner-default --data lgg40 --json labels.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from WeakTumorSegLib.bundle.load import Bundle  # noqa: E402
from WeakTumorSegLib.io.cohort import discover  # noqa: E402
from WeakTumorSegLib.metrics import dice_from_counts  # noqa: E402
from WeakTumorSegLib.stages.final import MASKED, WEAK  # noqa: E402
from WeakTumorSegLib.training.final_data import FinalTiles, collect_tiles  # noqa: E402


def quality(masks: np.ndarray, labelled: np.ndarray, truth: np.ndarray) -> dict:
    """Pooled Dice of ``masks`` on the ``labelled`` tumour tiles, and their share of the true tumour tiles."""
    m, t = masks[labelled].astype(bool), truth[labelled].astype(bool)
    tumour = truth.reshape(len(truth), -1).any(1)
    return {"dice": round(float(dice_from_counts(m.sum(), (m & t).sum(), t.sum())), 4),
            "tiles_labelled": int(labelled.sum()), "true_tumour_tiles": int(tumour.sum()),
            "true_tumour_tiles_labelled": int((labelled & tumour).sum())}


def flair_growth(tiles: FinalTiles, flair: int, quantile: float) -> np.ndarray:
    out = tiles.mask.copy()
    for pid in np.unique(tiles.patient):
        sel = np.flatnonzero((tiles.patient == pid) & (tiles.kind == MASKED) & (tiles.label == 1))
        if not len(sel):
            continue
        f = tiles.x[sel, flair]
        level = np.quantile(f[tiles.mask[sel] > 0], quantile)
        for j, i in enumerate(sel):
            bright, seeds = f[j] >= level, tiles.mask[i] > 0
            lab, _ = ndimage.label(bright | seeds)
            keep = np.unique(lab[seeds])
            out[i] = np.isin(lab, keep[keep > 0]) | seeds
    return out


def neighbours(tiles: FinalTiles) -> tuple[np.ndarray, np.ndarray]:
    masks, labelled = tiles.mask.copy(), (tiles.kind == MASKED) & (tiles.label == 1)
    key = {(p, s): i for i, (p, s) in enumerate(zip(tiles.patient, tiles.slice_index))}
    for i in np.flatnonzero(tiles.kind == WEAK):
        p, k = tiles.patient[i], tiles.slice_index[i]
        a, b = key.get((p, k - 1)), key.get((p, k + 1))
        if a is not None and b is not None and labelled[a] and labelled[b]:
            masks[i] = tiles.mask[a] & tiles.mask[b]
            labelled[i] = masks[i].any()
    return masks, labelled


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--quantile", type=float, default=0.25)
    ap.add_argument("--grow", default="", help="comma-separated final.grow values to measure (e.g. 0.4,0.2)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    bundle = Bundle.load(args.bundle)
    train = set(bundle.config["training"]["split"]["train"])
    cases = [c for c in discover(args.data, bundle.channels) if c.id in train]
    t0 = time.perf_counter()
    tiles = collect_tiles(bundle, cases, torch.device("cpu"))
    flair = bundle.channels.index(bundle.flair_channel)
    masked = (tiles.kind == MASKED) & (tiles.label == 1)
    tumour_slices = ((tiles.kind == MASKED) | (tiles.kind == WEAK)) & (tiles.label == 1)
    out = {"bundle": str(args.bundle), "patients": len(cases), "seconds_labelling": round(time.perf_counter() - t0, 1),
           "fused_filtered": quality(tiles.mask, masked, tiles.truth),
           "flagged_kept": quality(tiles.proposal, tumour_slices & (tiles.proposal.reshape(len(tiles), -1).any(1)),
                                   tiles.truth),
           "flair_growth": quality(flair_growth(tiles, flair, args.quantile), masked, tiles.truth)}
    m, lab = neighbours(tiles)
    out["neighbours"] = quality(m, lab, tiles.truth)
    for value in (float(v) for v in args.grow.split(",") if v.strip()):
        grown = collect_tiles(bundle, cases, torch.device("cpu"), grow=value)
        out[f"grown_{value:g}"] = quality(grown.mask, (grown.kind == MASKED) & (grown.label == 1), grown.truth)
    print(json.dumps(out, indent=2))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()

"""Seed quality and cost of every seed method on a bundle's classifier.

For the tumour slices of the chosen patients (preprocessed and cut into patches exactly as training
does), each variant's explanation maps go through the bundle's thresholds and FLAIR gates and are
scored against the true masks:

* positive-seed precision: share of S+ pixels inside the tumour (pooled over slices);
* coverage: share of tumour pixels in S+;
* negative-seed precision: share of S- pixels outside the tumour, for the seeds stage's S- and for
  the segmenters' S- (with ``rise.negative_flair_quantile``'s dark tissue added);
* seconds per image (median of the per-batch times is not meaningful here: total / images).

ACAM needs the attention: the bundle's, or one fitted here on the bundle's training patients in
``--data`` (as the seeds stage would). Choose settings with ``--patients train`` on an inner split;
``--patients val`` is for a shipped bundle, once.

    python benchmarks/seed_methods.py --bundle B --data DIR [--geometry G] --patients train \
        --variant rise --variant 'sp100={"method": "superpixel", "n_segments": 100}' --json seeds.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import _common

import numpy as np  # noqa: E402
import torch  # noqa: E402

from WeakTumorSegLib.bundle.load import Bundle  # noqa: E402
from WeakTumorSegLib.io.cohort import discover  # noqa: E402
from WeakTumorSegLib.preprocessing.intensity import PreprocessConfig  # noqa: E402
from WeakTumorSegLib.stages.seeds import (SeedSettings, explanation_maps, extend_negative_seeds,  # noqa: E402
                                          fit_attention, gate_positive_seeds, patient_levels,
                                          seeds_from_maps)
from WeakTumorSegLib.training.slices import load_slices  # noqa: E402


def slices_of(bundle: Bundle, data: Path, ids: list[str], geometry: Path | None = None):
    cases = [c for c in discover(data, bundle.channels, geometry) if c.id in set(ids)]
    pp = PreprocessConfig.from_dict(bundle.config["preprocessing"])
    return load_slices(cases, bundle.channels, pp, bundle.config["patch_size"], 0, 0.5, 0,
                       flair=bundle.flair_channel)


def score(pos: np.ndarray, neg: np.ndarray, neg_ext: np.ndarray, truth: np.ndarray) -> dict:
    inside = (pos & truth).sum()
    return {"positive_precision": float(inside / max(pos.sum(), 1)),
            "coverage": float(inside / max(truth.sum(), 1)),
            "positive_per_image": float(np.mean([(p & t).sum() / p.sum() for p, t in zip(pos, truth) if p.any()]
                                                or [0.0])),
            "images_without_positive": int((pos.reshape(len(pos), -1).sum(1) == 0).sum()),
            "negative_precision": float((neg & ~truth).sum() / max(neg.sum(), 1)),
            "negative_precision_extended": float((neg_ext & ~truth).sum() / max(neg_ext.sum(), 1)),
            "negative_fraction": float(neg.mean())}


def levels(s, flair: int, rows: np.ndarray, quantile: float | None, scope: str) -> torch.Tensor | None:
    """The gate levels of ``scope`` for the slices ``rows`` of ``s``, a volume being all slices of
    its patient (None for the ``slice`` scope)."""
    every = patient_levels(torch.from_numpy(s.x[:, flair]), torch.from_numpy(s.patient), quantile, scope)
    return None if every is None else every[torch.from_numpy(rows)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--data", required=True, help="cohort folder holding the patients (with masks)")
    ap.add_argument("--geometry", type=Path, default=None,
                    help="the cohort's declared geometry (JSON; default: DATA/geometry.json if present), as for "
                         "evaluate: TCGA-LGG needs Resources/Cohorts/tcga-lgg.geometry.json")
    ap.add_argument("--patients", default="train", choices=["train", "val"],
                    help="the bundle's training or validation patients")
    ap.add_argument("--variant", action="append", default=[],
                    help="NAME or NAME=JSON of seeds settings (method, n_segments, compactness, perturbation, "
                         "score, n_masks, flair_gate_scope); NAME alone is a method with the bundle's settings")
    ap.add_argument("--limit", type=int, default=0, help="at most this many tumour slices (0: all)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    bundle = Bundle.load(args.bundle)
    split = bundle.config["training"]["split"]
    data = Path(args.data)
    s = slices_of(bundle, data, split[args.patients], args.geometry)
    tumour = np.flatnonzero(s.label > 0)
    if args.limit:
        tumour = tumour[np.random.default_rng(0).permutation(len(tumour))[:args.limit]]
    x = torch.from_numpy(s.x[tumour])
    truth = s.mask[tumour].astype(bool)
    flair = bundle.channels.index(bundle.flair_channel)
    print(f"{len(tumour)} tumour slices of {len(set(s.patient[tumour].tolist()))} {args.patients} patients",
          file=sys.stderr)
    attention = bundle.models.get("attention")
    results = {}
    for spec in args.variant or ["rise", "superpixel", "gradcam", "acam"]:
        name, _, js = spec.partition("=")
        extra = json.loads(js) if js else {"method": name}
        cfg = json.loads(json.dumps(bundle.config))
        rise_keys = {"n_masks", "flair_gate_scope"}
        cfg.setdefault("seeds", {}).update({k: v for k, v in extra.items() if k not in rise_keys})
        cfg["rise"].update({k: v for k, v in extra.items() if k == "flair_gate_scope"})
        settings = SeedSettings.from_config(cfg, n_masks=extra.get("n_masks"))
        fit_seconds = 0.0
        if settings.method == "acam" and attention is None:
            t = time.perf_counter()
            train = slices_of(bundle, data, split["train"], args.geometry)
            attention, _ = fit_attention(bundle.models["classifier"], torch.from_numpy(train.x),
                                         torch.from_numpy(train.label), settings.attention_steps,
                                         settings.attention_lr)
            fit_seconds = time.perf_counter() - t
        t = time.perf_counter()
        maps = explanation_maps(settings, bundle.models["classifier"], x, flair, attention)
        seconds = time.perf_counter() - t
        pos, neg = seeds_from_maps(maps, settings.positive, settings.negative)
        f, r = x[:, flair], settings.rise
        pos = gate_positive_seeds(pos, f, r.positive_flair_quantile, levels(s, flair, tumour, r.positive_flair_quantile,
                                                                            r.flair_gate_scope))
        neg_ext = extend_negative_seeds(neg, f, r.negative_flair_quantile,
                                        levels(s, flair, tumour, r.negative_flair_quantile, r.flair_gate_scope))
        results[name] = {**score(pos.numpy(), neg.numpy(), neg_ext.numpy(), truth), "settings": settings.to_dict(),
                         "seconds_per_image": seconds / max(len(x), 1), "attention_fit_seconds": fit_seconds}
        r = results[name]
        print(f"{name:>12}: S+ precision {r['positive_precision']:.3f} (per image {r['positive_per_image']:.3f}), "
              f"coverage {r['coverage']:.3f}, S- precision {r['negative_precision']:.4f} / extended "
              f"{r['negative_precision_extended']:.4f}, {r['images_without_positive']} images without S+, "
              f"{1000 * r['seconds_per_image']:.1f} ms per image", flush=True)
    out = {"machine": _common.machine_info(), "bundle": str(args.bundle), "patients": args.patients,
           "slices": len(tumour), "threads": args.threads, "results": results}
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

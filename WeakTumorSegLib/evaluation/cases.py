"""Which patients an evaluation covers: by default the bundle's validation split when ``--data``
is the bundle's training data, else every patient; and every one of them needs a mask."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from ..bundle.info import BUNDLE_FILE
from ..errors import InputError, WeakTumorSegError
from ..io.cohort import Case


def select_cases(cases: Sequence[Case], bundle_config: Mapping, data: str | Path, patients: str | None = None,
                 split: str | None = None, bundle_path: str | Path | None = None) -> tuple[list[Case], str, list[str]]:
    """Choose the patients to evaluate: ``(cases, description of the choice, notes)``.

    ``patients``: ``"all"`` or comma-separated ids; ``split``: ``"val"`` or ``"train"`` of the
    split recorded in the bundle (``training.split``). Without either, the bundle's validation
    split when ``data`` is the bundle's training data (same folder, or exactly its patients),
    else every patient.
    """
    by_id = {c.id: c for c in cases}
    rec = (bundle_config.get("training") or {})
    rec_split = rec.get("split") if isinstance(rec.get("split"), Mapping) else None
    notes: list[str] = []

    def same_data() -> bool:
        if rec_split is None:
            return False
        trained = rec.get("data")
        if trained:
            try:
                if Path(trained).resolve() == Path(data).resolve():
                    return True
            except OSError:
                pass
        return set(by_id) == set(rec_split.get("train", [])) | set(rec_split.get("val", []))

    def pick(ids: Sequence[str], what: str) -> list[Case]:
        unknown = [i for i in ids if i not in by_id]
        if unknown:
            raise InputError(f"{what}: patient(s) not in the cohort: {', '.join(unknown)}", data)
        return [by_id[i] for i in dict.fromkeys(ids)]

    if patients is not None and split is not None:
        raise WeakTumorSegError("give --patients or --split, not both")
    if patients is not None:
        if patients.strip().lower() == "all":
            chosen, source = list(cases), "all patients (--patients all)"
        else:
            ids = [p.strip() for p in patients.split(",") if p.strip()]
            if not ids:
                raise WeakTumorSegError("--patients needs 'all' or comma-separated patient ids")
            chosen, source = pick(ids, "--patients"), "--patients"
    elif split is not None:
        if rec_split is None or split not in rec_split:
            raise InputError(f"the bundle records no training split (training.split.{split}); use --patients",
                             Path(bundle_path) / BUNDLE_FILE if bundle_path is not None else None)
        chosen, source = pick(list(rec_split[split]), f"--split {split}"), f"bundle's '{split}' split (--split {split})"
    elif same_data():
        chosen = pick(list(rec_split.get("val", [])), "the bundle's validation split")
        source = "bundle's validation split (default: --data is the bundle's training data)"
        if not chosen:
            raise InputError("the bundle's validation split is empty; pass --patients", data)
    else:
        chosen, source = list(cases), "all patients (default: --data is not the bundle's training data)"
    if not chosen:
        raise InputError(f"no patients to evaluate ({source})", data)
    if rec_split is not None:
        leaked = sorted(c.id for c in chosen if c.id in set(rec_split.get("train", [])))
        if leaked and split != "train":
            notes.append(f"{len(leaked)} of the {len(chosen)} evaluated patients were in the bundle's "
                         f"training split: {', '.join(leaked[:10])}{' ...' if len(leaked) > 10 else ''}")
    return chosen, source, notes


def require_masks(cases: Sequence[Case], data: str | Path) -> None:
    """Evaluation needs a ground-truth mask for every evaluated patient."""
    lacking = [c.id for c in cases if c.mask is None]
    if not lacking:
        return
    if len(lacking) == len(cases):
        raise InputError(f"evaluation needs ground-truth tumour masks (<id>_seg.nii.gz or a manifest 'mask' "
                         f"column); none of the {len(cases)} selected patients has one", data)
    raise InputError(f"evaluation needs ground-truth tumour masks; {len(lacking)} of the {len(cases)} selected "
                     f"patients have none ({', '.join(lacking[:10])}{' ...' if len(lacking) > 10 else ''}); "
                     "choose patients with masks with --patients", data)

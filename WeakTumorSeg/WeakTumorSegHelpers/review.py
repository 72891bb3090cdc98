"""The slice review table and the export manifest.

The table has one row per axial slice: the columns of the core's ``<name>_slices.csv``
(``WeakTumorSegLib.io.names.SLICE_COLUMNS``) plus ``status``, the review status (:data:`STATUSES`),
which starts as ``flagged`` for the slices the difference-score filter flagged and ``kept`` for the
others. The manifest written on export (:data:`MANIFEST_COLUMNS`) carries the statuses on.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import vtk

from .core import SLICE_COLUMNS, SegmentationError

#: Review statuses of a slice (column ``status`` of the table, and of the export manifest).
STATUSES = ("kept", "flagged", "corrected", "excluded")
#: Columns of the slice table: the core's per-slice columns plus ``status``.
TABLE_COLUMNS = (*SLICE_COLUMNS, "status")
#: Columns of ``<volume>_manifest.csv``.
MANIFEST_COLUMNS = ("volume", "slice", "status", "difference_score", "tumor_pixels")
#: Value type of each column (others are text).
COLUMN_TYPES = {"slice": int, "p_tumor": float, "difference_score": float, "flagged": int, "tumor_pixels": int}
_DESCRIPTIONS = {
    "slice": "Index of the axial slice (third voxel axis, k)",
    "p_tumor": "Largest classifier output over the slice's patches",
    "difference_score": ("Difference score (Yoo et al., Eq. 19): mean |x - healthy x| over the mask; "
                         "1 if the mask is empty"),
    "flagged": "1 when the filter flags the slice for review",
    "flag_reason": "low_difference_score and/or classifier_undecided",
    "tumor_pixels": "Tumour pixels in the slice as segmented",
    "status": "Review status: kept, flagged, corrected or excluded",
}
_ARRAYS = {int: vtk.vtkIntArray, float: vtk.vtkDoubleArray, str: vtk.vtkStringArray}


def _fromText(name: str, text: str | None) -> Any:
    kind = COLUMN_TYPES.get(name, str)
    if kind is float:
        return float(text or "nan")
    return int(float(text or 0)) if kind is int else (text or "")


def _fromVariant(name: str, value: Any) -> Any:
    kind = COLUMN_TYPES.get(name, str)
    if kind is float:
        return value.ToDouble()
    return value.ToInt() if kind is int else value.ToString()


def readSliceCsv(path: str | os.PathLike) -> list[dict]:
    """Rows of the core's ``<name>_slices.csv`` with typed values and an initial ``status``."""
    with open(path, newline="") as fh:
        rows = [{name: _fromText(name, raw.get(name)) for name in SLICE_COLUMNS} for raw in csv.DictReader(fh)]
    for row in rows:
        row["status"] = "flagged" if row["flagged"] else "kept"
    return rows


def _column(name: str, rows: Sequence[Mapping[str, Any]]) -> Any:
    kind = COLUMN_TYPES.get(name, str)
    array = _ARRAYS[kind]()
    array.SetName(name)
    array.SetNumberOfValues(len(rows))
    for i, row in enumerate(rows):
        array.SetValue(i, kind(row.get(name, kind())))
    return array


def fillSliceTable(table: Any, rows: Sequence[Mapping[str, Any]]) -> None:
    """Replace the table's content with ``rows`` (columns :data:`TABLE_COLUMNS`); the table is locked, as
    statuses change through the module only."""
    wasModifying = table.StartModify()
    try:
        table.RemoveAllColumns()
        for name in TABLE_COLUMNS:
            table.AddColumn(_column(name, rows))
            table.SetColumnDescription(name, _DESCRIPTIONS.get(name, ""))
        table.SetLocked(True)
    finally:
        table.EndModify(wasModifying)


def sliceRows(table: Any) -> list[dict]:
    """The table's rows as dicts (typed as in :func:`readSliceCsv`)."""
    vtable = table.GetTable()
    names = [vtable.GetColumnName(c) for c in range(vtable.GetNumberOfColumns())]
    return [{name: _fromVariant(name, vtable.GetValue(r, c)) for c, name in enumerate(names)}
            for r in range(vtable.GetNumberOfRows())]


def sliceNumber(value: Any) -> int | None:
    """The slice number shown in a cell (None when it is not a number)."""
    try:
        return int(float(value))
    except (TypeError, ValueError):
        return None


def _rowOfSlice(table: Any, sliceIndex: int) -> int:
    column = table.GetTable().GetColumnByName("slice")
    for r in range(table.GetNumberOfRows()):
        if int(column.GetValue(r)) == int(sliceIndex):
            return r
    raise SegmentationError(f"slice {sliceIndex} is not in table '{table.GetName()}'")


def setSliceStatus(table: Any, slices: Iterable[int] | int, status: str) -> None:
    """Set the review status (:data:`STATUSES`) of one or more slices."""
    if status not in STATUSES:
        raise ValueError(f"status must be one of {', '.join(STATUSES)}, not {status!r}")
    column = table.GetColumnIndex("status")
    wasModifying = table.StartModify()
    try:
        for sliceIndex in [slices] if isinstance(slices, int) else slices:
            table.GetTable().SetValue(_rowOfSlice(table, sliceIndex), column, vtk.vtkVariant(status))
        table.GetTable().Modified()
        table.Modified()
    finally:
        table.EndModify(wasModifying)


def sliceStatus(table: Any, sliceIndex: int) -> str:
    """The review status of one slice."""
    return table.GetCellText(_rowOfSlice(table, sliceIndex), table.GetColumnIndex("status"))


def flaggedSlices(table: Any) -> list[int]:
    """Slices the filter flagged (whatever their review status now), in slice order."""
    return sorted(row["slice"] for row in sliceRows(table) if row.get("flagged"))


def nextFlaggedSlice(table: Any, current: int | None, step: int = 1) -> int | None:
    """The flagged slice after (``step`` > 0) or before ``current``, wrapping around; None if none."""
    flagged = flaggedSlices(table)
    ahead = [s for s in flagged if current is None or (s > current if step > 0 else s < current)] or flagged
    if not ahead:
        return None
    return ahead[0] if step > 0 else ahead[-1]


def statusCounts(table: Any) -> dict[str, int]:
    """How many slices have each review status."""
    counts = dict.fromkeys(STATUSES, 0)
    for row in sliceRows(table):
        status = row.get("status", "kept")
        counts[status] = counts.get(status, 0) + 1
    return counts


def writeManifest(path: str | os.PathLike, volumeName: str, mask: Any, table: Any) -> None:
    """Write ``<volume>_manifest.csv``: one row per slice of ``mask`` (``k, j, i``) with its review status
    from ``table`` (``kept`` without a table), difference score and tumour pixels of the current mask."""
    bySlice = {row["slice"]: row for row in sliceRows(table)} if table is not None else {}
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(MANIFEST_COLUMNS)
        for k in range(mask.shape[0]):
            row = bySlice.get(k, {})
            score = row.get("difference_score")
            writer.writerow([volumeName, k, row.get("status", "kept"),
                             "" if score is None or score != score else f"{score:.4f}", int(mask[k].sum())])

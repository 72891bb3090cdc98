"""The Review, Correct and Export sections of the module's GUI: the current result's warnings, its slice
table, flagged-slice navigation, review statuses, the embedded Segment Editor and the export button.

GUI only: it is handed the module's widgets (``ui``) and Logic; the table's content is kept through
the Logic (:mod:`.review`), so this file imports no Qt.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import slicer

from .export import ExportExistsError
from .nodes import SLICE_TABLE_ROLE
from .review import sliceNumber
from .slicerbase import _


class ReviewPanel:
    """Review and correction of the current result (the parameter node's ``outputSegmentation``)."""

    def __init__(self, ui: Any, logic: Any, parameterNode: Callable[[], Any]) -> None:
        self.ui = ui
        self.logic = logic
        self.parameterNode = parameterNode
        self.segmentEditorWidget = slicer.qMRMLSegmentEditorWidget()
        self.segmentEditorWidget.setMaximumNumberOfUndoStates(10)
        self.segmentEditorWidget.setMRMLScene(slicer.mrmlScene)
        self.segmentEditorWidget.setMRMLSegmentEditorNode(logic.segmentEditorNode())
        self.ui.segmentEditorFrame.layout().addWidget(self.segmentEditorWidget)
        self.ui.sliceTableView.setMRMLScene(slicer.mrmlScene)
        self.ui.sliceTableView.connect("selectionChanged()", self.onSliceSelectionChanged)
        self.ui.previousFlaggedButton.connect("clicked(bool)", lambda: self.onStepFlagged(-1))
        self.ui.nextFlaggedButton.connect("clicked(bool)", lambda: self.onStepFlagged(+1))
        self.ui.markKeptButton.connect("clicked(bool)", lambda: self.onMarkSlices("kept"))
        self.ui.markCorrectedButton.connect("clicked(bool)", lambda: self.onMarkSlices("corrected"))
        self.ui.markExcludedButton.connect("clicked(bool)", lambda: self.onMarkSlices("excluded"))
        self.ui.exportButton.connect("clicked(bool)", self.onExportButton)

    def currentSegmentation(self) -> Any:
        parameterNode = self.parameterNode()
        return parameterNode.outputSegmentation if parameterNode else None

    def currentTable(self) -> Any:
        seg = self.currentSegmentation()
        return seg.GetNodeReference(SLICE_TABLE_ROLE) if seg is not None else None

    # -- Segment Editor ----------------------------------------------------------------------------

    def enter(self) -> None:
        self.segmentEditorWidget.installKeyboardShortcuts()
        self.update()

    def exit(self) -> None:
        self.segmentEditorWidget.setActiveEffect(None)
        self.segmentEditorWidget.uninstallKeyboardShortcuts()

    def editSegmentation(self, segmentationNode: Any, volume: Any) -> None:
        """Show a segmentation (None: none) and its source volume in the embedded Segment Editor."""
        self.segmentEditorWidget.setSegmentationNode(segmentationNode)
        if volume is None:
            return
        if hasattr(self.segmentEditorWidget, "setSourceVolumeNode"):
            self.segmentEditorWidget.setSourceVolumeNode(volume)
        else:  # Slicer < 5.2
            self.segmentEditorWidget.setMasterVolumeNode(volume)

    # -- review ------------------------------------------------------------------------------------

    def showResult(self, result: Any) -> None:
        """Show a new result: slice views on its volume, its segmentation in the editor, its first flagged slice."""
        self.logic.alignSliceViewsToVolume(result.inputVolume)
        slicer.util.setSliceViewerLayers(background=result.inputVolume, fit=True)
        self.editSegmentation(result.segmentationNode, result.inputVolume)
        self.update()
        flagged = self.logic.flaggedSlices(result.tableNode)
        if flagged:
            self.selectSlice(flagged[0])

    def update(self, *args: Any) -> None:
        """Show the current result's warnings, table, status counts and segmentation."""
        seg, table = self.currentSegmentation(), self.currentTable()
        self.showWarnings(self.logic.resultWarnings(seg))
        self.ui.sliceTableView.setMRMLTableNode(table)
        for button in (self.ui.previousFlaggedButton, self.ui.nextFlaggedButton, self.ui.markKeptButton,
                       self.ui.markCorrectedButton, self.ui.markExcludedButton):
            button.enabled = table is not None
        counts = self.logic.statusCounts(table) if table is not None else {}
        self.ui.reviewSummaryLabel.text = (", ".join(f"{n} {status}" for status, n in counts.items()) if counts
                                           else _("Segment a volume to review its slices."))
        if seg is not None and self.segmentEditorWidget.segmentationNode() != seg:
            self.editSegmentation(seg, self.logic.inputVolumeOf(seg))

    def showWarnings(self, warnings: list[str]) -> None:
        """The core's warnings about the current result under the status line; hidden when there are none."""
        label = self.ui.resultWarningsLabel
        label.text = "\n".join(_("Warning: {warning}").format(warning=w) for w in warnings)
        label.setVisible(bool(warnings))

    def tableViewSlices(self) -> list[int | None]:
        """The slice number of each row of the table view, in the view's order (sorting may change it)."""
        model = self.ui.sliceTableView.model()
        return [sliceNumber(model.index(row, 0).data()) for row in range(model.rowCount())]

    def selectedSlices(self) -> list[int]:
        """Slice numbers of the selected table rows."""
        slices = self.tableViewSlices()
        rows = sorted({index.row() for index in self.ui.sliceTableView.selectionModel().selectedIndexes()})
        return [slices[row] for row in rows if row < len(slices) and slices[row] is not None]

    def selectSlice(self, sliceIndex: int) -> None:
        slices = self.tableViewSlices()
        if sliceIndex in slices:
            self.ui.sliceTableView.selectRow(slices.index(sliceIndex))
            self.ui.sliceTableView.scrollTo(self.ui.sliceTableView.model().index(slices.index(sliceIndex), 0))

    def onSliceSelectionChanged(self) -> None:
        slices = self.selectedSlices()
        volume = self.logic.inputVolumeOf(self.currentSegmentation())
        if slices and volume is not None:
            self.logic.jumpToSlice(volume, slices[0])

    def onStepFlagged(self, step: int) -> None:
        table = self.currentTable()
        if table is None:
            return
        current = self.selectedSlices()
        target = self.logic.nextFlaggedSlice(table, current[0] if current else None, step)
        if target is None:
            self.ui.statusLabel.text = _("No flagged slices.")
        else:
            self.selectSlice(target)

    def onMarkSlices(self, status: str) -> None:
        table = self.currentTable()
        slices = self.selectedSlices()
        if table is None or not slices:
            self.ui.statusLabel.text = _("Select one or more slices in the table first.")
            return
        self.logic.setSliceStatus(table, slices, status)
        self.update()
        self.selectSlice(slices[0])

    # -- export ------------------------------------------------------------------------------------

    def onExportButton(self) -> None:
        seg, folder = self.currentSegmentation(), self.parameterNode().exportFolder
        with slicer.util.tryWithErrorDisplay(_("Export failed."), waitCursor=True):
            try:
                written = self.logic.exportResults(seg, folder, overwrite=False)
            except ExportExistsError as exc:
                if not slicer.util.confirmOkCancelDisplay(
                        _("These files already exist in {folder}:\n{files}\n\nOverwrite them?").format(
                            folder=folder, files="\n".join(exc.existing)), _("Overwrite exported files?")):
                    self.ui.statusLabel.text = _("Export cancelled; nothing was written.")
                    return
                written = self.logic.exportResults(seg, folder, overwrite=True)
            self.ui.statusLabel.text = _("Exported {n} files to {folder}").format(n=len(written), folder=folder)
            slicer.util.infoDisplay(_("Exported:\n{files}").format(files="\n".join(str(p) for p in written.values())))

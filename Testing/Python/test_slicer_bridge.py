"""The Slicer bridge on a real MRML scene (PyPI slicer-core, headless): geometry in every orientation and on a
rotated, anisotropic volume; markups that land on the engine's voxels; overrides read from edited markups;
segment writes confined to one slice of one segment; exact undo; the trajectory log; the parameter node
through a saved scene; and whole sessions with the real LiteMedSAM tool on real CT (and MR when present)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")

import torch  # noqa: E402

from MedSAMAgentLib.actions import Box, Point, Stop  # noqa: E402
from MedSAMAgentLib.manifest import BUNDLED_DATA, SHARED_DATA  # noqa: E402
from MedSAMAgentLib.metrics import dice  # noqa: E402
from MedSAMAgentLib.policies.oracle import gt_box  # noqa: E402
from MedSAMAgentLib.slicer.geometry import slice_geometry  # noqa: E402
from MedSAMAgentLib.slicer import segments  # noqa: E402
from MedSAMAgentLib.slicer.logic import AgentLogic, AgentLogicError  # noqa: E402
from MedSAMAgentLib.slicer.markups import SessionMarkups  # noqa: E402
from MedSAMAgentLib.slicer.parameters import (AgentSettings, find_or_create_parameter_node, get_nodes,  # noqa: E402
                                              read_settings, set_nodes, write_settings)
from MedSAMAgentLib.trajectory import decode_mask, read_episodes  # noqa: E402
from slicer_headless import load_volume, make_headless_slicer, volume_from_array  # noqa: E402

CT = BUNDLED_DATA / "volumes" / "totalseg_example_ct_sm.nii.gz"
CT_LABELS = BUNDLED_DATA / "volumes" / "totalseg_example_seg.nii.gz"
LIVER = 5
BRAIN = SHARED_DATA / "volumes" / "pyradiomics_brain1_image.nrrd"
BRAIN_LABELS = SHARED_DATA / "volumes" / "pyradiomics_brain1_label.nrrd"
# a direction matrix rotated about two axes (columns: I, J, K in RAS), and anisotropic spacing
ROTATION = np.array([[0.8660254, -0.5, 0.0], [0.5, 0.8660254, 0.0], [0.0, 0.0, 1.0]]) @ \
    np.array([[1.0, 0.0, 0.0], [0.0, 0.9396926, -0.3420201], [0.0, 0.3420201, 0.9396926]])
ORACLE = {"resample": 0, "seed": 0}  # fewer previews per proposal: keeps the tests quick


@pytest.fixture
def env():
    headless = make_headless_slicer()
    yield headless
    headless.close()


@pytest.fixture
def logic_factory(env, litemedsam):
    """Agent logic over the real built-in tool, shared with the other tests (one network per run)."""
    return lambda: AgentLogic(env.scene, tool_factory=lambda *args, **kwargs: litemedsam)


def centre_ras(volume_node, mask_kji: np.ndarray) -> list[float]:
    import vtk

    k, j, i = np.argwhere(mask_kji).mean(axis=0)
    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    return list(matrix.MultiplyPoint([i, j, k, 1.0])[:3])


def segment_array(segmentation_node, segment_id: str, volume_node) -> np.ndarray:
    """The whole segment in the volume's (k, j, i) grid."""
    labelmap = slicer.vtkOrientedImageData()
    slicer.vtkSlicerSegmentationsModuleLogic.GetSegmentBinaryLabelmapRepresentation(
        segmentation_node, segment_id, labelmap, False)
    dims = volume_node.GetImageData().GetDimensions()
    values = segments._array_of(labelmap, [0, dims[0] - 1, 0, dims[1] - 1, 0, dims[2] - 1])
    label = segmentation_node.GetSegmentation().GetSegment(segment_id).GetLabelValue()
    return values == label


def slice_index(geometry) -> tuple:
    """Index expression of the geometry's slice in a (k, j, i) array."""
    index = [slice(None)] * 3
    index[2 - geometry.axis] = geometry.index
    return tuple(index)


def roi_corners_ijk(node, geometry) -> list[np.ndarray]:
    centre, size = [0.0] * 3, [0.0] * 3
    node.GetCenterWorld(centre)
    node.GetSizeWorld(size)
    from MedSAMAgentLib.slicer.geometry import vtk_matrix_to_numpy

    axes = vtk_matrix_to_numpy(node.GetObjectToWorldMatrix())[:3, :3]
    axes = axes / np.linalg.norm(axes, axis=0)
    return [geometry.ras_to_ijk_point(np.asarray(centre) + axes @ (np.array([sx, sy, 0.0]) * size))
            for sx in (-0.5, 0.5) for sy in (-0.5, 0.5)]


# -- geometry -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("view, axis", [("Red", 2), ("Yellow", 0), ("Green", 1)])
def test_geometry_rotated_anisotropic_volume(env, view, axis):
    rng = np.random.default_rng(0)
    array = rng.integers(-500, 500, (9, 13, 17)).astype(np.int16)
    volume = volume_from_array(array, "rotated", spacing=(0.7, 1.3, 2.9), origin=(5.0, -3.0, 10.0),
                               directions=ROTATION)
    geometry = slice_geometry(volume, env.show(view, volume))
    assert geometry.axis == axis and geometry.obliquity_deg < 45
    image = geometry.extract(array)
    assert image.shape == geometry.shape
    for y in range(geometry.height):
        for x in range(geometry.width):
            i, j, k = np.rint(geometry.pixel_to_ijk_point(x, y)).astype(int)
            assert image[y, x] == array[k, j, i]
    for x, y in [(0, 0), (geometry.width - 1, 3), (2, geometry.height - 1)]:
        ras = geometry.pixel_to_ras_point(x, y)
        assert np.allclose(geometry.ras_to_pixel_point(ras), (x, y), atol=1e-6)
        assert np.allclose(geometry.ras_to_ijk_point(ras), geometry.pixel_to_ijk_point(x, y), atol=1e-6)
    assert np.array_equal(geometry.to_ijk_plane(image), array[slice_index(geometry)])
    # the image looks as the view shows it: +x runs along the view's right, +y along its down
    from MedSAMAgentLib.slicer.geometry import vtk_matrix_to_numpy

    slice_to_ras = vtk_matrix_to_numpy(env.slice_node(view).GetSliceToRAS())
    dx, dy, _ = geometry.in_plane_directions()
    assert np.dot(dx, slice_to_ras[:3, 0]) > 0 and np.dot(dy, -slice_to_ras[:3, 1]) > 0


def test_geometry_follows_the_slice_node_not_the_view_name(env):
    """Red set to sagittal and tilted 20 degrees: the slice is the I axis, the obliquity is logged."""
    array = np.zeros((6, 8, 10), np.int16)
    volume = volume_from_array(array, "plain", spacing=(1.0, 1.0, 2.0))
    node = env.show("Red", volume, orientation="Sagittal")
    geometry = slice_geometry(volume, node)
    assert (geometry.axis, geometry.orientation) == (0, "Sagittal")
    angle = np.radians(20)
    node.SetSliceToRASByNTP(np.cos(angle), np.sin(angle), 0, 0, 0, 1, *node.GetSliceToRAS().MultiplyPoint(
        [0, 0, 0, 1])[:3], 0)
    tilted = slice_geometry(volume, node)
    assert tilted.axis == 0 and abs(tilted.obliquity_deg - 20) < 1e-6
    node.JumpSliceByCentering(500.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="outside the volume"):
        slice_geometry(volume, node)


# -- segments -------------------------------------------------------------------------------------------------
def test_segment_write_touches_one_slice_of_one_segment(env):
    array = np.zeros((7, 20, 24), np.int16)
    volume = volume_from_array(array, "v", spacing=(0.8, 1.2, 3.0), directions=ROTATION)
    geometry = slice_geometry(volume, env.show("Green", volume))
    seg = env.scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    target = segments.ensure_segment(seg, volume, name="target")
    other = segments.ensure_segment(seg, volume, name="other")
    # existing content: the target on the slice and beside it, the other segment overlapping the slice
    existing = np.zeros(geometry.shape, bool)
    existing[1:3, 2:9] = True
    segments.write_slice(seg, target, volume, geometry, existing)
    neighbour = slice_geometry(volume, env.show("Green", volume, ras=geometry.pixel_to_ras_point(0, 0) +
                                                geometry.in_plane_directions()[2] * 1.2 * 2))
    assert neighbour.index != geometry.index
    segments.write_slice(seg, target, volume, neighbour, np.ones(neighbour.shape, bool))
    blocker = np.zeros(geometry.shape, bool)
    blocker[3:6, 10:14] = True
    segments.write_slice(seg, other, volume, geometry, blocker)
    before_target, before_other = segment_array(seg, target, volume), segment_array(seg, other, volume)

    mask = np.zeros(geometry.shape, bool)
    mask[2:5, 5:13] = True
    edit = segments.write_slice(seg, target, volume, geometry, mask, protect_other_segments=True)
    after_target, after_other = segment_array(seg, target, volume), segment_array(seg, other, volume)
    here = slice_index(geometry)
    assert np.array_equal(geometry.orient(after_target[here]), mask & ~blocker)  # other segment's voxels kept off
    outside = np.ones(after_target.shape, bool)
    outside[here] = False
    assert np.array_equal(after_target[outside], before_target[outside])  # other slices untouched
    assert np.array_equal(after_other, before_other)  # other segment untouched
    assert edit.changed == int(((mask & ~blocker) ^ existing).sum())

    # overlap allowed: the other segment still keeps its voxels
    segments.write_slice(seg, target, volume, geometry, mask, protect_other_segments=False)
    assert np.array_equal(geometry.orient(segment_array(seg, target, volume)[here]), mask)
    assert np.array_equal(segment_array(seg, other, volume), before_other)

    segments.restore_slice(seg, target, volume, geometry, edit)
    segments.restore_slice(seg, target, volume, geometry, segments.SliceEdit(before=existing, after=mask))
    assert np.array_equal(segment_array(seg, target, volume), before_target)


# -- markups --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("view", ["Red", "Yellow", "Green"])
def test_markups_land_on_voxels_and_edits_read_back(env, view):
    volume = volume_from_array(np.zeros((9, 13, 17), np.int16), "v", spacing=(0.7, 1.3, 2.9),
                               origin=(5.0, -3.0, 10.0), directions=ROTATION)
    geometry = slice_geometry(volume, env.show(view, volume))
    markups = SessionMarkups(env.scene)
    proposal = Point(4, 2, True)
    markups.draw(geometry, [Box(1, 1, 6, 5), Point(3, 3, True), Point(2, 4, False)], proposal)
    node = markups.node("proposal")
    assert node.GetLocked() and not node.GetDisplayNode().GetVisibility3D()
    ras = [0.0] * 3
    node.GetNthControlPointPositionWorld(0, ras)
    assert np.allclose(geometry.ras_to_ijk_point(ras), geometry.pixel_to_ijk_point(4, 2), atol=1e-6)
    assert markups.node("positive").GetNumberOfControlPoints() == 1
    assert markups.node("negative").GetNumberOfControlPoints() == 1
    corners = roi_corners_ijk(markups.node("box"), geometry)
    expected = [geometry.pixel_to_ijk_point(x, y) for x in (1, 6) for y in (1, 5)]
    assert np.allclose(np.sort(np.array(corners), axis=0), np.sort(np.array(expected), axis=0), atol=1e-6)
    assert markups.read_edit(geometry) is None

    # moved and flipped
    markups.set_editable(True)
    node.SetNthControlPointPositionWorld(0, *geometry.pixel_to_ras_point(6, 3))
    markups.flip_proposal()
    assert markups.read_edit(geometry) == (Point(6, 3, False), "moved and flipped the proposed point")

    # a new negative point wins over the moved proposal
    markups.node("negative").AddControlPointWorld(*geometry.pixel_to_ras_point(1, 7))
    assert markups.read_edit(geometry) == (Point(1, 7, False), "placed a new point")

    # a resized proposed box
    markups.draw(geometry, [], Box(2, 2, 8, 6))
    box = markups.node("proposed box")
    size = box.GetSize()
    box.SetSize(size[0] + 2 * geometry.spacing[0], size[1], size[2])
    assert markups.read_edit(geometry) == (Box(1, 2, 9, 6), "resized the proposed box")


# -- parameter node -------------------------------------------------------------------------------------------
def test_parameter_node_survives_save_and_reload(env, tmp_path):
    volume = volume_from_array(np.zeros((4, 5, 6), np.int16), "ct")
    seg = env.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "seg")
    node = find_or_create_parameter_node(env.scene)
    assert read_settings(node) == AgentSettings()
    settings = AgentSettings(segment_id="S_1", target="liver", slice_view="Green", policy="oracle",
                             max_actions=7, window="liver", protect_other_segments=False, log_enabled=False,
                             log_folder=str(tmp_path / "logs"), checkpoint="/w/lite.pth")
    write_settings(node, settings)
    set_nodes(node, volume, seg)
    assert find_or_create_parameter_node(env.scene) is node  # a singleton
    path = tmp_path / "scene.mrml"
    env.scene.SetURL(str(path))
    assert env.scene.Commit()
    env.close()

    reloaded = make_headless_slicer()
    try:
        reloaded.scene.SetURL(str(path))
        assert reloaded.scene.Connect()
        node = find_or_create_parameter_node(reloaded.scene)
        assert read_settings(node) == settings
        volume_node, seg_node = get_nodes(node)
        assert volume_node.GetName() == "ct" and seg_node.GetName() == "seg"
    finally:
        reloaded.close()


# -- whole sessions with the real tool ------------------------------------------------------------------------
def _ct(env):
    volume, _ = load_volume(CT, "totalseg_example_ct_sm")
    _, labels = load_volume(CT_LABELS, "labels")
    return volume, labels == LIVER


def _liver_slices(env):
    """The CT, its liver mask, the liver's largest slice k and ``show(index)``: the Red view on slice index."""
    import vtk

    volume, liver = _ct(env)
    k = int(np.argmax(liver.sum(axis=(1, 2))))
    ys, xs = np.nonzero(liver[k])
    matrix = vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(matrix)

    def show(index):
        return env.show("Red", volume, ras=list(matrix.MultiplyPoint([float(np.median(xs)), float(np.median(ys)),
                                                                       index, 1.0])[:3]))

    return volume, liver, k, show


def _key_slice_session(logic, volume, seg, node, truth, tmp_path) -> AgentSettings:
    """The oracle's one box on the view's slice of the liver, accepted: the key slice propagation starts from.
    Returns the settings it started with."""
    settings = AgentSettings(policy="oracle", target="liver", max_actions=1, log_enabled=True,
                             log_folder=str(tmp_path))
    logic.run(logic.start_work(volume, seg, node, settings, ground_truth=truth, policy_options=ORACLE))
    logic.continue_()
    return settings


def _check_log(path, geometry, volume_name):
    episode = read_episodes(path)[-1]
    assert episode.accepted and episode.end["status"] == "finished"
    assert episode.header["meta"]["slice"]["index"] == geometry.index
    assert episode.steps, "no steps logged"
    for step in episode.steps:
        extra = step.record["extra"]
        assert extra["volume"]["name"] == volume_name
        assert extra["slice"]["index"] == geometry.index and extra["slice"]["orientation"]
        coords = extra["applied_coordinates"]
        applied = step.applied
        if isinstance(applied, Point):
            assert np.allclose(coords["ijk"], geometry.pixel_to_ijk_point(applied.x, applied.y))
            assert np.allclose(geometry.ras_to_ijk_point(coords["ras"]), coords["ijk"], atol=1e-3)
        elif isinstance(applied, Box):
            for ijk, ras in zip(coords["ijk"], coords["ras"]):
                assert np.allclose(geometry.ras_to_ijk_point(ras), ijk, atol=1e-3)
        else:
            assert coords == {"type": "stop"}
        if step.record["proposal"] is not None:
            assert extra["proposed_coordinates"]["type"] == step.record["proposal"]["action"]["type"]
    return episode


# the whole review loop on Red; propose/accept/undo/finish on the other two (overrides in every orientation
# are covered by test_markups_land_on_voxels_and_edits_read_back without the network)
@pytest.mark.parametrize("view, full", [("Red", True), ("Yellow", False), ("Green", False)])
def test_session_on_ct_in_every_orientation(env, logic_factory, tmp_path, view, full):
    volume, liver = _ct(env)
    node = env.show(view, volume, ras=centre_ras(volume, liver))
    geometry = slice_geometry(volume, node)
    truth = geometry.extract(liver)
    seg = env.scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    other = segments.ensure_segment(seg, volume, name="kidney")
    blocker = np.zeros(geometry.shape, bool)
    ys, xs = np.nonzero(truth)
    blocker[ys.min():ys.min() + 3, :] = True  # another segment across the top of the liver
    segments.write_slice(seg, other, volume, geometry, blocker)
    other_before = segment_array(seg, other, volume)

    logic = logic_factory()
    settings = AgentSettings(policy="oracle", target="liver", max_actions=2, log_enabled=True, log_folder=str(tmp_path))
    assert logic.run(logic.start_work(volume, seg, node, settings, ground_truth=truth,
                                      policy_options=ORACLE)) == "proposed"
    proposal = logic.pending.action
    assert isinstance(proposal, Box)  # the oracle starts from its own box
    corners = roi_corners_ijk(logic.markups.node("proposed box"), geometry)
    expected = [geometry.pixel_to_ijk_point(x, y) for x in (proposal.x1, proposal.x2) for y in (proposal.y1, proposal.y2)]
    assert np.allclose(np.sort(np.array(corners), axis=0), np.sort(np.array(expected), axis=0), atol=1e-6)
    target_before = segment_array(seg, logic.segment_id, volume)

    logic.run(logic.accept_work())
    here = slice_index(geometry)
    written = segment_array(seg, logic.segment_id, volume)
    assert np.array_equal(geometry.orient(written[here]), logic.session.mask & ~blocker)
    outside = np.ones(written.shape, bool)
    outside[here] = False
    assert np.array_equal(written[outside], target_before[outside])
    assert np.array_equal(segment_array(seg, other, volume), other_before)
    after_box = geometry.orient(written[here]).copy()

    if not full:
        logic.undo()
        assert np.array_equal(segment_array(seg, logic.segment_id, volume), target_before)
        logic.run(logic.advance_work())
        logic.run(logic.accept_work())
        _check_log(logic.finish(), geometry, "totalseg_example_ct_sm")
        return
    # the agent proposes again; the clinician places a positive click where the mask misses the liver instead
    assert logic.run(logic.advance_work()) == "proposed"
    miss = truth & ~logic.session.mask
    y, x = np.argwhere(miss if miss.any() else truth)[0]
    logic.input_markups().node("positive").AddControlPointWorld(*geometry.pixel_to_ras_point(x, y))
    step = logic.run(logic.override_work())
    assert step.applied == Point(int(x), int(y), True) and step.decision == "override"
    assert step.proposal is not None
    assert step.extra["clinician_edit"] == "placed a new point"
    assert np.array_equal(geometry.orient(segment_array(seg, logic.segment_id, volume)[here]),
                          logic.session.mask & ~blocker)

    status = logic.continue_()
    assert status in ("stopped", "limit") or status.startswith("paused")
    assert np.array_equal(geometry.orient(segment_array(seg, logic.segment_id, volume)[here]),
                          logic.session.mask & ~blocker)
    rows = logic.rows()
    assert rows[0]["who"] == "agent" and rows[0]["decision"] == "accept" and rows[0]["confidence"] > 0

    # undo back to the box: the slice is exactly what it was then; then undo everything
    while len(logic.session.steps) > 1:
        logic.undo()
    assert np.array_equal(geometry.orient(segment_array(seg, logic.segment_id, volume)[here]), after_box)
    logic.undo()
    assert np.array_equal(segment_array(seg, logic.segment_id, volume), target_before)
    assert np.array_equal(segment_array(seg, other, volume), other_before)

    # redo the box and finish: a normal segment remains, the markups go, the log is an expert trajectory
    logic.run(logic.advance_work())
    logic.run(logic.accept_work())
    path = logic.finish()
    assert not logic.active
    assert env.scene.GetNodesByClass("vtkMRMLMarkupsNode").GetNumberOfItems() == 0
    segment = seg.GetSegmentation().GetSegment(logic.segment_id)
    assert segment is not None and seg.GetSegmentation().ContainsRepresentation(
        slicer.vtkSegmentationConverter.GetSegmentationBinaryLabelmapRepresentationName())
    assert segment_array(seg, logic.segment_id, volume)[here].any()
    episode = _check_log(path, geometry, "totalseg_example_ct_sm")
    assert [s.decision for s in episode.steps] == ["accept"]
    assert len(episode.undone) >= 2


def test_session_on_rotated_anisotropic_ct(env, logic_factory, tmp_path):
    """The CT's voxels under a rotated direction matrix and anisotropic spacing, from a clinician's click."""
    _, array = load_volume(CT, "ct")
    _, labels = load_volume(CT_LABELS, "labels")
    volume = volume_from_array(array, "rotated_ct", spacing=(0.9, 1.4, 3.5), origin=(-20.0, 40.0, 5.0),
                               directions=ROTATION)
    liver = labels == LIVER
    node = env.show("Red", volume, ras=centre_ras(volume, liver))
    geometry = slice_geometry(volume, node)
    assert geometry.axis == 2 and geometry.obliquity_deg > 15
    truth = geometry.extract(liver)
    ys, xs = np.nonzero(truth)
    click = Point(int(np.median(xs)), int(np.median(ys)), True)
    assert truth[click.y, click.x]
    logic = logic_factory()
    logic.input_markups().node("positive").AddControlPointWorld(*geometry.pixel_to_ras_point(click.x, click.y))
    seg = env.scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    settings = AgentSettings(policy="oracle", target="liver", max_actions=2, log_enabled=True, log_folder=str(tmp_path))
    assert logic.run(logic.start_work(volume, seg, node, settings, ground_truth=truth,
                                      policy_options=ORACLE)) == "started"
    first = logic.session.steps[0]
    assert first.decision == "hint" and first.applied == click
    applied = logic.markups.node("positive")
    ras = [0.0] * 3
    applied.GetNthControlPointPositionWorld(0, ras)
    assert np.allclose(geometry.ras_to_ijk_point(ras), geometry.pixel_to_ijk_point(click.x, click.y), atol=1e-6)
    logic.continue_()
    here = slice_index(geometry)
    assert np.array_equal(geometry.orient(segment_array(seg, logic.segment_id, volume)[here]), logic.session.mask)
    path = logic.finish()
    _check_log(path, geometry, "rotated_ct")


@pytest.mark.skipif(not (BRAIN.exists() and BRAIN_LABELS.exists()), reason="shared pyradiomics brain1 not present")
def test_session_on_brain_mr(env, logic_factory, tmp_path):
    volume, _ = load_volume(BRAIN, "brain1")
    _, labels = load_volume(BRAIN_LABELS, "brain1_label")
    lesion = labels > 0
    node = env.show("Red", volume, ras=centre_ras(volume, lesion))  # axial: the acquisition plane
    geometry = slice_geometry(volume, node)
    truth = geometry.extract(lesion)
    assert truth.any()
    logic = logic_factory()
    seg = env.scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    settings = AgentSettings(policy="oracle", target="lesion in brain MR", max_actions=2, window="auto",
                             log_enabled=True, log_folder=str(tmp_path))
    logic.run(logic.start_work(volume, seg, node, settings, ground_truth=truth, policy_options=ORACLE))
    logic.continue_()
    here = slice_index(geometry)
    assert np.array_equal(geometry.orient(segment_array(seg, logic.segment_id, volume)[here]), logic.session.mask)
    assert logic.session.steps[0].iou > 0.3
    _check_log(logic.finish(), geometry, "brain1")


def test_start_needs_inputs_and_a_hint_for_hint_policies(env, logic_factory):
    volume, _ = _ct(env)
    node = env.show("Red", volume)
    logic = logic_factory()
    with pytest.raises(AgentLogicError, match="choose an input volume"):
        logic.start_work(volume, None, node, AgentSettings())
    seg = env.scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    with pytest.raises(AgentLogicError, match="needs a first click"):
        logic.run(logic.start_work(volume, seg, node, AgentSettings(policy="builtin", log_enabled=False)))
    with pytest.raises(AgentLogicError, match="no session"):
        logic.accept_work()


def test_propagation_writes_and_undoes_a_3d_segment(env, logic_factory, tmp_path):
    """Propagate from a box on the liver's largest slice within a slice range: the neighbouring slices of the
    segment are written as 3D regions (the key slice and another segment untouched); undo gives the segment
    back exactly; a second run is accepted at Finish and every propagated slice is a 2D episode in the log."""
    volume, _ = load_volume(CT, "ct")
    _, labels = load_volume(CT_LABELS, "labels")
    liver = labels == LIVER
    k = int(np.argmax(liver.sum(axis=(1, 2))))
    import vtk

    matrix = vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(matrix)
    ys, xs = np.nonzero(liver[k])
    node = env.show("Red", volume, ras=list(matrix.MultiplyPoint([float(np.median(xs)), float(np.median(ys)), k,
                                                                   1.0])[:3]))
    geometry = slice_geometry(volume, node)
    assert geometry.axis == 2 and geometry.index == k
    seg = env.scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    other = segments.ensure_segment(seg, volume, name="kidney")
    blocker = np.zeros(liver.shape, bool)
    blocker[k + 1, :, :] = liver[k + 1] & (np.arange(liver.shape[2]) < np.median(xs))[None, :]  # half the liver
    segments.write_region(seg, other, volume, segments.volume_extent(volume), blocker, protect_other_segments=False)
    truth = geometry.extract(liver)
    logic = logic_factory()
    settings = _key_slice_session(logic, volume, seg, node, truth, tmp_path)
    assert logic.session.mask.any() and logic.slice_count == liver.shape[0]
    key_before = segment_array(seg, logic.segment_id, volume)
    other_before = segment_array(seg, other, volume)
    with pytest.raises(AgentLogicError, match="must hold this slice"):
        logic.propagate_work(first=k + 1, last=k + 2)
    status = logic.run(logic.propagate_work(first=k, last=k + 2))
    assert status.startswith("propagated to 2 slices"), status
    after = segment_array(seg, logic.segment_id, volume)
    assert np.array_equal(after[k], key_before[k])  # the session's own slice is not rewritten
    for index in (k + 1, k + 2):
        assert after[index].sum() > 100 and (after[index] & liver[index]).sum() / after[index].sum() > 0.8
    assert not (after[k + 1] & blocker[k + 1]).any()  # the other segment's voxels are protected
    assert np.array_equal(segment_array(seg, other, volume), other_before)
    assert not after[:k].any() and not after[k + 3:].any()
    undone = logic.volume_runs[-1]
    assert logic.undo_propagation()
    assert np.array_equal(segment_array(seg, logic.segment_id, volume), key_before)

    from MedSAMAgentLib.slicer.logic import PropagationProgress

    progress = PropagationProgress()
    status = logic.run(logic.propagate_work(first=k - 1, last=k + 1, progress=progress))
    assert status.startswith("propagated to 2 slices") and progress.done == 2 == progress.total, status
    written = segment_array(seg, logic.segment_id, volume)
    assert written[k - 1].any() and written[k + 1].any() and not written[k + 2].any()
    path = logic.finish()
    episodes = read_episodes(path)
    key = [e for e in episodes if "origin" not in e.header["meta"]]  # the panel's sessions; engine slices have one
    assert len(key) == 1 and key[0].accepted  # the panel's own session: logged once, not again by the engine
    propagated = {e.header["meta"]["slice"]: e for e in episodes if e.header["meta"].get("origin") == "propagated"}
    assert set(propagated) == {k - 1, k + 1, k + 2}
    for index in (k - 1, k + 1):
        episode = next(e for e in episodes if e.header["meta"].get("origin") == "propagated" and e.accepted and
                       e.header["meta"]["slice"] == index)
        meta = episode.header["meta"]
        assert meta["source"] == "slicer" and meta["volume_identity"]["name"] == "ct"
        assert meta["key_episode"] == key[0].episode_id
        # what the segment shows, less the other segment's voxels (axial: the engine's plane is the volume's)
        assert np.array_equal(episode.final_mask & ~blocker[index], written[index])
    dropped = [e for e in episodes if e.header["meta"].get("propagation_run") and not e.accepted]
    assert {e.header["meta"]["slice"] for e in dropped} >= {k + 2} and \
        all(e.end["status"] in ("undone", "superseded") for e in dropped)
    assert {e.episode_id for e in dropped} >= {r.session.episode_id for r in undone.engine.records.values()
                                               if r.origin == "propagated"}
    # the clinician then redoes propagated slice k+1 in a session of its own: its log names what it corrects
    node = env.show("Red", volume, ras=list(matrix.MultiplyPoint([float(np.median(xs)), float(np.median(ys)),
                                                                   k + 1, 1.0])[:3]))
    assert slice_geometry(volume, node).index == k + 1
    logic.run(logic.start_work(volume, seg, node, settings, ground_truth=slice_geometry(volume, node).extract(liver),
                               policy_options=ORACLE))
    fixed = read_episodes(logic.finish())[-1]
    accepted_k1 = next(e for e in episodes if e.accepted and e.header["meta"].get("slice") == k + 1)
    assert fixed.header["meta"]["corrects_episode"] == accepted_k1.episode_id


def test_sam2_propagation_from_the_panel_seeds_the_memory_with_the_slice_prompts(env, tmp_path):
    """MedSAM2 (tiny random weights, loaded as users load it) in a sagittal view: the clinician's click on the
    panel's slice reaches SAM2's video predictor on the same voxel of the volume's own plane, the slice range
    bounds the run, the segment is written and Undo takes it back exactly; a correction and a Clear slice
    reach SAM2's memory and Undo takes them out of it."""
    pytest.importorskip("sam2")
    from test_propagation_sam2 import IMAGE_SIZE, tiny_medsam2

    from MedSAMAgentLib.propagation_sam2 import SAM2VolumeSession

    tool = tiny_medsam2(tmp_path)
    volume, liver = _ct(env)
    node = env.show("Yellow", volume, ras=centre_ras(volume, liver))
    geometry = slice_geometry(volume, node)
    assert geometry.axis == 0
    truth = geometry.extract(liver)
    ys, xs = np.nonzero(truth)
    click = Point(int(np.median(xs)), int(np.median(ys)), True)
    logic = AgentLogic(env.scene, tool_factory=lambda *args, **kwargs: tool)
    logic.input_markups().node("positive").AddControlPointWorld(*geometry.pixel_to_ras_point(click.x, click.y))
    seg = env.scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    settings = AgentSettings(policy="oracle", target="liver", max_actions=1, tool="medsam2", log_enabled=False)
    logic.run(logic.start_work(volume, seg, node, settings, ground_truth=truth, policy_options=ORACLE))
    assert logic.session.steps[0].applied == click and logic.session.mask.any()
    before = segment_array(seg, logic.segment_id, volume)
    index = geometry.index
    status = logic.run(logic.propagate_work(first=index - 1, last=index + 2))
    run = logic.volume_runs[-1]
    assert isinstance(run.engine, SAM2VolumeSession) and status.startswith("propagated to 3 slices"), status
    i, j, k = np.rint(geometry.pixel_to_ijk_point(click.x, click.y)).astype(int)
    assert i == index
    inputs = run.engine.state["point_inputs_per_obj"][0][index]
    dims = volume.GetImageData().GetDimensions()  # the sagittal plane of the volume: rows k, columns j
    expected = torch.tensor([[j / dims[1], k / dims[2]]], dtype=torch.float32) * IMAGE_SIZE
    assert inputs["point_labels"].tolist() == [[1]] and torch.allclose(inputs["point_coords"][0].cpu(), expected)
    written = segment_array(seg, logic.segment_id, volume)
    assert run.slices == [index - 1, index + 1, index + 2]
    for s in run.slices:
        assert np.array_equal(written[:, :, s], run.engine.slice_mask(s))
    outside = [s for s in range(dims[0]) if s not in run.slices]
    assert np.array_equal(written[:, :, outside], before[:, :, outside])  # the key slice and beyond the range
    # a click on propagated slice index+1 (Override): a prompt on that frame of SAM2's memory, index+2 tracked
    # again from it; Undo takes the correction back exactly
    from dataclasses import replace

    fix_click = Point(click.x + 3, click.y + 2, True)
    at = replace(geometry, index=index + 1)
    logic.input_markups().node("positive").AddControlPointWorld(*at.pixel_to_ras_point(fix_click.x, fix_click.y))
    assert logic.edit_slice() == index + 1
    status = logic.run(logic.override_work(first=index - 1, last=index + 2))
    assert status.startswith(f"corrected slice {index + 1}"), status
    assert index + 1 in run.engine.state["point_inputs_per_obj"][0]  # now a conditioning frame of the memory
    assert logic.volume_runs[-1].slices == [index + 1, index + 2]
    fixed = segment_array(seg, logic.segment_id, volume)
    for s in (index + 1, index + 2):
        assert np.array_equal(fixed[:, :, s], run.engine.slice_mask(s))
    others = [s for s in range(dims[0]) if s not in (index + 1, index + 2)]
    assert np.array_equal(fixed[:, :, others], written[:, :, others])
    assert logic.undo_propagation()
    assert np.array_equal(segment_array(seg, logic.segment_id, volume), written)
    assert index + 1 not in run.engine.state["point_inputs_per_obj"][0]
    # Clear slice on index+1 (the view scrolled there): SAM2 gets an empty mask on that frame ("absent"),
    # index+1 and index+2 are emptied in the segment; Undo gives both the segment and SAM2's state back
    view = env.show("Yellow", volume, ras=list(at.pixel_to_ras_point(click.x, click.y)))
    assert logic.clearable_slice(view) == index + 1
    assert logic.run(logic.clear_slice_work(view)).startswith(f"cleared slice {index + 1}")
    emptied = segment_array(seg, logic.segment_id, volume)
    assert not emptied[:, :, index + 1:index + 3].any()
    assert np.array_equal(np.delete(emptied, [index + 1, index + 2], axis=2),
                          np.delete(written, [index + 1, index + 2], axis=2))
    assert index + 1 in run.engine.state["mask_inputs_per_obj"][0]
    assert logic.undo_propagation()
    assert np.array_equal(segment_array(seg, logic.segment_id, volume), written)
    assert index + 1 not in run.engine.state["mask_inputs_per_obj"][0]
    assert logic.undo_propagation()
    assert np.array_equal(segment_array(seg, logic.segment_id, volume), before)
    logic.finish()


def test_a_correction_on_a_propagated_slice_propagates_again_onward(env, logic_factory, tmp_path):
    """After a run, the clinician draws a box on propagated slice k+1 and presses Override: that slice is
    corrected through the volume session and the slices beyond it are propagated again (key slice and the
    slice before untouched), the segment is written over those slices only, the log holds the clinician's
    correction, Undo takes the whole correction back exactly, and at Finish the corrected slice is accepted
    while the propagated versions it replaced are not."""
    from dataclasses import replace

    volume, liver = _ct(env)
    k = int(np.argmax(liver.sum(axis=(1, 2))))
    ys, xs = np.nonzero(liver[k])
    import vtk

    matrix = vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(matrix)
    node = env.show("Red", volume, ras=list(matrix.MultiplyPoint([float(np.median(xs)), float(np.median(ys)), k,
                                                                   1.0])[:3]))
    geometry = slice_geometry(volume, node)
    assert geometry.axis == 2 and geometry.index == k
    seg = env.scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    logic = logic_factory()
    _key_slice_session(logic, volume, seg, node, geometry.extract(liver), tmp_path)
    status = logic.run(logic.propagate_work(first=k - 1, last=k + 3))
    assert status.startswith("propagated to 4 slices"), status
    run = logic.volume_runs[-1]
    propagated = segment_array(seg, logic.segment_id, volume)
    old = {i: run.engine.records[i].session for i in (k + 1, k + 2, k + 3)}

    # a box over the left half of the liver on slice k+1, drawn in the same view scrolled one slice on
    at = replace(geometry, index=k + 1)
    rows, cols = np.nonzero(at.extract(liver))
    box = Box(int(cols.min()), int(rows.min()), int((cols.min() + cols.max()) // 2), int(rows.max()))
    logic.markups._set_box(logic.node_for_placing("box"), at, box)  # what Slicer's ROI placement leaves
    assert logic.edit_slice() == k + 1
    status = logic.run(logic.override_work(first=k - 1, last=k + 3))
    assert status.startswith(f"corrected slice {k + 1}; propagated again to"), status
    fix = logic.volume_runs[-1]
    assert fix.engine is run.engine and fix.slices[0] == k + 1 and fix.operations >= 2
    corrected = segment_array(seg, logic.segment_id, volume)
    assert np.array_equal(corrected[:k + 1], propagated[:k + 1])  # the key slice and the one below: kept
    assert not np.array_equal(corrected[k + 1], propagated[k + 1])
    assert corrected[k + 1].sum() < 0.8 * propagated[k + 1].sum()  # half the liver's box: a smaller mask
    for i in fix.slices:  # what the engine holds now, on every slice it wrote
        assert np.array_equal(corrected[i], run.engine.slice_mask(i))
    assert set(fix.slices) >= {k + 1, k + 2}
    session = run.engine.records[k + 1].session
    assert session is old[k + 1] and run.engine.records[k + 1].origin == "corrected"
    i1, j1, _ = np.rint(at.pixel_to_ijk_point(box.x1, box.y1)).astype(int)
    i2, j2, _ = np.rint(at.pixel_to_ijk_point(box.x2, box.y2)).astype(int)
    assert session.actions[-1] == Box(min(i1, i2), min(j1, j2), max(i1, i2), max(j1, j2))  # the volume's plane
    assert all(run.engine.records[i].session is not old[i] for i in fix.slices if i > k + 1)
    assert logic.propagated_episodes[(volume.GetID(), 2, k + 2)] == run.engine.records[k + 2].session.episode_id

    assert logic.undo_propagation()  # the correction, as one operation
    assert np.array_equal(segment_array(seg, logic.segment_id, volume), propagated)
    assert all(run.engine.records[i].session is old[i] for i in old)
    assert run.engine.records[k + 1].origin == "propagated"
    assert logic.propagated_episodes[(volume.GetID(), 2, k + 2)] == old[k + 2].episode_id
    undone = [s.episode_id for s in fix.sessions]

    logic.markups._set_box(logic.node_for_placing("box"), at, box)  # again, and this time kept
    logic.run(logic.override_work(first=k - 1, last=k + 3))
    final = segment_array(seg, logic.segment_id, volume)
    assert np.array_equal(final, corrected)  # the same correction gives the same volume
    path = logic.finish()
    episodes = {e.episode_id: e for e in read_episodes(path)}
    fixed = episodes[old[k + 1].episode_id]
    assert fixed.accepted and np.array_equal(fixed.final_mask, final[k + 1])
    steps = [s.record for s in fixed.steps if (s.record.get("extra") or {}).get("correction")]
    assert len(steps) == 1 and steps[0]["decision"] == "override" and steps[0]["actor"] == "clinician"
    assert steps[0]["extra"]["slice"] == k + 1 and steps[0]["extra"]["clinician_edit"] == "drew a new box"
    assert steps[0]["extra"]["applied_coordinates"]["ijk"][0][2] == k + 1  # logged where it was drawn
    for i in (k + 2, k + 3):  # the propagated versions the correction replaced: never accepted
        if i in fix.slices:
            assert not episodes[old[i].episode_id].accepted
            assert episodes[old[i].episode_id].end["status"] == "superseded"
            assert episodes[run.engine.records[i].session.episode_id].accepted
    assert undone and all(episodes[e].end["status"] == "undone" and not episodes[e].accepted for e in undone)
    below = episodes[run.engine.records[k - 1].session.episode_id]
    assert below.accepted, (below.end, run.slices, fix.slices)  # the other side: as it was


def test_start_beyond_where_propagation_stopped_carries_the_segment_on(env, logic_factory, tmp_path):
    """The structure goes on past where propagation stopped: the clinician's box on a slice no run reached
    (Start there) is a correction of the open session, propagated onward and bridged back over the slices
    between (the structure is on both sides); the session's other slices are kept; one Undo takes it back."""
    from dataclasses import replace

    volume, liver, k, show = _liver_slices(env)
    node = show(k)
    geometry = slice_geometry(volume, node)
    seg = env.scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    logic = logic_factory()
    settings = _key_slice_session(logic, volume, seg, node, geometry.extract(liver), tmp_path)
    key_session = logic.session
    logic.run(logic.propagate_work(first=k - 1, last=k + 1))
    run = logic.volume_runs[-1]
    propagated = segment_array(seg, logic.segment_id, volume)
    assert propagated[k + 1].any() and not propagated[k + 2:].any()

    node = show(k + 4)
    assert logic.propagated_slice(node) is None and logic.correctable_slice(node) == k + 4
    with pytest.raises(AgentLogicError, match=f"slice {k + 4} has no mask"):
        logic.start_work(volume, seg, node, settings)  # nothing placed: a message, the session kept
    at = replace(geometry, index=k + 4)
    logic.markups._set_box(logic.node_for_placing("box"), at, gt_box(at.extract(liver)))
    status = logic.run(logic.start_work(volume, seg, node, settings, first=k - 1, last=k + 5))
    assert status.startswith(f"corrected slice {k + 4}; propagated again to 1 slices onward; bridged the 2 "
                             "slices back to the propagated ones"), status
    assert logic.session is key_session and logic.active and len(logic.volume_runs) == 2
    carried = segment_array(seg, logic.segment_id, volume)
    assert np.array_equal(carried[:k + 2], propagated[:k + 2])  # the slices propagated before: kept
    for i in range(k + 2, k + 6):
        assert carried[i].any() and np.array_equal(carried[i], run.engine.slice_mask(i)), i
        assert dice(carried[i], liver[i]) > 0.8, i
    assert run.engine.records[k + 4].origin == "corrected"
    assert logic.undo_propagation()  # one undo step
    assert np.array_equal(segment_array(seg, logic.segment_id, volume), propagated)
    assert k + 4 not in run.engine.records and k + 2 not in run.engine.records
    logic.finish()


def test_start_and_clear_on_propagated_slices_keep_the_session(env, logic_factory, tmp_path):
    """With a propagation open, Start on a propagated slice (prompt placed there) corrects that slice and
    propagates again onward instead of abandoning the session; Clear slice empties a propagated slice and the
    propagated slices carried on beyond it (a clinician's slice stops it), written as one region, the other
    segment untouched, logged as a clinician step; Undo gives the segment and the log back exactly."""
    from dataclasses import replace

    volume, liver, k, show = _liver_slices(env)
    node = show(k)
    geometry = slice_geometry(volume, node)
    seg = env.scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    other = segments.ensure_segment(seg, volume, name="kidney")
    blocker = np.zeros(liver.shape, bool)
    blocker[k + 2, :, :] = liver[k + 2] & (np.arange(liver.shape[2]) < np.median(np.nonzero(liver[k])[1]))[None, :]
    segments.write_region(seg, other, volume, segments.volume_extent(volume), blocker, protect_other_segments=False)
    logic = logic_factory()
    settings = _key_slice_session(logic, volume, seg, node, geometry.extract(liver), tmp_path)
    key_session = logic.session
    assert logic.propagated_slice(node) is None and logic.clearable_slice(node) is None  # no run yet
    status = logic.run(logic.propagate_work(first=k - 1, last=k + 3))
    assert status.startswith("propagated to 4 slices"), status
    run = logic.volume_runs[-1]
    propagated = segment_array(seg, logic.segment_id, volume)
    other_before = segment_array(seg, other, volume)
    assert logic.propagated_slice(node) is None  # the session's own slice: Start / Clear slice are not for it

    # Clear slice on k+1: k+1..k+3 (propagated on from it) emptied, k-1 and k kept, one region, one undo step
    node = show(k + 1)
    assert logic.clearable_slice(node) == k + 1
    status = logic.run(logic.clear_slice_work(node))
    assert status == f"cleared slice {k + 1} (no structure here) and the 2 propagated slices beyond it", status
    cleared = segment_array(seg, logic.segment_id, volume)
    assert not cleared[k + 1:].any() and np.array_equal(cleared[:k + 1], propagated[:k + 1])
    assert np.array_equal(segment_array(seg, other, volume), other_before)
    assert run.engine.records[k + 1].origin == "cleared" and k + 2 not in run.engine.records
    assert logic.clearable_slice(node) is None and logic.clearable_slice(show(k + 2)) is None  # nothing to clear
    assert logic.undo_propagation()
    assert np.array_equal(segment_array(seg, logic.segment_id, volume), propagated)
    assert run.engine.records[k + 1].origin == "propagated" and logic.clearable_slice(show(k + 1)) == k + 1

    # Start on k+2 with a box over the liver's right half and a positive click in it there: a correction of
    # k+2 (both prompts, in that order), re-propagated to k+3
    node = show(k + 2)
    with pytest.raises(AgentLogicError, match=f"slice {k + 2} was propagated in this session"):
        logic.start_work(volume, seg, node, settings)  # nothing placed: a message, the session kept
    at = replace(geometry, index=k + 2)
    rows, cols = np.nonzero(at.extract(liver))
    box = Box(int((cols.min() + cols.max()) // 2), int(rows.min()), int(cols.max()), int(rows.max()))
    logic.markups._set_box(logic.node_for_placing("box"), replace(geometry, index=k + 1), box)
    with pytest.raises(ValueError, match=f"not on slice {k + 2}"):  # drawn on another slice than the view's
        logic.start_work(volume, seg, node, settings)
    click = Point((box.x1 + box.x2) // 2, (box.y1 + box.y2) // 2, True)

    def place():
        logic.markups._set_box(logic.node_for_placing("box"), at, box)
        logic.markups.node("positive").AddControlPointWorld(*at.pixel_to_ras_point(click.x, click.y))

    place()
    actions_before = len(run.engine.records[k + 2].session.actions)
    status = logic.run(logic.start_work(volume, seg, node, settings, first=k - 1, last=k + 3))
    assert status.startswith(f"corrected slice {k + 2}; propagated again to 1 slices onward"), status
    assert logic.session is key_session and logic.active and len(logic.volume_runs) == 2
    corrected = segment_array(seg, logic.segment_id, volume)
    assert np.array_equal(corrected[:k + 2], propagated[:k + 2])  # the other accepted slices: kept
    assert corrected[k + 2].sum() < 0.8 * propagated[k + 2].sum()
    for i in (k + 2, k + 3):
        assert np.array_equal(corrected[i], run.engine.slice_mask(i) & ~blocker[i])
    assert run.engine.records[k + 2].origin == "corrected"
    plane = run.engine.records[k + 2].session.actions[-2:]
    assert [type(a) for a in plane] == [Box, Point] and plane[1].positive
    assert logic.undo_propagation()  # the Start's correction: one undo step
    assert np.array_equal(segment_array(seg, logic.segment_id, volume), propagated)
    assert len(run.engine.records[k + 2].session.actions) == actions_before  # the propagated prompts alone again
    place()
    logic.run(logic.start_work(volume, seg, node, settings, first=k - 1, last=k + 3))
    assert np.array_equal(segment_array(seg, logic.segment_id, volume), corrected)

    # Clear slice on k+1 now: the clinician's slice k+2 stops it
    status = logic.run(logic.clear_slice_work(show(k + 1)))
    assert status == f"cleared slice {k + 1} (no structure here)", status
    final = segment_array(seg, logic.segment_id, volume)
    assert not final[k + 1].any()
    assert np.array_equal(np.delete(final, k + 1, axis=0), np.delete(corrected, k + 1, axis=0))
    path = logic.finish()
    episodes = {e.episode_id: e for e in read_episodes(path)}
    k1_episodes = [e for e in episodes.values() if e.header["meta"].get("slice") == k + 1]
    assert len(k1_episodes) == 1
    cleared_episode = k1_episodes[0]
    clears = [s.record for s in cleared_episode.steps if s.decision == "clear"]
    assert len(clears) == 1 and clears[0]["actor"] == "clinician" and not decode_mask(clears[0]["mask"]).any()
    extra = clears[0]["extra"]
    assert extra["slice"] == k + 1 and extra["cleared"] and extra["correction"] and extra["cleared_slices"] == [k + 1]
    assert extra["clinician_edit"] == "no structure on this slice" and extra["panel_slice"]["index"] == k + 1
    assert [s.decision for s in cleared_episode.undone] == ["clear"]  # the first clear, undone
    assert cleared_episode.end["status"] == "cleared" and not cleared_episode.accepted
    fixed = [e for e in episodes.values() if e.header["meta"].get("slice") == k + 2 and e.accepted]
    assert len(fixed) == 1 and np.array_equal(fixed[0].final_mask & ~blocker[k + 2], final[k + 2])
    assert [(s.record["decision"], s.record["extra"]["clinician_edit"]) for s in fixed[0].steps
            if s.record["extra"].get("correction")] == [("override", "drew a new box"),
                                                        ("override", "placed a new point")]
    below = episodes[run.engine.records[k - 1].session.episode_id]
    assert below.accepted and episodes[key_session.episode_id].accepted  # nothing else was lost

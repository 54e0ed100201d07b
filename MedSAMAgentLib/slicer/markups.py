"""The agent's proposals and the applied prompts as markups in RAS, and the clinician's edits read back.

Nodes (created on demand, found again by name and attribute so a saved scene reopens with them):
- ``proposal``: the agent's proposed click, one control point on the voxel centre the engine chose, locked
  until the clinician asks to override, shown in 2D views only, in its own colour (amber);
- ``proposed box``: the agent's proposed box, an ROI one voxel thick on the slice, same colour, locked;
- ``positive`` / ``negative``: applied clicks (green / red) and where the clinician places new ones (markups
  have no per-point colour, so the sign is the node);
- ``box``: the applied box, and where the clinician draws a new one (ROI).

An override is read from what changed since the markups were last drawn: a new point in the positive or
negative node (the newest wins), a new or resized box, a resized proposed box, or the proposed point moved or
its sign flipped. Coordinates are world RAS (parent transforms included) and map to pixels through
``SliceGeometry``.

Imports only ``slicer``, ``vtk`` and ``numpy``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

from .. import colors
from ..actions import Action, Box, Point, Stop
from ..colors import as_float
from .geometry import SliceGeometry, numpy_to_vtk_matrix, vtk_matrix_to_numpy

ROLE_ATTRIBUTE = "MedSAMAgent.Role"
COLOURS = {
    "proposal": as_float(colors.PROPOSAL),
    "proposed box": as_float(colors.PROPOSAL),
    "positive": as_float(colors.POSITIVE),
    "negative": as_float(colors.NEGATIVE),
    "box": as_float(colors.BOX),
}
POINT_ROLES = ("proposal", "positive", "negative")
ROI_ROLES = ("proposed box", "box")


class MarkupsError(ValueError):
    """What the clinician drew cannot be read as an action on this slice; the message says why."""


def _display(node, role: str, view_node_ids: Sequence[str] = ()) -> None:
    if node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()
    display = node.GetDisplayNode()
    colour = COLOURS[role]
    display.SetColor(*colour)
    display.SetSelectedColor(*colour)
    if hasattr(display, "SetActiveColor"):
        display.SetActiveColor(*colour)
    display.SetVisibility3D(False)  # prompts belong to the slice they were given on
    if view_node_ids:
        display.SetViewNodeIDs(list(view_node_ids))
    if role in ("proposal",):
        display.SetGlyphScale(display.GetGlyphScale() * 1.6)
        display.SetTextScale(3.5)
    if role in ROI_ROLES:
        display.SetFillOpacity(0.05 if role == "box" else 0.12)


@dataclass
class _Snapshot:
    """What the nodes held when last drawn, to tell the clinician's edits apart."""

    counts: dict = field(default_factory=dict)
    proposal_point: Optional[tuple] = None
    proposal_box: Optional[tuple] = None
    box: Optional[tuple] = None


class SessionMarkups:
    """The markups of one segmentation session on one slice."""

    def __init__(self, scene, prefix: str = "MedSAMAgent", view_node_ids: Sequence[str] = ()):
        self.scene = scene
        self.prefix = prefix
        self.view_node_ids = list(view_node_ids)
        self.nodes: dict = {}
        self._snapshot = _Snapshot()

    # -- nodes --------------------------------------------------------------------------------------------
    def node(self, role: str):
        """The node for ``role``, created (or found in the scene) on first use."""
        node = self.nodes.get(role)
        if node is not None and self.scene.IsNodePresent(node):
            return node
        name = f"{self.prefix} {role}"
        found = None
        candidates = self.scene.GetNodesByName(name)
        for i in range(candidates.GetNumberOfItems()):
            candidate = candidates.GetItemAsObject(i)
            if candidate.GetAttribute(ROLE_ATTRIBUTE) == role:
                found = candidate
                break
        if found is None:
            cls = "vtkMRMLMarkupsROINode" if role in ROI_ROLES else "vtkMRMLMarkupsFiducialNode"
            found = self.scene.AddNewNodeByClass(cls, name)
            found.SetAttribute(ROLE_ATTRIBUTE, role)
            if role in POINT_ROLES:
                found.SetMarkupLabelFormat("+" if role == "positive" else "-" if role == "negative" else "%N")
            _display(found, role, self.view_node_ids)
        found.SetLocked(role in ("proposal", "proposed box"))
        self.nodes[role] = found
        return found

    def remove_all(self) -> None:
        """Take the session's markups out of the scene (Finish: what remains is the segment)."""
        for role in POINT_ROLES + ROI_ROLES:
            node = self.nodes.pop(role, None)
            if node is not None and self.scene.IsNodePresent(node):
                self.scene.RemoveNode(node)

    def set_editable(self, editable: bool) -> None:
        """Unlock the proposal so that the clinician can move, flip or resize it (the Override mode)."""
        for role in ("proposal", "proposed box"):
            self.node(role).SetLocked(not editable)

    # -- drawing ------------------------------------------------------------------------------------------
    def _set_point(self, node, geometry: SliceGeometry, point: Point, label: str) -> None:
        ras = geometry.pixel_to_ras_point(point.x, point.y)
        index = node.AddControlPointWorld(*ras) if hasattr(node, "AddControlPointWorld") else \
            node.AddControlPoint(*ras)
        node.SetNthControlPointLabel(index, label)
        node.SetNthControlPointDescription(index, point.label)

    def _set_box(self, node, geometry: SliceGeometry, box: Box) -> None:
        """An ROI spanning the box's corner pixel centres, aligned with the slice's pixel axes, 1 voxel thick."""
        dx, dy, normal = geometry.in_plane_directions()
        sx, sy, sn = geometry.spacing
        orientation = np.eye(4)
        orientation[:3, 0], orientation[:3, 1], orientation[:3, 2] = dx, dy, normal
        centre = geometry.pixel_to_ras_point((box.x1 + box.x2) / 2, (box.y1 + box.y2) / 2)
        node.SetAndObserveObjectToNodeMatrix(numpy_to_vtk_matrix(orientation))
        node.SetCenterWorld(*centre)
        node.SetSize((box.x2 - box.x1) * sx, (box.y2 - box.y1) * sy, sn)

    def draw(self, geometry: SliceGeometry, actions: Sequence[Action], proposal: Optional[Action]) -> None:
        """Show the applied prompts (``actions``: the newest box and the clicks since it) and the pending
        proposal; remembers what was drawn so that edits can be read back."""
        positive, negative, box_node = self.node("positive"), self.node("negative"), self.node("box")
        proposal_node, proposed_box = self.node("proposal"), self.node("proposed box")
        for node in (positive, negative, proposal_node):
            node.RemoveAllControlPoints()
        box_index = max((i for i, a in enumerate(actions) if isinstance(a, Box)), default=None)
        if box_index is not None:
            self._set_box(box_node, geometry, actions[box_index])
        else:
            box_node.RemoveAllControlPoints()
        for action in actions:
            if isinstance(action, Point):
                self._set_point(positive if action.positive else negative, geometry, action,
                                "+" if action.positive else "-")
        proposed_box.RemoveAllControlPoints()
        if isinstance(proposal, Point):
            self._set_point(proposal_node, geometry, proposal, ("+" if proposal.positive else "-") + " proposed")
        elif isinstance(proposal, Box):
            self._set_box(proposed_box, geometry, proposal)
        self._snapshot = _Snapshot(
            counts={role: self.node(role).GetNumberOfControlPoints() for role in ("positive", "negative")},
            proposal_point=self._point_state(proposal_node),
            proposal_box=self._roi_state(proposed_box),
            box=self._roi_state(box_node),
        )

    def flip_proposal(self) -> None:
        """Flip the sign of the proposed click (the clinician's correction of a positive/negative mix-up)."""
        node = self.node("proposal")
        if node.GetNumberOfControlPoints() == 0:
            raise MarkupsError("there is no proposed click to flip")
        positive = node.GetNthControlPointDescription(0) != "positive"
        node.SetNthControlPointDescription(0, "positive" if positive else "negative")
        node.SetNthControlPointLabel(0, ("+" if positive else "-") + " proposed")

    # -- reading back -------------------------------------------------------------------------------------
    @staticmethod
    def _point_state(node) -> Optional[tuple]:
        if node.GetNumberOfControlPoints() == 0:
            return None
        ras = [0.0, 0.0, 0.0]
        node.GetNthControlPointPositionWorld(0, ras)
        return tuple(round(v, 6) for v in ras) + (node.GetNthControlPointDescription(0),)

    @staticmethod
    def _roi_state(node) -> Optional[tuple]:
        if node.GetNumberOfControlPoints() == 0:
            return None
        centre, size = [0.0] * 3, [0.0] * 3
        node.GetCenterWorld(centre)
        node.GetSizeWorld(size)
        matrix = vtk_matrix_to_numpy(node.GetObjectToWorldMatrix())[:3, :3]
        return tuple(round(v, 6) for v in list(centre) + list(size) + list(matrix.ravel()))

    def point_action(self, node, index: int, geometry: SliceGeometry, positive: bool) -> Point:
        ras = [0.0, 0.0, 0.0]
        node.GetNthControlPointPositionWorld(index, ras)
        return self._pixel_point(geometry, ras, positive)

    @staticmethod
    def _pixel_point(geometry: SliceGeometry, ras: Sequence[float], positive: bool) -> Point:
        x, y = geometry.ras_to_pixel_point(ras)
        x, y = int(np.floor(x + 0.5)), int(np.floor(y + 0.5))
        if not (0 <= x < geometry.width and 0 <= y < geometry.height):
            raise MarkupsError(f"the click at RAS {np.round(ras, 1).tolist()} is outside the slice")
        return Point(x, y, positive)

    def box_action(self, node, geometry: SliceGeometry) -> Box:
        centre, size = [0.0] * 3, [0.0] * 3
        node.GetCenterWorld(centre)
        node.GetSizeWorld(size)
        axes = vtk_matrix_to_numpy(node.GetObjectToWorldMatrix())[:3, :3]
        axes = axes / np.maximum(np.linalg.norm(axes, axis=0), 1e-12)
        corners = []
        for sx in (-0.5, 0.5):
            for sy in (-0.5, 0.5):
                for sz in (-0.5, 0.5):
                    ras = np.asarray(centre) + axes @ (np.array([sx, sy, sz]) * np.asarray(size))
                    corners.append(geometry.ras_to_pixel_point(ras))
        xs, ys = np.array(corners).T
        x1, x2 = np.clip(np.floor(np.array([xs.min(), xs.max()]) + 0.5), 0, geometry.width - 1)
        y1, y2 = np.clip(np.floor(np.array([ys.min(), ys.max()]) + 0.5), 0, geometry.height - 1)
        if x2 < x1 or y2 < y1:
            raise MarkupsError("the box does not overlap the slice")
        return Box(int(x1), int(y1), int(x2), int(y2))

    def _edited(self) -> Optional[tuple]:
        """The node (and control point) of the clinician's newest edit since the markups were drawn: (role,
        node, point index, positive); None if nothing changed. Order: a new point (the newest, in either node),
        a new or changed box, the proposed box resized, the proposed point moved or flipped."""
        newest = None
        for role, positive in (("positive", True), ("negative", False)):
            node = self.node(role)
            before = self._snapshot.counts.get(role, 0)
            for index in range(before, node.GetNumberOfControlPoints()):
                # markups keep no placement time; the later index and node order decide
                newest = (role, node, index, positive)
        if newest is not None:
            return newest
        box_node = self.node("box")
        if self._roi_state(box_node) != self._snapshot.box and box_node.GetNumberOfControlPoints():
            return "box", box_node, 0, True
        proposed_box = self.node("proposed box")
        if self._roi_state(proposed_box) != self._snapshot.proposal_box and proposed_box.GetNumberOfControlPoints():
            return "proposed box", proposed_box, 0, True
        proposal = self.node("proposal")
        state = self._point_state(proposal)
        if state is not None and state != self._snapshot.proposal_point:
            return "proposal", proposal, 0, proposal.GetNthControlPointDescription(0) == "positive"
        return None

    def read_edit(self, geometry: SliceGeometry) -> Optional[tuple[Action, str]]:
        """The clinician's action since the markups were drawn, with what they did; None if nothing changed
        (``_edited`` says which edit counts)."""
        edited = self._edited()
        if edited is None:
            return None
        role, node, index, positive = edited
        if role in ("positive", "negative"):
            return self.point_action(node, index, geometry, positive), "placed a new point"
        if role == "box":
            return self.box_action(node, geometry), "drew a new box"
        if role == "proposed box":
            return self.box_action(node, geometry), "resized the proposed box"
        state = self._point_state(node)
        what = []
        if self._snapshot.proposal_point and state[:3] != self._snapshot.proposal_point[:3]:
            what.append("moved")
        if self._snapshot.proposal_point and state[3] != self._snapshot.proposal_point[3]:
            what.append("flipped")
        return self.point_action(node, 0, geometry, positive), " and ".join(what) + " the proposed point"

    def edit_position(self) -> Optional[np.ndarray]:
        """World RAS of the newest edit (a point, or a box's centre): which slice the clinician placed it on."""
        edited = self._edited()
        if edited is None:
            return None
        role, node, index, _ = edited
        ras = [0.0, 0.0, 0.0]
        if role in ROI_ROLES:
            node.GetCenterWorld(ras)
        else:
            node.GetNthControlPointPositionWorld(index, ras)
        return np.asarray(ras, float)

    def new_inputs(self) -> dict:
        """The clinician's prompts placed since the markups were last drawn, in world RAS: the points per
        sign and the box if it was drawn or changed. A new Start carries them over (``put_inputs``)."""
        carried: dict = {"positive": [], "negative": [], "box": None}
        for role in ("positive", "negative"):
            node = self.node(role)
            for index in range(self._snapshot.counts.get(role, 0), node.GetNumberOfControlPoints()):
                ras = [0.0, 0.0, 0.0]
                node.GetNthControlPointPositionWorld(index, ras)
                carried[role].append(ras)
        box = self.node("box")
        if box.GetNumberOfControlPoints() and self._roi_state(box) != self._snapshot.box:
            centre, size = [0.0] * 3, [0.0] * 3
            box.GetCenterWorld(centre)
            box.GetSize(size)
            carried["box"] = (centre, size, vtk_matrix_to_numpy(box.GetObjectToNodeMatrix()))
        return carried

    def new_actions(self, geometry: SliceGeometry) -> list[tuple[Action, str]]:
        """The prompts placed since the markups were last drawn as actions on ``geometry``'s slice: the box
        first (if drawn or changed), then the new clicks; what a Start on a propagated slice corrects it with."""
        placed: list[tuple[Action, str]] = []
        ras = [0.0, 0.0, 0.0]

        def on_slice(what: str) -> None:  # a prompt left on another slice must not be moved onto this one
            if geometry.distance_from_slice(ras) >= 0.5:
                raise MarkupsError(f"the {what} you placed is not on slice {geometry.index} (the one the view "
                                   "shows): place it again on this slice")

        box = self.node("box")
        if box.GetNumberOfControlPoints() and self._roi_state(box) != self._snapshot.box:
            box.GetCenterWorld(ras)
            on_slice("box")
            placed.append((self.box_action(box, geometry), "drew a new box"))
        for role, positive in (("positive", True), ("negative", False)):
            node = self.node(role)
            for index in range(self._snapshot.counts.get(role, 0), node.GetNumberOfControlPoints()):
                node.GetNthControlPointPositionWorld(index, ras)
                on_slice("click")
                placed.append((self.point_action(node, index, geometry, positive), "placed a new point"))
        return placed

    def put_inputs(self, carried: dict) -> None:
        """Place prompts taken with ``new_inputs`` (into this session's nodes)."""
        for role in ("positive", "negative"):
            node = self.node(role)
            for ras in carried.get(role, []):
                node.AddControlPointWorld(*ras)
        if carried.get("box") is not None:
            centre, size, matrix = carried["box"]
            node = self.node("box")
            node.SetAndObserveObjectToNodeMatrix(numpy_to_vtk_matrix(matrix))
            node.SetCenterWorld(*centre)
            node.SetSize(*size)

    def placed_inputs(self, geometry: SliceGeometry) -> Optional[tuple[Action, str]]:
        """The clinician's starting click or box (before any proposal): same rules as ``read_edit``."""
        return self.read_edit(geometry)


def proposal_ras(geometry: SliceGeometry, action: Optional[Action]) -> Optional[list]:
    """RAS of a proposal as drawn (for tests and the log): a point's voxel centre, a box's two corners."""
    if action is None or isinstance(action, Stop):
        return None
    if isinstance(action, Point):
        return geometry.pixel_to_ras_point(action.x, action.y).tolist()
    return [geometry.pixel_to_ras_point(action.x1, action.y1).tolist(),
            geometry.pixel_to_ras_point(action.x2, action.y2).tolist()]

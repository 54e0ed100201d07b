"""The Slicer module's logic: one agent session on the slice a view shows, with no Qt in it.

The widget only forwards button presses here. Every operation is split in three so that inference never
runs on the GUI thread: ``begin`` (GUI thread: read MRML into plain arrays and actions), ``compute`` (engine
only: tool and policy; safe in a worker thread), ``apply`` (GUI thread: write the segment and the markups).
``Work`` carries the three; ``run`` does them in a row, as the tests and the self-test do.

Every step goes to the engine's trajectory log with, in ``extra``: the volume's identity, the slice
(orientation, IJK axis and index), IJK and RAS of the proposed and applied actions, and what the clinician
did. Finish marks the final mask as accepted ground truth (an expert trajectory).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from .. import registry
from ..actions import Action, Box, Point, Stop, describe
from ..policies.base import PolicyError, Proposal
from ..session import Session, Step
from .geometry import SliceGeometry, engine_image, model_volume, slice_geometry
from .markups import MarkupsError, SessionMarkups
from .parameters import AgentSettings
from .segments import SliceEdit, ensure_segment, restore_region, restore_slice, write_region, write_slice
from .segments import volume_extent as segments_volume_extent
from ..trajectory import TrajectoryWriter


class AgentLogicError(RuntimeError):
    """An operation cannot be done now; the message tells the clinician what to do."""


@dataclass
class Work:
    """One operation: ``compute`` may run off the GUI thread; ``apply`` must run on it, after compute.
    ``epoch`` is the logic's session counter when the work was made: a result that comes back after the
    session was closed (scene closed, new Start) is dropped instead of being written into a scene it does
    not belong to (``AgentLogic.apply``)."""

    label: str
    compute: Callable[[], Any]
    apply: Callable[[Any], Any]
    epoch: int = 0
    long: bool = False  # may take seconds (first model load, encoding): the widget shows a modal progress


def volume_identity(volume_node) -> dict:
    """What identifies the image in the log: node name and ID, the file it came from, DICOM UIDs if any."""
    identity: dict[str, Any] = {"name": volume_node.GetName(), "node_id": volume_node.GetID()}
    storage = volume_node.GetStorageNode()
    if storage is not None and storage.GetFileName():
        identity["file"] = storage.GetFileName()
    uids = volume_node.GetAttribute("DICOM.instanceUIDs")
    if uids:
        identity["dicom_instance_uids"] = {"first": uids.split()[0], "count": len(uids.split())}
    try:
        import slicer

        hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(volume_node.GetScene())
        if hierarchy is not None:
            item = hierarchy.GetItemByDataNode(volume_node)
            series = hierarchy.GetItemUID(item, "DICOM") if item else ""
            if series:
                identity["dicom_series_uid"] = series
    except (AttributeError, TypeError):
        pass
    image = volume_node.GetImageData()
    if image is not None:
        identity["dims"] = list(image.GetDimensions())
    identity["spacing"] = [round(v, 6) for v in volume_node.GetSpacing()]
    return identity


def step_row(step: Step) -> dict:
    """One line of the panel's step table."""
    proposed = describe(step.proposal.action) if step.proposal else ""
    return {
        "index": step.index + 1,
        "who": "agent" if step.proposal else "clinician",  # who proposed; ``decision`` says what was done
        "proposed": proposed,
        "decision": step.decision,
        "applied": describe(step.applied) if step.applied is not None else "",
        "confidence": None if step.prediction is None or isinstance(step.applied, Stop) else
        round(float(step.prediction.score), 3),
        "reason": step.proposal.reason if step.proposal else "",
    }


class AgentLogic:
    """Holds the tools (cached: the network loads once) and the current session."""

    def __init__(self, scene=None, tool_factory=registry.make_tool, policy_factory=registry.make_policy):
        import slicer

        self.scene = scene if scene is not None else slicer.mrmlScene
        self.tool_factory = tool_factory
        self.policy_factory = policy_factory
        self._tools: dict[tuple, Any] = {}
        self._model_volume: tuple[Optional[tuple], Optional[np.ndarray]] = (None, None)
        self.markups: Optional[SessionMarkups] = None
        self.epoch = 0
        self._reset()

    def _reset(self) -> None:
        self.session: Optional[Session] = None
        self.geometry: Optional[SliceGeometry] = None
        self.volume_node = None
        self.segmentation_node = None
        self.segment_id = ""
        self.settings = AgentSettings()
        self.edits: list[Optional[SliceEdit]] = []
        self.volume_edits: list[list] = []  # one list of RegionEdits per propagation
        self.writer: Optional[TrajectoryWriter] = None
        self.log_path: Optional[Path] = None
        self.identity: dict = {}
        self.last_status = ""

    # -- state the panel shows ----------------------------------------------------------------------------
    @property
    def active(self) -> bool:
        return self.session is not None and not self.session.finished

    @property
    def pending(self) -> Optional[Proposal]:
        return self.session.pending if self.session else None

    def rows(self) -> list[dict]:
        return [step_row(step) for step in self.session.steps] if self.session else []

    def tool(self, settings: AgentSettings):
        key = (settings.tool, settings.checkpoint or None, settings.device or None)
        if key not in self._tools:
            self._tools[key] = self.tool_factory(settings.tool, checkpoint=key[1], device=key[2])
        return self._tools[key]

    # -- running work -------------------------------------------------------------------------------------
    def _work(self, label: str, compute: Callable[[], Any], apply: Callable[[Any], Any], long: bool = False) -> Work:
        return Work(label, compute, apply, epoch=self.epoch, long=long)

    def apply(self, work: Work, result: Any) -> Any:
        """Finish ``work`` on the GUI thread with its computed ``result``, unless its session is gone."""
        if work.epoch != self.epoch:
            raise AgentLogicError("the session was closed while the model was running: its result was dropped")
        return work.apply(result)

    def run(self, work: Optional[Work]) -> Any:
        """Do a piece of work synchronously (tests, the self-test, scripts)."""
        if work is None:
            return None
        return self.apply(work, work.compute())

    def image_volume(self, volume_node, window: str) -> Callable[[], np.ndarray]:
        """A function (safe off the GUI thread) giving the volume as the model sees it; the array is copied
        here, on the GUI thread, and the normalised volume is kept for the next Start on the same volume."""
        import slicer

        image = volume_node.GetImageData()
        key = (volume_node.GetID(), image.GetMTime() if image is not None else 0, window)
        cached_key, cached = self._model_volume
        if cached_key == key and cached is not None:
            return lambda: cached
        array = np.array(slicer.util.arrayFromVolume(volume_node))

        def compute() -> np.ndarray:
            volume = model_volume(array, window)
            self._model_volume = (key, volume)
            return volume

        return compute

    def _extra(self, applied: Optional[Action], proposal: Optional[Proposal], how: str = "") -> dict:
        geometry = self.geometry
        assert geometry is not None
        extra = {
            "volume": self.identity,
            "slice": {k: v for k, v in geometry.describe().items() if k != "ijk_to_ras"},
            "applied_coordinates": geometry.action_coordinates(applied),
            "proposed_coordinates": geometry.action_coordinates(proposal.action) if proposal else None,
            "segment": {"segmentation": self.segmentation_node.GetName(), "segment_id": self.segment_id},
        }
        if how:
            extra["clinician_edit"] = how
        return extra

    # -- start --------------------------------------------------------------------------------------------
    def start_work(self, volume_node, segmentation_node, slice_node, settings: AgentSettings,
                   ground_truth: Optional[np.ndarray] = None, policy_options: Optional[dict] = None) -> Work:
        """Start a session on the slice ``slice_node`` shows. The clinician's clicks/box already placed in
        the session's markups start it (as hints); otherwise the agent proposes its own first action, if the
        policy can."""
        if volume_node is None or segmentation_node is None:
            raise AgentLogicError("choose an input volume and a segmentation first")
        geometry = slice_geometry(volume_node, slice_node)
        try:
            options = {**settings.policy_options(), **(policy_options or {})}
        except ValueError as error:
            raise AgentLogicError(str(error)) from None
        if settings.policy == "oracle" and ground_truth is not None:
            options.setdefault("ground_truth", ground_truth)
        volume_image = self.image_volume(volume_node, settings.window)
        if self.active:  # a new Start: keep the prompts placed since the last one, close the old session
            carried = self.markups.new_inputs()
            self.abandon()
            self.input_markups().put_inputs(carried)
        segment_id = ensure_segment(segmentation_node, volume_node, settings.segment_id,
                                    settings.target or "MedSAMAgent")
        markups = self.input_markups()
        placed = self._placed_inputs(markups, geometry)
        identity = volume_identity(volume_node)
        self._reset()
        self.epoch += 1
        settings.segment_id = segment_id  # later Starts write into the same segment
        self.volume_node, self.segmentation_node, self.segment_id = volume_node, segmentation_node, segment_id
        self.geometry, self.markups, self.settings, self.identity = geometry, markups, settings, identity
        if settings.log_enabled:
            folder = Path(settings.resolved_log_folder())
            stamp = time.strftime("%Y%m%d-%H%M%S")
            safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", volume_node.GetName() or "volume")[:40]
            self.log_path = folder / f"{stamp}_{safe}_{geometry.orientation or geometry.view}{geometry.index}.jsonl"
            self.writer = TrajectoryWriter(self.log_path)
        meta = {
            "source": "slicer",
            "volume": identity,
            "slice": geometry.describe(),
            "segment": {"segmentation": segmentation_node.GetName(), "segment_id": segment_id,
                        "segment_name": segmentation_node.GetSegmentation().GetSegment(segment_id).GetName()},
            "window": settings.window,
        }

        hints = [self._extra(action, None, how) for action, how in placed]

        def compute():
            policy = self.policy_factory(settings.policy, **options)
            if not placed and getattr(policy, "needs_hint", False):
                raise AgentLogicError(f"the '{settings.policy}' policy needs a first click or box from you: "
                                      "place a positive click (or draw a box) on the target, then press Start")
            image = engine_image(volume_image(), geometry)
            tool = self.tool(settings)
            session = Session(tool, policy, image, target=settings.target, ground_truth=ground_truth,
                              log=self.writer, max_actions=settings.max_actions, meta=meta)
            steps = [session.place(action, hint=True, extra=extra) for (action, _), extra in zip(placed, hints)]
            proposal = None
            if not steps:
                proposal = self._propose(session)
            return session, proposal

        def apply(result):
            session, proposal = result
            self.session = session
            for _ in session.steps:
                self.edits.append(self._write_mask(session))
            self._draw()
            self.last_status = "proposed" if proposal else "started"
            return self.last_status

        return self._work("Encoding the slice", compute, apply, long=True)

    def input_markups(self) -> SessionMarkups:
        """The markups the clinician clicks into (also before Start: the first click or box)."""
        if self.markups is None:
            self.markups = SessionMarkups(self.scene)
        return self.markups

    def node_for_placing(self, role: str):
        """The node a placement (positive, negative, box) goes into; a new box replaces the old one."""
        node = self.input_markups().node(role)
        if role == "box":
            node.RemoveAllControlPoints()
        return node

    def _placed_inputs(self, markups: SessionMarkups, geometry: SliceGeometry) -> list[tuple[Action, str]]:
        """All clicks and the box the clinician placed before Start: the box first, then the clicks."""
        placed: list[tuple[Action, str]] = []
        box = markups.node("box")
        if box.GetNumberOfControlPoints():
            placed.append((markups.box_action(box, geometry), "drew a box to start"))
        for role, positive in (("positive", True), ("negative", False)):
            node = markups.node(role)
            for index in range(node.GetNumberOfControlPoints()):
                placed.append((markups.point_action(node, index, geometry, positive), "clicked to start"))
        return placed

    def _propose(self, session: Session) -> Optional[Proposal]:
        try:
            return session.propose()
        except PolicyError as error:
            self.last_status = f"paused: {error}"
            return None

    # -- review -------------------------------------------------------------------------------------------
    def _require_session(self) -> Session:
        if not self.active:
            raise AgentLogicError("no session is running: press Start")
        return self.session

    def accept_work(self) -> Work:
        session = self._require_session()
        if session.pending is None:
            raise AgentLogicError("there is no proposal to accept: press Continue to ask the agent")
        proposal = session.pending
        extra = self._extra(proposal.action, proposal)
        return self._work("Applying the proposal", lambda: session.accept(extra=extra), self._apply_step)

    def override_work(self) -> Work:
        """The clinician's edit replaces the proposal (or, with none pending, is placed as a new prompt)."""
        session = self._require_session()
        assert self.markups is not None and self.geometry is not None
        edit = self.markups.read_edit(self.geometry)
        if edit is None:
            raise AgentLogicError("nothing to apply: move, flip or resize the proposal, or place a new click or "
                                  "box, then press Override")
        action, how = edit
        proposal = session.pending
        extra = self._extra(action, proposal, how)
        if proposal is not None:
            compute = lambda: session.override(action, extra=extra)  # noqa: E731
        else:
            compute = lambda: session.place(action, extra=extra)  # noqa: E731
        return self._work("Applying your correction", compute, self._apply_step)

    def reject_work(self) -> Work:
        session = self._require_session()
        if session.pending is None:
            raise AgentLogicError("there is no proposal to reject")
        extra = self._extra(None, session.pending, "rejected the proposal")
        return self._work("Rejecting", lambda: session.reject(extra=extra), self._apply_step)

    def flip_proposal(self) -> None:
        self._require_session()
        self.markups.flip_proposal()

    def set_override_mode(self, editable: bool) -> None:
        if self.markups is not None:
            self.markups.set_editable(editable)

    def _apply_step(self, step: Step) -> Step:
        self.edits.append(self._write_mask(self.session) if step.applied is not None and
                          not isinstance(step.applied, Stop) else None)
        self._draw()
        return step

    # -- autopilot ----------------------------------------------------------------------------------------
    def advance_work(self) -> Optional[Work]:
        """One tick of Continue: accept the pending proposal, or ask for the next one. None when done
        (``last_status`` says why: stopped, limit or paused)."""
        session = self._require_session()
        if session.pending is not None:
            work = self.accept_work()
            inner = work.apply

            def apply(step):
                inner(step)
                self.last_status = "stopped" if isinstance(step.applied, Stop) else "applied"
                return self.last_status

            return self._work("Agent step", work.compute, apply)
        if session.stopped:
            self.last_status = "stopped"
            return None
        if session.at_limit:
            self.last_status = "limit"
            return None

        def compute():
            try:
                return session.propose(), ""
            except PolicyError as error:
                return None, str(error)

        def apply(result):
            proposal, error = result
            self._draw()
            self.last_status = "proposed" if proposal else f"paused: {error}"
            return self.last_status

        return self._work("Agent thinking", compute, apply)

    def continue_(self, max_ticks: int = 50) -> str:
        """Autopilot until the agent stops, reaches the limit or pauses (synchronous; the widget ticks
        ``advance_work`` on a timer instead)."""
        for _ in range(max_ticks):
            work = self.advance_work()
            if work is None:
                break
            status = self.run(work)
            if status.startswith("paused"):
                break
        return self.last_status

    # -- 3D propagation -----------------------------------------------------------------------------------
    def propagate_work(self, direction: Optional[int] = None, until: Optional[int] = None,
                       cancel: Optional[Callable[[], bool]] = None) -> Work:
        """Carry the current slice's mask through the volume (``propagation.VolumeSession``: the box of the
        neighbour's mask on each next slice, until the stop rule, the edge or ``until``) and write the other
        slices of the segment as one 3D region per side (changed voxels only, other segments protected as
        set). The session's own slice is left as it is. ``undo_propagation`` takes it back exactly."""
        session = self._require_session()
        if not session.mask.any():
            raise AgentLogicError("nothing to propagate: segment this slice first")
        from ..propagation import VolumeSession
        from ..volumes import Volume

        geometry, settings = self.geometry, self.settings
        volume_image = self.image_volume(self.volume_node, settings.window)
        axis = 2 - geometry.axis  # the slice axis in (k, j, i) arrays
        rows, cols = np.nonzero(geometry.to_ijk_plane(session.mask))  # the plane in the volume's own order
        key_box = Box(int(cols.min()), int(rows.min()), int(cols.max()), int(rows.max()))

        def compute():
            volume = Volume.from_array(volume_image(), axis=axis, name=self.volume_node.GetName())
            engine = VolumeSession(self.tool(settings), volume, target=settings.target, prefetch=0)
            try:
                engine.start(geometry.index, key_box)
                operations = engine.propagate(direction, until=until, cancel=cancel)
                return engine.mask(), sorted({i for op in operations for i in op.changed} - {geometry.index}), \
                    [op.run.stop_reason for op in operations if getattr(op, "run", None) is not None]
            finally:
                engine.close()

        def apply(result):
            mask, changed, reasons = result
            edits = []
            for side in ([i for i in changed if i < geometry.index], [i for i in changed if i > geometry.index]):
                if not side:
                    continue
                extent = list(segments_volume_extent(self.volume_node))
                extent[2 * geometry.axis], extent[2 * geometry.axis + 1] = side[0], side[-1]
                values = mask[extent[4]:extent[5] + 1, extent[2]:extent[3] + 1, extent[0]:extent[1] + 1]
                edits.append(write_region(self.segmentation_node, self.segment_id, self.volume_node, extent, values,
                                          settings.protect_other_segments))
            self.volume_edits.append(edits)
            self.last_status = (f"propagated to {len(changed)} slices" if changed else "nothing propagated") + \
                ("".join(f"; {r}" for r in reasons if r))
            return self.last_status

        return self._work("Propagating through the volume", compute, apply, long=True)

    def undo_propagation(self) -> bool:
        """Take back the last propagation: those slices get back exactly what they held."""
        if not self.volume_edits:
            return False
        for edit in reversed(self.volume_edits.pop()):
            restore_region(self.segmentation_node, self.segment_id, self.volume_node, edit)
        return True

    # -- undo / finish ------------------------------------------------------------------------------------
    def undo(self, count: int = 1) -> int:
        """Take back steps; the slice gets back exactly what it held before them."""
        session = self._require_session()
        undone = session.undo(count)
        for _ in range(undone):
            edit = self.edits.pop()
            if edit is not None:
                restore_slice(self.segmentation_node, self.segment_id, self.volume_node, self.geometry, edit)
        self._draw()
        return undone

    def finish(self, accepted: bool = True) -> Optional[Path]:
        """End the session: the mask stays as a normal segment; the log marks it accepted ground truth."""
        session = self._require_session()
        session.finish(accepted=accepted, status="finished" if accepted else "abandoned")
        return self._close()

    def abandon(self) -> Optional[Path]:
        """Close an open session without marking it accepted (a new Start, scene close)."""
        if self.active:
            self.session.finish(accepted=False, status="abandoned")
        return self._close()

    def _close(self) -> Optional[Path]:
        self.epoch += 1  # work still running for this session is dropped when it comes back
        path = self.log_path
        if self.markups is not None:
            self.markups.remove_all()
            self.markups = None
        if self.writer is not None:
            self.writer.close()
        segment = (self.segmentation_node, self.segment_id)
        self._reset()
        self.segmentation_node, self.segment_id = segment
        self.log_path = path
        return path

    # -- MRML ---------------------------------------------------------------------------------------------
    def _write_mask(self, session: Session) -> SliceEdit:
        return write_slice(self.segmentation_node, self.segment_id, self.volume_node, self.geometry,
                           session.mask, self.settings.protect_other_segments)

    def _draw(self) -> None:
        if self.markups is None or self.session is None:
            return
        pending = self.session.pending.action if self.session.pending else None
        self.markups.draw(self.geometry, self.session.actions, pending)

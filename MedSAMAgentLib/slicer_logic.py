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

from . import registry
from .actions import Action, Box, Point, Stop, describe
from .policies.base import PolicyError, Proposal
from .session import Session, Step
from .slicer_geometry import SliceGeometry, engine_image, slice_geometry
from .slicer_markups import MarkupsError, SessionMarkups
from .slicer_parameters import AgentSettings
from .slicer_segments import SliceEdit, ensure_segment, restore_slice, write_slice
from .trajectory import TrajectoryWriter


class AgentLogicError(RuntimeError):
    """An operation cannot be done now; the message tells the clinician what to do."""


@dataclass
class Work:
    """One operation: ``compute`` may run off the GUI thread; ``apply`` must run on it, after compute."""

    label: str
    compute: Callable[[], Any]
    apply: Callable[[Any], Any]


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
        self.markups: Optional[SessionMarkups] = None
        self._reset()

    def _reset(self) -> None:
        self.session: Optional[Session] = None
        self.geometry: Optional[SliceGeometry] = None
        self.volume_node = None
        self.segmentation_node = None
        self.segment_id = ""
        self.settings = AgentSettings()
        self.edits: list[Optional[SliceEdit]] = []
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
    @staticmethod
    def run(work: Optional[Work]) -> Any:
        """Do a piece of work synchronously (tests, the self-test, scripts)."""
        if work is None:
            return None
        return work.apply(work.compute())

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
        if self.active:
            self.abandon()
        if volume_node is None or segmentation_node is None:
            raise AgentLogicError("choose an input volume and a segmentation first")
        geometry = slice_geometry(volume_node, slice_node)
        image = engine_image(volume_node, geometry, settings.window)
        segment_id = ensure_segment(segmentation_node, volume_node, settings.segment_id,
                                    settings.target or "MedSAMAgent")
        markups = self.input_markups()
        placed = self._placed_inputs(markups, geometry)
        options = dict(policy_options or {})
        if settings.policy == "oracle" and ground_truth is not None:
            options.setdefault("ground_truth", ground_truth)
        policy = self.policy_factory(settings.policy, **options)
        if not placed and getattr(policy, "needs_hint", False):
            raise AgentLogicError(f"the '{settings.policy}' policy needs a first click or box from you: place a "
                                  "positive click (or draw a box) on the target, then press Start")
        identity = volume_identity(volume_node)
        self._reset()
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

        return Work("Encoding the slice", compute, apply)

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
        return Work("Applying the proposal", lambda: session.accept(extra=extra), self._apply_step)

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
        return Work("Applying your correction", compute, self._apply_step)

    def reject_work(self) -> Work:
        session = self._require_session()
        if session.pending is None:
            raise AgentLogicError("there is no proposal to reject")
        extra = self._extra(None, session.pending, "rejected the proposal")
        return Work("Rejecting", lambda: session.reject(extra=extra), self._apply_step)

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

            return Work("Agent step", work.compute, apply)
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

        return Work("Agent thinking", compute, apply)

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

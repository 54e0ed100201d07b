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
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from .. import registry
from ..actions import Action, Box, Point, Stop, describe
from ..policies.base import PolicyError, Proposal
from ..session import Session, Step
from .geometry import SliceGeometry, SliceGeometryError, engine_image, model_volume, slice_geometry
from .markups import MarkupsError, SessionMarkups
from .parameters import AgentSettings
from .segments import SliceEdit, ensure_segment, restore_region, restore_slice, write_region, write_slice
from .segments import volume_extent as segments_volume_extent
from ..trajectory import TrajectoryWriter


@dataclass
class PropagationProgress:
    """How far a propagation has got, shared between the worker (writes) and the GUI thread (reads, and sets
    ``cancel``): plain values and an Event, no Qt."""

    total: int = 0
    done: int = 0
    slice: Optional[int] = None
    cancel: threading.Event = field(default_factory=threading.Event)

    def describe(self) -> str:
        where = f", slice {self.slice}" if self.slice is not None else ""
        return f"Propagating through the volume: {self.done} of at most {self.total} slices{where}"


@dataclass
class VolumeRun:
    """One propagation in the panel: the engine's volume session, the segment writes, the slices written.

    A clinician's correction of a propagated slice (``correct_propagated_work``) is a run of its own over the
    engine of the run it corrects: ``operations`` engine operations (the correction, the re-propagation) that
    undo takes back, the slice sessions that re-propagation made, and which episode each slice it wrote
    came from before (``propagated_episodes``). A clinician's "Clear slice" is one too; ``cleared`` holds the
    slice session whose episode logged the clear step (undo logs its undo there)."""

    engine: Any
    edits: list
    slices: list[int]
    operations: int = 0  # 0: a whole propagation (its own engine); else a correction's engine operations
    sessions: list = field(default_factory=list)
    episodes_before: dict = field(default_factory=dict)
    cleared: list = field(default_factory=list)


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
    progress: Optional[PropagationProgress] = None  # slice by slice work: the widget counts it, Cancel stops it


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
        # (volume node ID, IJK axis, slice) -> the episode of the propagation that wrote it: a later session on
        # that slice is the clinician's correction of it, and its log says so (``meta.corrects_episode``)
        self.propagated_episodes: dict[tuple, str] = {}
        self._reset()

    def _reset(self) -> None:
        self.session: Optional[Session] = None
        self.geometry: Optional[SliceGeometry] = None
        self.volume_node = None
        self.segmentation_node = None
        self.segment_id = ""
        self.settings = AgentSettings()
        self.edits: list[Optional[SliceEdit]] = []
        self.volume_runs: list[VolumeRun] = []  # one per propagation (undo takes the last back)
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
    def _work(self, label: str, compute: Callable[[], Any], apply: Callable[[Any], Any], long: bool = False,
              progress: Optional[PropagationProgress] = None) -> Work:
        return Work(label, compute, apply, epoch=self.epoch, long=long, progress=progress)

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

    def _extra(self, applied: Optional[Action], proposal: Optional[Proposal], how: str = "",
               geometry: Optional[SliceGeometry] = None) -> dict:
        geometry = geometry or self.geometry
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
                   ground_truth: Optional[np.ndarray] = None, policy_options: Optional[dict] = None, *,
                   first: Optional[int] = None, last: Optional[int] = None,
                   progress: Optional[PropagationProgress] = None) -> Work:
        """Start a session on the slice ``slice_node`` shows. The clinician's clicks/box already placed in
        the session's markups start it (as hints); otherwise the agent proposes its own first action, if the
        policy can. On a slice that a propagation of the open session wrote (same volume, segmentation and
        plane), Start is a correction of that slice instead (``correct_propagated_work`` with the prompts just
        placed, re-propagating onward within ``first``..``last``): the open session and its other propagated
        slices are kept, never abandoned."""
        if volume_node is None or segmentation_node is None:
            raise AgentLogicError("choose an input volume and a segmentation first")
        if self.active and (volume_node.GetID(), segmentation_node.GetID()) == \
                (self.volume_node.GetID(), self.segmentation_node.GetID()):
            target = self.correctable_slice(slice_node)
            if target is not None:
                placed = self.markups.new_actions(replace(self.geometry, index=target))
                if not placed and self._run_holding(target) is not None:
                    raise AgentLogicError(
                        f"slice {target} was propagated in this session: place a click or draw a box on it and "
                        "press Start to correct it (the other slices are kept), or press Clear slice; Finish "
                        "first to start a new session there")
                if not placed:
                    raise AgentLogicError(
                        f"slice {target} has no mask in this session's propagation: draw a box on it (or place a "
                        "positive click) and press Start to carry the segment on from there; Finish first to "
                        "start a new session there")
                return self._correct_work(target, placed, first, last, progress)
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
        corrected = self.propagated_episodes.get((volume_node.GetID(), geometry.axis, geometry.index))
        if corrected:
            meta["corrects_episode"] = corrected  # this slice came from a propagation: the clinician redoes it

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

    def accept_work(self, first: Optional[int] = None, last: Optional[int] = None,
                    progress: Optional[PropagationProgress] = None) -> Work:
        """Accept: the pending proposal; or, when the clinician's newest click/box lies on a slice a
        propagation of this session wrote, that prompt as the correction of that slice (as Override does)."""
        self._require_session()
        target = self.edit_slice()
        if target is not None:
            return self.correct_propagated_work(target, *self.markups.read_edit(self.geometry), first=first,
                                                last=last, progress=progress)
        return self._accept_pending_work()

    def _accept_pending_work(self) -> Work:
        session = self._require_session()
        if session.pending is None:
            raise AgentLogicError("there is no proposal to accept: press Continue to ask the agent (or place a "
                                  "click/box on a propagated slice to correct it)")
        proposal = session.pending
        extra = self._extra(proposal.action, proposal)
        return self._work("Applying the proposal", lambda: session.accept(extra=extra), self._apply_step)

    def override_work(self, first: Optional[int] = None, last: Optional[int] = None,
                      progress: Optional[PropagationProgress] = None) -> Work:
        """The clinician's edit replaces the proposal (or, with none pending, is placed as a new prompt). An
        edit placed on a slice that a propagation of this session wrote corrects that slice and propagates
        again from it onward, within ``first``..``last`` (``correct_propagated_work``)."""
        session = self._require_session()
        assert self.markups is not None and self.geometry is not None
        edit = self.markups.read_edit(self.geometry)
        if edit is None:
            raise AgentLogicError("nothing to apply: move, flip or resize the proposal, or place a new click or "
                                  "box, then press Override")
        target = self.edit_slice()
        if target is not None:
            return self.correct_propagated_work(target, *edit, first=first, last=last, progress=progress)
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
            work = self._accept_pending_work()  # the autopilot never takes the clinician's placed prompts
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
    @property
    def slice_count(self) -> int:
        """Slices along the session's slice axis (the range fields' bounds)."""
        if self.geometry is None or self.volume_node is None:
            return 0
        return int(self.volume_node.GetImageData().GetDimensions()[self.geometry.axis])

    def propagate_work(self, first: Optional[int] = None, last: Optional[int] = None,
                       progress: Optional[PropagationProgress] = None) -> Work:
        """Continue through the volume: carry the current slice's result to the slices ``first``..``last``
        (default: the whole volume) with the engine's volume session (``propagation_sam2.volume_session_for``:
        SAM2 / MedSAM2 propagate with their own memory, seeded with this slice's prompts; the other tools take
        the box of the neighbour's mask on each next slice), both ways until the stop rule, the range's end or
        ``progress.cancel``. The segment is written as one 3D region per side, changed voxels only, the other
        segments protected as set; the session's own slice is left as it is. Every propagated slice is a 2D
        episode in the log (accepted at Finish). ``undo_propagation`` takes the run back exactly."""
        session = self._require_session()
        if not session.mask.any():
            raise AgentLogicError("nothing to propagate: segment this slice first")
        from ..propagation_sam2 import uses_video_memory, volume_session_for
        from ..volumes import Volume

        geometry, settings = self.geometry, self.settings
        count, index = self.slice_count, geometry.index
        first, last = (0 if first is None else int(first)), (count - 1 if last is None else int(last))
        if not 0 <= first <= index <= last < count:
            raise AgentLogicError(f"the slice range {first}-{last} must hold this slice ({index}) and lie in "
                                  f"0-{count - 1}")
        progress = progress or PropagationProgress()
        progress.total, progress.done = (last - index) + (index - first), 0
        tool = self.tool(settings)
        volume_image = self.image_volume(self.volume_node, settings.window)
        axis = 2 - geometry.axis  # the slice axis in (k, j, i) arrays
        if uses_video_memory(tool):  # SAM2's memory starts from this slice's own prompts
            prompts = [self._plane_action(a) for a in session.actions if not isinstance(a, Stop)]
        else:  # the neighbour-prompt engine carries the accepted mask's box
            rows, cols = np.nonzero(geometry.to_ijk_plane(session.mask))  # the plane in the volume's own order
            prompts = [Box(int(cols.min()), int(rows.min()), int(cols.max()), int(rows.max()))]
        meta = {"source": "slicer", "volume_identity": self.identity, "window": settings.window,
                "segment": {"segmentation": self.segmentation_node.GetName(), "segment_id": self.segment_id},
                "key_slice": geometry.describe(), "key_episode": session.episode_id}

        def compute():
            volume = Volume(volume_image(), None, axis, self.volume_node.GetName())  # normalised once
            # the key slice is this panel session's (already in the log): the engine logs the other slices
            engine = volume_session_for(tool, volume, target=settings.target, meta=meta, prefetch=0)
            engine.start(index, prompts[0])
            for prompt in prompts[1:]:
                engine.correct(index, prompt, repropagate=False)
            engine.log = self.writer

            def on_slice(record) -> None:
                progress.done, progress.slice = progress.done + 1, record.index

            operations = []
            for direction, until in ((+1, last), (-1, first)):
                if until != index and not progress.cancel.is_set():
                    operations += engine.propagate(direction, until=until, cancel=progress.cancel.is_set,
                                                   on_slice=on_slice)
            return engine, operations

        def apply(result):
            engine, operations = result
            changed = sorted({i for op in operations for i in op.run.slices})
            mask = engine.mask()
            edits = []
            for side in ([i for i in changed if i < index], [i for i in changed if i > index]):
                if not side:
                    continue
                edits.append(self._write_slices(mask, geometry.axis, side[0], side[-1]))
            self.volume_runs.append(VolumeRun(engine, edits, changed))
            for k in changed:
                self.propagated_episodes[(self.volume_node.GetID(), geometry.axis, k)] = \
                    engine.records[k].session.episode_id
            reasons = [op.run.stop_reason for op in operations if op.run.stop_reason]
            self.last_status = (f"propagated to {len(changed)} slices" if changed else "nothing propagated") + \
                ("".join(f"; {r}" for r in reasons))
            return self.last_status

        return self._work("Propagating through the volume", compute, apply, long=True)

    def _plane_action(self, action: Action) -> Action:
        """An action on the panel's slice image as the same action on the volume's own plane (the engine's
        slice image: (k, j, i) order with the slice axis taken out)."""
        geometry = self.geometry
        axis = 2 - geometry.axis

        def plane(x: float, y: float) -> tuple[int, int]:
            kji = np.rint(geometry.pixel_to_ijk_point(x, y)[::-1]).astype(int)
            row, col = (int(kji[d]) for d in range(3) if d != axis)
            return col, row

        if isinstance(action, Point):
            return Point(*plane(action.x, action.y), action.positive)
        (xa, ya), (xb, yb) = plane(action.x1, action.y1), plane(action.x2, action.y2)
        return Box(min(xa, xb), min(ya, yb), max(xa, xb), max(ya, yb))

    def edit_slice(self) -> Optional[int]:
        """The propagated slice the clinician's newest click/box lies on, when it is not this session's own
        slice and a propagation run of this session wrote it; else None (the edit is this slice's)."""
        if self.markups is None or self.geometry is None or not self.volume_runs:
            return None
        ras = self.markups.edit_position()
        if ras is None or self.geometry.distance_from_slice(ras) < 0.5:
            return None
        index = int(np.floor(self.geometry.ras_to_ijk_point(ras)[self.geometry.axis] + 0.5))
        return index if self._run_holding(index) is not None else None

    def _run_holding(self, index: int) -> Optional[VolumeRun]:
        """The newest run that wrote slice ``index`` (its version is what the segment shows)."""
        return next((run for run in reversed(self.volume_runs) if index in run.slices), None)

    def propagated_slice(self, slice_node) -> Optional[int]:
        """The slice ``slice_node`` shows when a propagation of the open session wrote it (the session's own
        plane, another index); else None (no session, no run, another plane or volume, the session's slice)."""
        index = self.correctable_slice(slice_node)
        return index if index is not None and self._run_holding(index) is not None else None

    def correctable_slice(self, slice_node) -> Optional[int]:
        """The slice ``slice_node`` shows when Start there corrects the open session's propagation: a slice
        of the session's plane but its own, once a run exists (propagated, cleared, or one no run reached:
        the segment is carried on from it); else None."""
        if not self.active or not self.volume_runs or slice_node is None:
            return None
        try:
            at = slice_geometry(self.volume_node, slice_node)
        except SliceGeometryError:
            return None
        return at.index if self._same_plane(at) and at.index != self.geometry.index else None

    def _same_plane(self, at) -> bool:
        own = self.geometry
        plane = lambda g: (g.axis, g.col_axis, g.row_axis, g.col_flip, g.row_flip, tuple(g.dims))  # noqa: E731
        return plane(at) == plane(own) and bool(np.allclose(at.ijk_to_ras, own.ijk_to_ras))

    def _write_slices(self, mask: np.ndarray, axis: int, first: int, last: int):
        """Write the engine's 3D ``mask`` (IJK as K, J, I) into the segment over slices ``first``..``last`` along
        ``axis`` only (changed voxels only, the other segments protected as set); the edit, for undo."""
        extent = list(segments_volume_extent(self.volume_node))
        extent[2 * axis], extent[2 * axis + 1] = first, last
        values = mask[extent[4]:extent[5] + 1, extent[2]:extent[3] + 1, extent[0]:extent[1] + 1]
        return write_region(self.segmentation_node, self.segment_id, self.volume_node, extent, values,
                            self.settings.protect_other_segments)

    def clearable_slice(self, slice_node) -> Optional[int]:
        """The propagated slice ``slice_node`` shows if it holds a mask (what "Clear slice" would empty)."""
        index = self.propagated_slice(slice_node)
        if index is None or not self._run_holding(index).engine.slice_mask(index).any():
            return None
        return index

    def clear_slice_work(self, slice_node) -> Work:
        """Clear slice: the clinician says the structure is not on the propagated slice the view shows
        (``VolumeSession.clear``): it becomes empty and the clinician's, and the propagated slices carried on
        from it (onward, away from the session's slice) are emptied too, so propagation stops there as the
        engine does. The segment is written over those slices only (other segments untouched); the clear is a
        clinician step (decision ``clear``) in that slice's episode; ``undo_propagation`` takes it back."""
        self._require_session()
        index = self.clearable_slice(slice_node)
        if index is None:
            raise AgentLogicError("Clear slice works on a slice that this session's propagation wrote and that "
                                  "holds a mask: scroll the view to such a slice")
        engine, geometry = self._run_holding(index).engine, self.geometry
        session = engine.slice_session(index)
        at = replace(geometry, index=index)
        extra = self._extra(None, None, "no structure on this slice", geometry=at)
        extra["panel_slice"] = extra.pop("slice")
        extra.update(slice=index, correction=True, cleared=True)

        def apply(operations):
            changed = sorted({i for op in operations for i in op.changed})
            node_id, axis = self.volume_node.GetID(), geometry.axis
            edit = self._write_slices(engine.mask(), axis, changed[0], changed[-1])
            before = {i: self.propagated_episodes.pop((node_id, axis, i), None) for i in changed}
            extra["cleared_slices"] = changed
            if session is not None:
                session.log_decision("clear", extra)
            self.volume_runs.append(VolumeRun(engine, [edit], changed, len(operations), [], before, [session]))
            onward = [i for i in changed if i != index]
            self.last_status = f"cleared slice {index} (no structure here)" + (
                f" and the {len(onward)} propagated slices beyond it" if onward else "")
            return self.last_status

        return self._work(f"Clearing slice {index}", lambda: engine.clear(index), apply, long=True)  # SAM2: a frame

    def correct_propagated_work(self, index: int, action: Action, how: str = "", *, first: Optional[int] = None,
                                last: Optional[int] = None, progress: Optional[PropagationProgress] = None) -> Work:
        """The clinician's box or click on propagated slice ``index`` (``action`` in the panel's slice pixels):
        ``VolumeSession.correct`` on that slice's own session (logged as the clinician's override, ``extra.
        correction``), then propagation again from it onward (away from this session's slice) up to the slice
        range's end, the stop rule, a slice the clinician owns or Cancel. Slices on the other side and between
        are kept as accepted. The segment is written over the changed slices only (one region, changed voxels
        only); ``undo_propagation`` takes the whole correction back as one operation."""
        return self._correct_work(index, [(action, how)], first, last, progress)

    def _correct_work(self, index: int, placed: list[tuple[Action, str]], first: Optional[int],
                      last: Optional[int], progress: Optional[PropagationProgress]) -> Work:
        """``correct_propagated_work`` with one or more prompts (a Start with a box and clicks): each is one
        ``VolumeSession.correct`` on the slice, then one re-propagation (``VolumeSession.repropagate``: onward,
        and over the slices between it and the propagated ones that no run reached); all of it one undo step.
        A slice no run reached (propagation stopped before it) is corrected the same way: the segment goes on
        from there."""
        self._require_session()
        run = self._run_holding(index)
        if run is None and (not self.volume_runs or index == self.geometry.index
                            or not 0 <= index < self.slice_count):
            raise AgentLogicError(f"no propagation of this session wrote slice {index}: Continue through the volume "
                                  "first, or press Start on that slice")
        engine, geometry = (run or self.volume_runs[-1]).engine, self.geometry
        count = self.slice_count
        first, last = (0 if first is None else int(first)), (count - 1 if last is None else int(last))
        onward = engine.onward(index)[0]
        bound = last if onward > 0 else first
        progress = progress or PropagationProgress()
        progress.total = max((bound - index) * onward, 0) + len(engine.gap(index, -onward, first if onward > 0
                                                                           else last)[0])
        progress.done = 0
        at = replace(geometry, index=index)
        corrections = []
        for action, how in placed:
            extra = self._extra(action, None, how or "corrected a propagated slice", geometry=at)
            extra["panel_slice"] = extra.pop("slice")  # the engine names the slice by its index (``extra.slice``)
            corrections.append((self._plane_action(action), extra))

        def compute():
            operations = []
            try:
                for plane_action, extra in corrections:
                    operations += engine.correct(index, plane_action, repropagate=False, extra=extra)
            except Exception:  # e.g. a negative click first on an empty slice: nothing of it stays in the engine
                for _ in operations:
                    engine.undo()
                raise
            if progress.total and not progress.cancel.is_set():
                def on_slice(record) -> None:
                    progress.done, progress.slice = progress.done + 1, record.index

                operations += engine.repropagate(index, first=first, last=last, cancel=progress.cancel.is_set,
                                                 on_slice=on_slice)
            return operations

        def apply(operations):
            changed = sorted({i for op in operations for i in op.changed})
            node_id, axis = self.volume_node.GetID(), geometry.axis
            edit = self._write_slices(engine.mask(), axis, changed[0], changed[-1])
            before = {i: self.propagated_episodes.get((node_id, axis, i)) for i in changed}
            sessions = [engine.records[i].session for op in operations if op.run is not None for i in op.run.slices]
            self.volume_runs.append(VolumeRun(engine, [edit], changed, len(operations), sessions, before))
            for i in changed:
                self.propagated_episodes[(node_id, axis, i)] = engine.records[i].session.episode_id
            self._draw()  # the placed prompt was the propagated slice's: the markups show this slice's again
            runs = [op.run for op in operations if op.run is not None]
            again = sorted({i for r in runs if r.judged for i in r.slices})
            bridged = sorted({i for r in runs if not r.judged for i in r.slices})
            reasons = [r.stop_reason for r in runs if r.judged and r.stop_reason]
            self.last_status = (f"corrected slice {index}; propagated again to {len(again)} slices onward" +
                                (f"; bridged the {len(bridged)} slices back to the propagated ones" if bridged
                                 else "") + "".join(f"; {r}" for r in reasons))
            return self.last_status

        return self._work(f"Correcting slice {index} and propagating onward", compute, apply, long=True,
                          progress=progress)

    def undo_propagation(self) -> bool:
        """Take back the last propagation run (or correction of a propagated slice): those slices get back
        exactly what they held, and their episodes are closed in the log as undone (never exported)."""
        if not self.volume_runs:
            return False
        run = self.volume_runs.pop()
        axis, node_id = self.geometry.axis, self.volume_node.GetID()
        if run.operations:  # a correction: its steps and runs in the engine it shares with the run it corrected
            for session in run.sessions:
                if not session.finished:
                    session.finish(accepted=False, status="undone")
            for _ in range(run.operations):
                run.engine.undo()
            for session in run.cleared:  # the clear step leaves that slice's episode
                if session.log is not None:
                    session.log.write({"type": "undo", "episode_id": session.episode_id, "count": 1})
            for edit in reversed(run.edits):
                restore_region(self.segmentation_node, self.segment_id, self.volume_node, edit)
            for k, episode in run.episodes_before.items():
                if episode is None:
                    self.propagated_episodes.pop((node_id, axis, k), None)
                else:
                    self.propagated_episodes[(node_id, axis, k)] = episode
            self._draw()
            return True
        for k in run.slices:
            if self.propagated_episodes.get((node_id, axis, k)) == run.engine.records[k].session.episode_id:
                del self.propagated_episodes[(node_id, axis, k)]
        for edit in reversed(run.edits):
            restore_region(self.segmentation_node, self.segment_id, self.volume_node, edit)
        run.engine.finish(accepted=False, status="undone")
        run.engine.close()
        return True

    def _finish_volume_runs(self, accepted: bool) -> None:
        """End the propagated slices' episodes: a slice's newest run holds what the segment shows (accepted
        with the session when the clinician finishes), older runs' versions of it are superseded."""
        shown: set[int] = set()
        for run in reversed(self.volume_runs):
            for index in run.slices:
                record = run.engine.records.get(index)
                if record is not None and record.session is not None and not record.session.finished:
                    record.session.finish(accepted=accepted and index not in shown,
                                          status="finished" if index not in shown else "superseded")
            for session in run.cleared:  # a cleared slice's episode: the clinician said "no structure here"
                if not session.finished:
                    session.finish(accepted=False, status="cleared", reason="the clinician cleared this slice")
            shown.update(run.slices)
        engines = list({id(run.engine): run.engine for run in self.volume_runs}.values())  # a correction shares one
        for engine in engines:  # after every run's slices: what is left open was replaced
            engine.finish(accepted=False, status="superseded" if accepted else "abandoned")
            engine.close()
        self.volume_runs = []

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
        self._finish_volume_runs(accepted)
        return self._close()

    def abandon(self) -> Optional[Path]:
        """Close an open session without marking it accepted (a new Start, scene close)."""
        if self.active:
            self.session.finish(accepted=False, status="abandoned")
        self._finish_volume_runs(False)
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

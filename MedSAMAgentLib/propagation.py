"""The volume session: the agent carries an accepted slice's mask through the volume, slice by slice.

It sits over the 2D engine: every slice is its own ``Session`` (its own steps, undo and log episode), whose
policy is ``NeighbourPolicy`` (the prompt from the neighbouring slice's mask, ``propagation_rules``). The
clinician

- starts on a key slice (``start``: a box or click; the slice's session then runs with ``key_policy``);
- lets it run (``propagate``: both directions, or one, or up to a slice), each slice a step they can review
  (a ``reviewer``) or simply let through; propagation ends where the stop rule says the structure ends
  (``PropagationRun.stop_reason``), at the volume's edge, or at a slice the clinician owns;
- corrects any slice (``correct``: a box or click on that slice's session, ``clear``: no structure here);
  propagation then runs again from that slice onward (away from the key slice), up to the next slice
  the clinician owns, and back toward the key slice only over slices no run reached (a gap: bridged from
  both ends without the stop rule when a mask closes it, ``repropagate``); slices the clinician owns (key,
  corrected, cleared) are never overwritten;
- undoes per operation (``undo``: the last propagation run, correction or clear, exactly) or per slice
  (``undo_slice``: the last step of that slice's own session).

``mask()`` is the 3D mask; every operation returns an ``Operation`` naming the slices it changed, so a
caller (the Slicer panel) rewrites only those. While a slice is processed the tool encodes the next ones in a
worker thread (``LiteMedSAM.precompute``), so the embedding is ready when propagation or the clinician gets
there. Volumes are normalised once (``volumes.Volume``) and slices come from memory.
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Literal, Optional

import numpy as np

from .actions import Action, Box, Point, Stop
from .policies.base import Observation, PolicyError, Proposal
from .propagation_rules import (DEFAULT_RULES, Appearance, Intensity, PropagationRules, SliceSignal,
                                neighbour_box, neighbour_clicks, slice_signal, stop_reason, tightened_box)
from .session import Review, Reviewer, Session
from .tools.base import SegmentationTool
from .trajectory import TrajectoryWriter
from .volumes import Volume

Origin = Literal["key", "propagated", "corrected", "cleared"]
OWNED: frozenset = frozenset({"key", "corrected", "cleared"})  # the clinician's slices: never overwritten


class NeighbourPolicy:
    """Proposes a slice's prompt from its neighbour's accepted mask: the box, the box tightened to the tool's
    mask (``propagation_rules.tightened_box``), clicks where the tool's mask departs from the neighbour's
    (``propagation_rules.neighbour_clicks``), then stop."""

    name = "propagation"
    version = "3"
    needs_hint = False

    def __init__(self, neighbour: np.ndarray, neighbour_index: int, rules: PropagationRules = DEFAULT_RULES,
                 neighbour_prompt: Optional[Box] = None, why: str = "",
                 max_size: Optional[tuple[float, float]] = None):
        self.neighbour, self.neighbour_index, self.rules = np.asarray(neighbour, bool), neighbour_index, rules
        self.neighbour_prompt = neighbour_prompt  # the neighbour's own box (``rules.max_growth`` reads it)
        self.max_size = max_size  # the longest box sides allowed in this run (``rules.max_size``)
        self.why = why  # what led to this slice's prompt (a repair: why the first one failed the stop rule)
        self.clicks = self.tightened = 0

    def reset(self) -> None:
        self.clicks = self.tightened = 0

    def propose(self, observation: Observation) -> Proposal:
        if observation.prediction is None:
            box = neighbour_box(self.neighbour, self.rules.margin, self.neighbour_prompt, self.rules.max_growth,
                                self.max_size)
            if box is None:
                raise PolicyError(f"slice {self.neighbour_index}'s mask is empty: nothing to carry over")
            wider = f", {self.rules.margin} px wider" if self.rules.margin else ""
            if self.max_size is not None and box != neighbour_box(self.neighbour, self.rules.margin,
                                                                  self.neighbour_prompt, self.rules.max_growth):
                wider += ", cut to the size of the run's first box"
            return Proposal(box, f"{self.why}the box of slice {self.neighbour_index}'s mask{wider}", self.name)
        room = len(observation.actions) < observation.max_actions
        if self.tightened < self.rules.tighten and room and all(isinstance(a, Box) for a in observation.actions):
            box = tightened_box(observation.prediction.mask, observation.actions[-1], self.rules.margin)
            if box is not None:
                self.tightened += 1
                return Proposal(box, f"the mask fills less than its box: the box of the mask, {self.rules.margin} px "
                                "wider", self.name)
            self.tightened = self.rules.tighten  # the box fits the mask: nothing more to tighten
        if self.clicks < self.rules.max_clicks and room:
            found = neighbour_clicks(observation.prediction.mask, self.neighbour, replace(self.rules, max_clicks=1))
            if found:
                self.clicks += 1
                where = "misses" if found[0].positive else "goes beyond"
                return Proposal(found[0], f"the mask {where} slice {self.neighbour_index}'s here by "
                                f">= {self.rules.click_depth:g} px", self.name)
        return Proposal(Stop(), f"the mask follows slice {self.neighbour_index}'s", self.name)


class ClinicianSlicePolicy:
    """The policy of a slice the clinician prompted (key or corrected, without a 2D agent): it only ever
    proposes stop, so each further prompt there is the clinician's own correction."""

    name = "clinician"
    version = "1"
    needs_hint = True

    def reset(self) -> None:
        pass

    def propose(self, observation: Observation) -> Proposal:
        if observation.prediction is None:
            raise PolicyError("the clinician prompts this slice")
        return Proposal(Stop(), "the clinician's slice", self.name)


class _AcceptAll:
    """The reviewer of "Continue through the volume": every proposal goes through."""

    def review(self, proposal: Proposal, observation: Observation) -> Review:
        return Review("accept")


@dataclass
class SliceRecord:
    """One slice's state: its 2D session (None for a cleared slice), where it came from, which run wrote it."""

    index: int
    session: Optional[Session]
    origin: Origin
    run: int = 0  # the propagation run that wrote it (0: the clinician)
    signal: Optional[SliceSignal] = None  # the stop rule's reading when it was propagated
    seconds: float = 0.0  # time to propagate it (embedding wait + prompts)

    @property
    def mask(self) -> np.ndarray:
        if self.session is None:
            raise ValueError("a cleared slice has no session")
        return self.session.mask


@dataclass
class Operation:
    """One undoable change of the volume: what each touched slice held before (None: nothing)."""

    kind: Literal["start", "propagate", "correct", "clear"]
    before: dict[int, Optional[SliceRecord]] = field(default_factory=dict)
    slice_steps: Optional[tuple[int, int]] = None  # (slice, steps) added to an existing slice's session
    run: Optional["PropagationRun"] = None

    @property
    def changed(self) -> list[int]:
        """Slices whose mask this operation changed, ascending."""
        touched = set(self.before)
        if self.slice_steps:
            touched.add(self.slice_steps[0])
        return sorted(touched)

    @property
    def changed_range(self) -> Optional[tuple[int, int]]:
        return (self.changed[0], self.changed[-1]) if self.changed else None


@dataclass
class PropagationRun:
    id: int
    start: int  # the slice it carried from
    direction: int  # +1 / -1
    slices: list[int] = field(default_factory=list)  # slices it wrote, in order
    stop_slice: Optional[int] = None  # where it proposed to stop (the structure seems to end), if it did
    stop_reason: str = ""  # why it ended: the stop rule, "volume edge", "slice k is the clinician's", ...
    judged: bool = True  # the stop rule applied (False: a bridge over a gap with the structure on both sides)


class VolumeSession:
    """A volume, a tool and the slices' sessions; see the module docstring for the workflow."""

    bridges = True  # a gap closed by a mask is bridged from both ends (``repropagate``)

    def __init__(
        self,
        tool: SegmentationTool,
        volume: Volume,
        *,
        target: str = "",
        ground_truth: Optional[np.ndarray] = None,
        key_policy_factory: Optional[Callable[[], Any]] = None,
        rules: PropagationRules = DEFAULT_RULES,
        log: Optional[TrajectoryWriter] = None,
        meta: Optional[dict[str, Any]] = None,
        prefetch: int = 1,
        max_actions: int = 5,
    ):
        if ground_truth is not None and ground_truth.shape != volume.array.shape:
            raise ValueError(f"ground truth is {ground_truth.shape}, the volume is {volume.array.shape}")
        self.tool, self.volume, self.target, self.rules = tool, volume, target, rules
        self.ground_truth = None if ground_truth is None else np.asarray(ground_truth, bool)
        self.key_policy_factory = key_policy_factory
        self.log, self.meta, self.max_actions = log, dict(meta or {}), max_actions
        self.records: dict[int, SliceRecord] = {}
        self.operations: list[Operation] = []
        self.runs: list[PropagationRun] = []
        self.key_index: Optional[int] = None
        self._all_sessions: list[Session] = []
        self.visited: set[int] = set()  # slices the tool ran on (superseded sessions included)
        self.prefetch = prefetch if hasattr(tool, "precompute") else 0
        if self.prefetch and getattr(tool, "cache_size", 0) < self.prefetch + 4:
            tool.cache_size = self.prefetch + 4
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="medsam-prefetch") if self.prefetch else None
        self._pending: dict[int, Future] = {}

    # -- reading --------------------------------------------------------------------------------------------
    def slice_mask(self, index: int) -> np.ndarray:
        record = self.records.get(index)
        if record is None or record.session is None:
            return np.zeros(self.volume.slice_shape, bool)
        return record.mask

    def mask(self) -> np.ndarray:
        """The 3D mask, (k, j, i) like the volume."""
        out = np.zeros(self.volume.array.shape, bool)
        for index, record in self.records.items():
            if record.session is not None:
                self.volume.put(out, index, record.mask)
        return out

    def onward(self, index: int) -> list[int]:
        """Directions away from the key slice (both at the key slice itself)."""
        if self.key_index is None or index == self.key_index:
            return [+1, -1]
        return [+1 if index > self.key_index else -1]

    # -- the clinician's slices -----------------------------------------------------------------------------
    def start(self, index: int, action: Action, reviewer: Optional[Reviewer] = None,
              extra: Optional[dict] = None) -> Operation:
        """The key slice: the clinician's box or click; with a ``key_policy_factory`` the 2D agent then goes on
        under ``reviewer`` (as in a 2D session). A new key slice replaces the previous one's role."""
        self.volume.check_index(index)
        policy = self.key_policy_factory() if self.key_policy_factory else ClinicianSlicePolicy()
        operation = Operation("start", {index: self.records.get(index)})
        session = self._session(index, policy, "key")
        session.place(action, hint=True, extra=extra)
        if reviewer is not None and self.key_policy_factory is not None:
            session.run(reviewer)
        self.key_index = index
        self.records[index] = SliceRecord(index, session, "key")
        self.operations.append(operation)
        return operation

    def slice_session(self, index: int) -> Optional[Session]:
        """The slice's own 2D session (to propose, accept, override or undo on it directly)."""
        record = self.records.get(index)
        return None if record is None else record.session

    def correct(self, index: int, action: Action, *, repropagate: bool = True,
                extra: Optional[dict] = None) -> list[Operation]:
        """The clinician's box or click on a slice. On a slice with a session, it overrides the agent's next
        proposal there (logged as a correction); on an empty slice it starts that slice's session. Then, with
        ``repropagate``, propagation runs again onward and over the gap back toward the key slice (only
        slices no run reached: nothing accepted is overwritten; ``repropagate``). Returns the operations (the
        correction, the runs)."""
        self.volume.check_index(index)
        if isinstance(action, Stop):
            raise ValueError("a correction is a box or a click")
        extra = {**(extra or {}), "slice": index, "correction": True}  # the log marks the clinician's fix
        record = self.records.get(index)
        if record is not None and record.session is not None and not record.session.finished:
            session = record.session
            before_steps = len(session.steps)
            try:
                session.propose()
                session.override(action, extra=extra)
            except PolicyError:
                session.place(action, extra=extra)
            operation = Operation("correct", {index: record}, (index, len(session.steps) - before_steps))
            self.records[index] = replace(record, origin="corrected" if record.origin != "key" else "key")
        else:
            if isinstance(action, Point) and not action.positive:
                raise ValueError(f"slice {index} has no mask: a negative click has nothing to remove")
            operation = Operation("correct", {index: record})
            session = self._session(index, ClinicianSlicePolicy(), "corrected")
            session.place(action, extra=extra)
            self.records[index] = SliceRecord(index, session, "corrected")
        if self.key_index is None:
            self.key_index = index
        self.operations.append(operation)
        return [operation] + (self.repropagate(index) if repropagate else [])

    def repropagate(self, index: int, *, first: Optional[int] = None, last: Optional[int] = None,
                    cancel: Optional[Callable[[], bool]] = None,
                    on_slice: Optional[Callable[[SliceRecord], None]] = None) -> list[Operation]:
        """After a correction on ``index``: propagation again onward (within slices ``first``-``last``, default
        the volume), then over the gap back toward the key slice (``gap``). A gap with a mask at its far end
        lies between two slices with the structure, so it is bridged without the stop rule, each half carried
        from its nearer end (the drift grows with the distance); an open gap runs under the stop rule."""
        bounds = {+1: last, -1: first}
        done = [self._propagate(index, direction, until=bounds[direction], cancel=cancel, on_slice=on_slice)
                for direction in self.onward(index)]
        if len(self.onward(index)) == 1:
            back = -self.onward(index)[0]
            slices, far = self.gap(index, back, bounds[back])
            if slices and far is not None and self.bridges:
                near = slices[:(len(slices) + 1) // 2]
                done.append(self._propagate(index, back, until=near[-1], cancel=cancel, on_slice=on_slice,
                                            empty_only=True, judged=False))
                if len(near) < len(slices):
                    done.append(self._propagate(far, -back, until=slices[len(near)], cancel=cancel,
                                                on_slice=on_slice, empty_only=True, judged=False))
            elif slices:
                done.append(self._propagate(index, back, until=bounds[back], cancel=cancel, on_slice=on_slice,
                                            empty_only=True))
        return done

    def gap(self, index: int, direction: int, bound: Optional[int] = None) -> tuple[list[int], Optional[int]]:
        """The slices after ``index`` in ``direction`` that no run reached (up to ``bound``, inclusive), and the
        slice with a mask that closes the gap (None: the gap runs to the bound, or to a cleared slice)."""
        edge = (self.volume.slices - 1 if direction > 0 else 0) if bound is None else bound
        slices, k = [], index + direction
        while (edge - k) * direction >= 0 and 0 <= k < self.volume.slices and k not in self.records:
            slices.append(k)
            k += direction
        closed = (edge - k) * direction >= 0 and self.records.get(k) is not None \
            and self.records[k].session is not None and bool(self.records[k].mask.any())
        return slices, k if closed else None

    def clear(self, index: int, repropagate: bool = True) -> list[Operation]:
        """The clinician says the structure is not on this slice: it becomes empty and the clinician's; the
        propagated slices beyond it (onward) that were carried from it are cleared too."""
        self.volume.check_index(index)
        operation = Operation("clear", {index: self.records.get(index)})
        self.records[index] = SliceRecord(index, None, "cleared")
        if repropagate:
            for direction in self.onward(index):
                k = index + direction
                while k in self.records and self.records[k].origin == "propagated":
                    operation.before[k] = self.records.pop(k)
                    k += direction
        self.operations.append(operation)
        return [operation]

    # -- propagation ----------------------------------------------------------------------------------------
    def propagate(self, direction: Optional[int] = None, *, start: Optional[int] = None,
                  until: Optional[int] = None, reviewer: Optional[Reviewer] = None,
                  cancel: Optional[Callable[[], bool]] = None,
                  on_slice: Optional[Callable[[SliceRecord], None]] = None) -> list[Operation]:
        """Carry the mask from ``start`` (default: the key slice) in ``direction`` (+1, -1; None: both) until
        the stop rule, the volume's edge, ``until`` (a slice index, inclusive), a clinician's slice, or
        ``cancel()`` returning True. Each slice's proposals go to ``reviewer`` (None: all accepted)."""
        start = self.key_index if start is None else start
        if start is None or start not in self.records or self.records[start].session is None:
            raise ValueError("propagation needs a slice with a mask to start from (call start first)")
        directions = [direction] if direction else ([+1, -1] if until is None else [1 if until > start else -1])
        return [self._propagate(start, d, until=until, reviewer=reviewer, cancel=cancel, on_slice=on_slice)
                for d in directions]

    def _propagate(self, start: int, direction: int, *, until: Optional[int] = None,
                   reviewer: Optional[Reviewer] = None, cancel: Optional[Callable[[], bool]] = None,
                   on_slice: Optional[Callable[[SliceRecord], None]] = None, empty_only: bool = False,
                   judged: bool = True) -> Operation:
        """One direction from ``start``; ``empty_only``: only over slices no run reached; ``judged``: the stop
        rule applies (a bridge between two slices with the structure runs without it). The propagated boxes
        are the agent's: on the whole slice, never zoomed (``Session._apply``, ``tools/zoom.py``)."""
        run = PropagationRun(len(self.runs) + 1, start, direction, judged=judged)
        self.runs.append(run)
        operation = Operation("propagate", run=run)
        neighbour, k = self.slice_mask(start), start + direction
        start_image = self.volume.slice_image(start)
        # drift is read against the run's start slice: its intensity, and its structure's look against its ring
        look = (Intensity.under(start_image, neighbour), Appearance.of(start_image, neighbour))
        smallest = int(neighbour.sum())
        prompt = _last_box(self.records[start].session)
        max_size = _max_size(neighbour, self.rules)
        last = (self.volume.slices - 1 if direction > 0 else 0) if until is None else until
        while True:
            if (k - last) * direction > 0 or not 0 <= k < self.volume.slices:
                run.stop_reason = "volume edge" if until is None else f"reached slice {last}"
                break
            if cancel is not None and cancel():
                run.stop_reason = "cancelled"
                break
            if k in self.records and self.records[k].origin in OWNED:
                run.stop_reason = f"slice {k} is the clinician's"
                break
            if empty_only and k in self.records:
                run.stop_reason = f"slice {k} already has a mask"
                break
            began = time.perf_counter()
            self._wait_for(k)
            session = self._session(k, NeighbourPolicy(neighbour, k - direction, self.rules, prompt,
                                                       max_size=max_size), "propagated", run=run.id)
            self._prefetch(k + direction, direction)  # after this slice's own embedding: never ahead of it
            try:
                proposal = session.propose()
            except PolicyError as error:
                run.stop_reason = str(error)
                break
            review = (reviewer or _AcceptAll()).review(proposal, session.observation())
            if review.decision == "reject":
                session.reject()
                run.stop_reason = f"the clinician rejected slice {k}'s prompt"
                break
            if review.decision == "override" and review.action is not None:
                session.override(review.action)
            else:
                session.accept()
            session.run(reviewer or _AcceptAll())  # the box tightened, clicks, stop
            box, signal, reason = self._judge(session, neighbour, k - direction, look, smallest)
            reason = reason if judged else None
            if reason and self.rules.repair_margin is not None:
                # before saying the structure ended, the agent tries the neighbour mask's own box once: a loose
                # box filled with what lies around the structure reads like its end
                session.finish(accepted=False, status="propagation-retried", reason=reason)
                repair = replace(self.rules, margin=self.rules.repair_margin, tighten=0, max_growth=None)
                session = self._session(k, NeighbourPolicy(neighbour, k - direction, repair, prompt,
                                                           why=f"{reason}; ", max_size=max_size), "propagated",
                                        run=run.id)
                if session.run(reviewer or _AcceptAll()) == "rejected" and session.prediction is None:
                    run.stop_reason = f"the clinician rejected slice {k}'s prompt"
                    break
                box, signal, reason = self._judge(session, neighbour, k - direction, look, smallest)
            if reason:
                run.stop_slice, run.stop_reason = k, f"slice {k}: {reason}"
                session.finish(accepted=False, status="propagation-stop", reason=reason)
                break
            operation.before[k] = self.records.get(k)
            record = SliceRecord(k, session, "propagated", run.id, signal, time.perf_counter() - began)
            self.records[k] = record
            run.slices.append(k)
            if on_slice is not None:
                on_slice(record)
            neighbour, prompt, k = session.mask, box, k + direction
            smallest = min(smallest, int(neighbour.sum()))
        # slices further on that an earlier run carried over are kept: only the clinician removes them (clear)
        self.operations.append(operation)
        return operation

    def _judge(self, session: Session, neighbour: np.ndarray, neighbour_index: int,
               start: tuple[Optional[Intensity], Optional[Appearance]],
               smallest: int) -> tuple[Optional[Box], SliceSignal, Optional[str]]:
        """A propagated slice's box, its stop signal and the stop rule's reason to stop (None: take it). The
        rule judges the agent's slices; one the clinician prompted is theirs to judge."""
        box = _last_box(session)
        signal = slice_signal(session.mask, neighbour, session.prediction.score, session.image,
                              self.volume.slice_image(neighbour_index), start=start[0], box=box,
                              smallest_area=smallest, appearance=start[1])
        return box, signal, stop_reason(signal, self.rules) if session.clinician_actions == 0 else None

    # -- undo -----------------------------------------------------------------------------------------------
    def undo(self) -> Optional[Operation]:
        """Take back the last operation exactly (a run, a correction, a clear, the start); returns it."""
        if not self.operations:
            return None
        operation = self.operations.pop()
        if operation.slice_steps:
            index, steps = operation.slice_steps
            self.records[index].session.undo(steps)
        for index, record in operation.before.items():
            if record is None:
                self.records.pop(index, None)
            else:
                self.records[index] = record
        if operation.kind == "start":
            self.key_index = next((i for i, r in self.records.items() if r.origin == "key"), None)
        return operation

    def undo_slice(self, index: int, count: int = 1) -> int:
        """Take back the last ``count`` steps of one slice's own session; the other slices stay as they are."""
        session = self.slice_session(index)
        return 0 if session is None else session.undo(count)

    # -- the end --------------------------------------------------------------------------------------------
    def finish(self, accepted: bool = True, status: str = "finished") -> None:
        """End every slice's episode in the log (the slices in the volume ``accepted`` when the clinician
        approves the volume; the ones superseded by a correction or undo never)."""
        current = {id(r.session) for r in self.records.values() if r.session is not None}
        for session in self._all_sessions:
            if not session.finished:
                live = id(session) in current
                session.finish(accepted=accepted and live, status=status if live else "superseded")
        if self._worker is not None:
            self._worker.shutdown(wait=True, cancel_futures=True)

    def close(self) -> None:
        if self._worker is not None:
            self._worker.shutdown(wait=False, cancel_futures=True)

    # -- internals ------------------------------------------------------------------------------------------
    def _session(self, index: int, policy, origin: Origin, run: int = 0) -> Session:
        meta = {**self.meta, "volume": self.volume.name, "slice": index, "axis": self.volume.axis,
                "origin": origin, "propagation_run": run}
        if getattr(policy, "neighbour_index", index) != index:
            meta["neighbour_slice"] = policy.neighbour_index
        gt = None if self.ground_truth is None else self.volume.take(self.ground_truth, index)
        session = Session(self._slice_tool(index), policy, self.volume.slice_image(index), target=self.target,
                          ground_truth=gt, image_key=self.volume.key(index), log=self.log,
                          max_actions=self.max_actions, meta=meta)
        self._all_sessions.append(session)
        self.visited.add(index)
        return session

    def _slice_tool(self, index: int) -> SegmentationTool:
        """The 2D tool a slice's session runs (hook: ``propagation_sam2`` gives each slice a video frame)."""
        return self.tool

    def _prefetch(self, first: int, direction: int) -> None:
        if self._worker is None:
            return
        for k in range(first, first + direction * self.prefetch, direction):
            if 0 <= k < self.volume.slices and k not in self._pending:
                image, key = self.volume.slice_image(k), self.volume.key(k)
                self._pending[k] = self._worker.submit(self.tool.precompute, image, key)

    def _wait_for(self, index: int) -> None:
        future = self._pending.pop(index, None)
        if future is not None:
            future.result()


def _max_size(start: np.ndarray, rules: PropagationRules) -> Optional[tuple[float, float]]:
    """The longest box sides a run from the ``start`` mask may prompt with (``rules.max_size``), or None."""
    box = neighbour_box(start, rules.margin) if rules.max_size is not None else None
    if box is None:
        return None
    return ((box.x2 - box.x1 + 1) * rules.max_size, (box.y2 - box.y1 + 1) * rules.max_size)


def _last_box(session: Optional[Session]) -> Optional[Box]:
    """The newest box prompt of a slice's session (what the tool was last told the structure's extent is)."""
    if session is None:
        return None
    return next((a for a in reversed(session.actions) if isinstance(a, Box)), None)


def describe_operation(operation: Operation) -> str:
    """One line for the terminal and the panel."""
    if operation.run is not None:
        run = operation.run
        where = f"slices {min(run.slices)}-{max(run.slices)}" if run.slices else "no slice"
        bridge = "" if run.judged else " to bridge a gap"
        return (f"propagated {len(run.slices)} ({where}) {'up' if run.direction > 0 else 'down'}{bridge}: "
                f"{run.stop_reason}")
    return f"{operation.kind} on slice(s) {', '.join(map(str, operation.changed))}"


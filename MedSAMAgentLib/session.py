"""The multi-step loop with a reviewer in it (in the spirit of nnInteractive's inference session).

The policy proposes; the reviewer (a clinician in Slicer, or ``reviewers.SimulatedClinician``) accepts,
overrides with another action, or rejects; the applied action updates the mask through the tool. ``run``
lets the agent continue on its own until it proposes stop or reaches the action limit. ``undo`` goes back any
number of steps exactly: the mask and the tool's state (actions and previous logits) are restored from the
stored states, never recomputed. Every step is written to the trajectory log as it happens.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Optional, Protocol

import numpy as np

from . import __version__
from .actions import Action, Box, Point, Stop, action_to_dict
from .geometry import Letterbox
from .metrics import dice, iou
from .policies.base import Observation, Policy, PolicyError, Proposal
from .tools.base import Prediction, SegmentationTool
from .tools.litemedsam import image_key as content_key
from .tools.zoom import whole_view as whole_view_of
from .trajectory import TrajectoryWriter, encode_mask, save_episode_image

Decision = Literal["accept", "override", "reject", "hint", "place"]
DEFAULT_MAX_ACTIONS = 5  # the protocol's limit on box/point actions per episode
# End statuses of an episode that did not run to its end; ``finish`` never marks such an episode accepted.
UNFINISHED_STATUSES = frozenset({"paused", "failed", "interrupted"})


@dataclass(frozen=True)
class Review:
    """A reviewer's answer to a proposal; ``action`` is the replacement when overriding."""

    decision: Literal["accept", "override", "reject"]
    action: Optional[Action] = None
    reason: str = ""


class Reviewer(Protocol):
    def review(self, proposal: Proposal, observation: Observation) -> Review: ...


@dataclass
class Step:
    """One event of the episode: a proposal (if any), what was decided, and what was applied."""

    index: int
    proposal: Optional[Proposal]
    decision: Decision
    applied: Optional[Action]
    actor: Literal["agent", "clinician"]
    prediction: Optional[Prediction] = None
    iou: Optional[float] = None
    dice: Optional[float] = None
    timings: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class _State:
    """What undo restores: the tool's inputs and output after a step."""

    actions: tuple[Action, ...]
    prediction: Optional[Prediction]
    stopped: bool


class Session:
    """One episode on one 2D image.

    With a ``log``, the image is saved next to it (``trajectory.save_episode_image``) and named in the
    header's ``meta["image_path"]`` unless ``meta`` already names one or ``save_image`` is False, so a logged
    session can be exported as training data (``medsam-agent trajectories export``)."""

    def __init__(
        self,
        tool: SegmentationTool,
        policy: Policy,
        image: np.ndarray,
        *,
        target: str = "",
        ground_truth: Optional[np.ndarray] = None,
        image_key: Optional[str] = None,
        log: Optional[TrajectoryWriter] = None,
        max_actions: int = DEFAULT_MAX_ACTIONS,
        episode_id: Optional[str] = None,
        meta: Optional[dict[str, Any]] = None,
        save_image: bool = True,
        on_step: Optional[Callable[["Step"], None]] = None,
    ):
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"session image must be HxWx3 uint8, got {image.shape} {image.dtype}")
        if ground_truth is not None and ground_truth.shape != image.shape[:2]:
            raise ValueError(f"ground truth is {ground_truth.shape}, image is {image.shape[:2]}")
        self.tool, self.policy, self.image = tool, policy, image
        self.target = target
        self.ground_truth = None if ground_truth is None else np.asarray(ground_truth, bool)
        self.letterbox = Letterbox(*image.shape[:2])
        self.max_actions = max_actions
        self.episode_id = episode_id or uuid.uuid4().hex[:12]
        self.log = log
        self.on_step = on_step  # called after every step (progress in the terminal, the panel's table)
        self.steps: list[Step] = []
        self.pending: Optional[Proposal] = None
        self.finished = False
        self.pause_reason = ""  # why the policy could not act last time (for the terminal and the panel)
        self._history: list[_State] = [_State((), None, False)]
        self._image_key = image_key or content_key(image)  # computed once: the tool is re-pointed per prediction
        self.tool.set_image(image, key=image_key)
        self.policy.reset()
        meta = dict(meta or {})
        if log is not None and save_image and "image_path" not in meta:  # exports rebuild the policy's images
            meta["image_path"] = save_episode_image(log.path, self.episode_id, image)
        self._write(
            {
                "type": "episode",
                "image": {"key": image_key, "shape": list(image.shape[:2])},
                "target": target,
                "tool": {"name": tool.name, "version": tool.version},
                "policy": {"name": policy.name, "version": policy.version},
                "engine_version": __version__,
                "max_actions": max_actions,
                "has_ground_truth": ground_truth is not None,
                "meta": meta,
                "created": time.time(),
            }
        )

    # -- state ----------------------------------------------------------------------------------------------
    @property
    def actions(self) -> tuple[Action, ...]:
        return self._history[-1].actions

    @property
    def prediction(self) -> Optional[Prediction]:
        return self._history[-1].prediction

    @property
    def mask(self) -> np.ndarray:
        prediction = self.prediction
        return np.zeros(self.image.shape[:2], bool) if prediction is None else prediction.mask

    @property
    def stopped(self) -> bool:
        return self._history[-1].stopped

    @property
    def at_limit(self) -> bool:
        return len(self.actions) >= self.max_actions

    @property
    def agent_actions(self) -> int:
        """Box/point actions the agent proposed and the reviewer accepted."""
        return sum(1 for s in self.steps if s.actor == "agent" and isinstance(s.applied, (Box, Point)))

    @property
    def clinician_actions(self) -> int:
        """The clinician's own actions: the starting hint, overrides and placed prompts (stop excluded)."""
        return sum(
            1 for s in self.steps if s.actor == "clinician" and isinstance(s.applied, (Box, Point))
        )

    def observation(self) -> Observation:
        # one mask per applied box/point action (reject and stop steps repeat a state and add none)
        masks = [
            state.prediction.mask
            for before, state in zip(self._history, self._history[1:])
            if state.prediction is not None and len(state.actions) > len(before.actions)
        ]
        return Observation(
            image=self.image,
            target=self.target,
            actions=self.actions,
            prediction=self.prediction,
            preview=self.preview,
            masks=masks,
            max_actions=self.max_actions,
        )

    def preview(self, action: Action, whole_view: bool = False) -> Prediction:
        """The tool's output if ``action`` were applied now; nothing is committed. ``whole_view``: a search's
        candidate box, segmented without zooming (``tools/zoom.py``)."""
        if isinstance(action, Stop):
            raise ValueError("stop has no mask to preview")
        return self._predict(self.actions + (action,), self.prediction, whole_view)

    def _predict(self, actions: tuple[Action, ...], previous: Optional[Prediction],
                 whole_view: bool = False) -> Prediction:
        """The tool's output on this session's image. Sessions can share one tool (a volume's slices do), so
        the image is selected again first: from the tool's embedding cache, it costs a look-up. ``whole_view``:
        a new box is not zoomed (``tools/zoom.py``)."""
        self.tool.set_image(self.image, key=self._image_key)
        with whole_view_of(self.tool) if whole_view else contextlib.nullcontext():
            return self.tool.predict(actions, previous)

    # -- the loop -------------------------------------------------------------------------------------------
    def propose(self) -> Proposal:
        """Ask the policy for its next action; it stays pending until accepted, overridden or rejected."""
        self._check_open()
        start = time.perf_counter()
        try:
            proposal = self.policy.propose(self.observation())
        except PolicyError as error:  # the server is down, the model's answer unusable, ...: say why, in the log
            self.pause_reason = str(error) or type(error).__name__
            self._write({"type": "pause", "reason": self.pause_reason})
            raise
        self.pause_reason = ""
        self._propose_ms = (time.perf_counter() - start) * 1000
        self.pending = proposal
        return proposal

    # ``extra`` on the calls below is logged with the step (e.g. the Slicer bridge's RAS/IJK and slice).
    def accept(self, extra: Optional[dict[str, Any]] = None) -> Step:
        proposal = self._take_pending()
        return self._apply(proposal.action, proposal, "accept", "agent", extra)

    def override(self, action: Action, extra: Optional[dict[str, Any]] = None) -> Step:
        """Replace the pending proposal with the clinician's action (moved, flipped, redrawn, or new)."""
        proposal = self._take_pending()
        return self._apply(action, proposal, "override", "clinician", extra)

    def reject(self, extra: Optional[dict[str, Any]] = None) -> Step:
        """Discard the pending proposal; nothing is applied."""
        proposal = self._take_pending()
        step = Step(len(self.steps), proposal, "reject", None, "clinician", extra=dict(extra or {}))
        self.steps.append(step)
        self._history.append(self._history[-1])
        self._log_step(step)
        return step

    def place(self, action: Action, *, hint: bool = False, extra: Optional[dict[str, Any]] = None) -> Step:
        """The clinician's own action with no proposal pending (the starting click or box, or a new prompt)."""
        self._check_open()
        self.pending = None
        return self._apply(action, None, "hint" if hint else "place", "clinician", extra)

    def run(self, reviewer: Reviewer, max_proposals: int = 50) -> str:
        """Continue until stop, the action limit, or a pause. Returns ``stopped``, ``limit``, ``paused``
        (the policy could not act; the message is in ``self.pause_reason`` and the log) or ``rejected``."""
        for _ in range(max_proposals):
            if self.stopped:
                return "stopped"
            if self.at_limit:
                return "limit"
            try:
                proposal = self.propose()
            except PolicyError:
                return "paused"
            review = reviewer.review(proposal, self.observation())
            if review.decision == "accept":
                self.accept()
            elif review.decision == "override":
                if review.action is None:
                    raise ValueError("an override needs an action")
                self.override(review.action)
            else:
                self.reject()
                return "rejected"
        return "limit"

    def undo(self, count: int = 1) -> int:
        """Take back the last ``count`` steps (or as many as there are); returns how many were undone."""
        count = min(count, len(self.steps))
        if count <= 0:
            return 0
        del self.steps[-count:]
        del self._history[-count:]
        self.pending = None
        self.finished = False
        self._write({"type": "undo", "count": count})
        return count

    def finish(self, accepted: bool = True, status: str = "finished", reason: str = "") -> None:
        """End the episode. ``accepted`` marks the final mask as clinician-approved ground truth; an episode
        ending ``paused``, ``failed`` or ``interrupted`` (``UNFINISHED_STATUSES``) is never accepted. ``reason``
        (default: the pause reason of a paused episode) is logged with the end record."""
        self.finished = True
        self.pending = None
        reason = reason or (self.pause_reason if status == "paused" else "")
        record = {
            "type": "end",
            "status": status,
            "accepted": bool(accepted) and status not in UNFINISHED_STATUSES,
            "final_mask": encode_mask(self.mask),
            "agent_actions": self.agent_actions,
            "clinician_actions": self.clinician_actions,
        }
        if reason:
            record["reason"] = reason
        record.update(self._scores(self.mask))
        self._write(record)

    # -- internals ------------------------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self.finished:
            raise RuntimeError("this session is finished; start a new one")

    def _take_pending(self) -> Proposal:
        self._check_open()
        if self.pending is None:
            raise RuntimeError("no proposal is pending; call propose() first")
        proposal, self.pending = self.pending, None
        return proposal

    def _apply(
        self,
        action: Action,
        proposal: Optional[Proposal],
        decision: Decision,
        actor: str,
        extra: Optional[dict[str, Any]] = None,
    ) -> Step:
        state = self._history[-1]
        timings = {"propose_ms": round(getattr(self, "_propose_ms", 0.0), 2)} if proposal else {}
        self._propose_ms = 0.0
        if isinstance(action, Stop):
            new_state = _State(state.actions, state.prediction, True)
        else:
            if state.stopped:  # a new prompt after stop reopens the episode
                state = _State(state.actions, state.prediction, False)
            start = time.perf_counter()
            # zoom (tools/zoom.py) is for the tight boxes a person draws; the agent's boxes (a policy's guess, the
            # volume session's neighbour box) stay on the whole view, and so do the clicks after them
            agent_box = actor == "agent" and isinstance(action, Box)
            prediction = self._predict(state.actions + (action,), state.prediction, whole_view=agent_box)
            timings["tool_ms"] = round((time.perf_counter() - start) * 1000, 2)
            new_state = _State(state.actions + (action,), prediction, False)
        step = Step(
            len(self.steps), proposal, decision, action, actor, new_state.prediction, timings=timings,
            extra=dict(extra or {}),
        )
        if new_state.prediction is not None and self.ground_truth is not None:
            scores = self._scores(new_state.prediction.mask)
            step.iou, step.dice = scores["iou"], scores["dice"]
        self.steps.append(step)
        self._history.append(new_state)
        self._log_step(step)
        return step

    def _scores(self, mask: np.ndarray) -> dict:
        if self.ground_truth is None:
            return {}
        return {"iou": iou(mask, self.ground_truth), "dice": dice(mask, self.ground_truth)}

    def log_decision(self, decision: str, extra: Optional[dict[str, Any]] = None) -> None:
        """Log a clinician decision that is not an action of this episode (a volume's "no structure on this
        slice": decision ``clear``) as a step with nothing applied and an empty mask. The session's own steps
        are left as they were, so undoing the decision restores them; log readers drop it on its undo record."""
        if self.log is None:
            return
        self._write({"type": "step", "index": len(self.steps), "decision": decision, "actor": "clinician",
                     "proposal": None, "applied": None, "applied_model": None,
                     "mask": encode_mask(np.zeros(self.mask.shape, bool)), "score": None, "iou": None,
                     "dice": None, "timings": {}, "extra": dict(extra or {})})

    def _log_step(self, step: Step) -> None:
        if self.on_step is not None:
            self.on_step(step)
        if self.log is None:
            return
        record: dict[str, Any] = {
            "type": "step",
            "index": step.index,
            "decision": step.decision,
            "actor": step.actor,
            "proposal": None,
            "applied": None if step.applied is None else action_to_dict(step.applied),
            "applied_model": None if step.applied is None else self.letterbox.action_to_model(step.applied),
            "mask": None,
            "score": None,
            "iou": step.iou,
            "dice": step.dice,
            "timings": step.timings,
            "extra": step.extra,
        }
        if step.proposal is not None:
            record["proposal"] = {
                "action": action_to_dict(step.proposal.action),
                "model": self.letterbox.action_to_model(step.proposal.action),
                "reason": step.proposal.reason,
                "policy": step.proposal.policy,
                "raw_text": step.proposal.raw_text,
            }
        if step.prediction is not None and step.applied is not None and not isinstance(step.applied, Stop):
            record["mask"] = encode_mask(step.prediction.mask)
            record["score"] = float(step.prediction.score)
        self._write(record)

    def _write(self, record: dict) -> None:
        if self.log is not None:
            record = {"type": record.pop("type"), "episode_id": self.episode_id, **record}
            self.log.write(record)

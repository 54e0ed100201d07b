"""One browser session of the app: the picture, the clinician's drawn prompt and the engine session.

Every button is one method here, on ``session.Session`` (the engine the Slicer panel uses): Start places the
clinician's click or box as the hint and asks the agent; Accept, Override (the drawn prompt instead of the
proposal), Flip (the proposed click with the other sign), Reject; Continue lets the agent go on, accepting
its own proposals, until it stops or reaches the action limit; Undo takes back one step exactly; Finish marks
the mask as the clinician's accepted result (an expert trajectory in the log) and writes the downloads.
After a decision the agent proposes its next action at once, so the page always shows what it would do next.

Tools are built once per process (``ENGINE``) and shared by all browser sessions; one lock serialises engine
calls, and each call first points the tool at its session's image (a cached embedding, so this is cheap).
Problems the clinician can fix raise ``AppError`` with a message for the page.
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np
from PIL import Image, ImageDraw

from .. import colors, registry
from ..actions import Action, Box, Point, Stop, describe
from ..policies.base import Observation, PolicyError, Proposal
from ..render import overlay
from ..session import Review, Session, Step
from ..slicer.logic import step_row
from ..tools.base import SegmentationTool
from ..tools.litemedsam import image_key
from ..trajectory import TrajectoryWriter
from .picture import Picture, Volume

PROMPT_MODES = ("positive click", "negative click", "box")
TABLE_HEADERS = ["step", "who", "proposed", "decision", "applied", "confidence", "Dice", "reason"]
DISPLAY_SIDE = 512  # pictures are enlarged by a whole factor to about this many pixels on their longer side


class AppError(RuntimeError):
    """Something the clinician can fix (no prompt drawn, nothing pending, ...); shown in the page."""


@dataclass(frozen=True)
class Choices:
    """The page's tool and policy fields."""

    tool: str = registry.DEFAULT_TOOL
    policy: str = registry.DEFAULT_POLICY
    endpoint: str = ""
    model_name: str = ""
    max_actions: int = 5


class Engine:
    """The process's tools, each built once, and the lock that serialises engine calls. ``tool`` (with its
    ``checkpoint`` and options, from the command line) is offered beside the built-in one."""

    def __init__(self, tool: str = registry.DEFAULT_TOOL, checkpoint: Optional[str] = None,
                 device: Optional[str] = None, **options):
        self.configured, self.checkpoint, self.device, self.options = tool, checkpoint, device, options
        self.lock = threading.RLock()
        self.tools: dict[str, SegmentationTool] = {}  # built on first use, by name

    @property
    def names(self) -> list[str]:
        return list(dict.fromkeys([self.configured, registry.DEFAULT_TOOL]))

    def tool(self, name: str) -> SegmentationTool:
        if name not in self.names:
            raise AppError(f"the {name} tool is not set up on this server; start the app with --tool {name} "
                           "--checkpoint FILE to offer it")
        with self.lock:
            if name not in self.tools:
                mine = name == self.configured
                self.tools[name] = registry.make_tool(name, checkpoint=self.checkpoint if mine else None,
                                                       device=self.device, **(self.options if mine else {}))
            return self.tools[name]


class _TrustAgent:
    """Continue's reviewer: the clinician lets the agent apply its own proposals."""

    def review(self, proposal: Proposal, observation: Observation) -> Review:
        return Review("accept", reason="continue")


class Workspace:
    def __init__(self, engine: Engine, out: Path):
        self.engine = engine
        self.id = time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
        self.folder = Path(out) / self.id
        self.picture: Optional[Picture] = None
        self.index = 0
        self.image: Optional[np.ndarray] = None
        self.session: Optional[Session] = None
        self.writer: Optional[TrajectoryWriter] = None
        self.drawn: Optional[Action] = None  # the clinician's click or box, not yet applied
        self.corner: Optional[tuple[int, int]] = None  # first corner of a box being drawn
        self.masks: dict[int, np.ndarray] = {}  # finished masks per slice
        self.tool_name = registry.DEFAULT_TOOL  # the tool of the last Start
        self.propagated: list[int] = []  # slices the last propagation wrote (Undo takes them back)
        self.message = ""
        self.downloads: tuple[Optional[Path], Optional[Path]] = (None, None)

    # -- the picture --------------------------------------------------------------------------------------
    def open(self, picture: Picture) -> None:
        self.close()
        self.picture, self.masks, self.downloads, self.propagated = picture, {}, (None, None), []
        self._show(picture.start)
        truth = "ground truth known: Dice is shown" if picture.slice_truth(self.index) is not None else \
            "no ground truth"
        self.message = f"Opened {picture.name} ({truth}). Click on the target, then press Start."

    def set_slice(self, index: int) -> None:
        picture = self._picture()
        if index == self.index:
            return
        if self.active:
            raise AppError(f"finish the session on slice {self.index} before moving to another slice")
        if not 0 <= index < picture.slices:
            raise AppError(f"slice {index} is outside 0..{picture.slices - 1}")
        self._show(index)
        self.message = f"Slice {index} of {picture.slices - 1}."

    def set_window(self, window: str) -> None:
        picture = self._picture()
        if not isinstance(picture, Volume) or window == picture.window:
            return
        if self.active:
            raise AppError("finish the session before changing the intensity mapping (the agent sees it)")
        picture.set_window(window)
        self._show(self.index)
        self.message = f"Intensities: {window}."

    def _show(self, index: int) -> None:
        self.index = index
        self.image = self._picture().slice_image(index)
        self.drawn = self.corner = None

    def _picture(self) -> Picture:
        if self.picture is None:
            raise AppError("open a case or upload an image first")
        return self.picture

    # -- drawing ------------------------------------------------------------------------------------------
    @property
    def scale(self) -> int:
        return max(1, DISPLAY_SIDE // max(self._image().shape[:2]))

    def click(self, x: float, y: float, mode: str) -> None:
        """A click on the displayed picture at (x, y) display pixels, in ``PROMPT_MODES``'s ``mode``."""
        if mode not in PROMPT_MODES:
            raise AppError(f"unknown prompt mode {mode!r}")
        height, width = self._image().shape[:2]
        col = int(np.clip(x // self.scale, 0, width - 1))
        row = int(np.clip(y // self.scale, 0, height - 1))
        if mode == "box":
            if self.corner is None:
                self.corner, self.drawn = (col, row), None
                self.message = f"Box corner at ({col}, {row}); click the opposite corner."
                return
            (x0, y0), self.corner = self.corner, None
            if x0 == col or y0 == row:
                raise AppError("a box needs two corners in different rows and columns: click the first corner again")
            self.drawn = Box(x0, y0, col, row)
        else:
            self.corner = None
            self.drawn = Point(col, row, mode == "positive click")
        use = "Override to apply it instead of the proposal" if self.pending else \
            ("Override to apply it" if self.active else "Start")
        self.message = f"Your prompt: {describe(self.drawn)}. Press {use}."

    # -- the loop -----------------------------------------------------------------------------------------
    @property
    def active(self) -> bool:
        return self.session is not None and not self.session.finished

    @property
    def pending(self) -> Optional[Proposal]:
        return self.session.pending if self.active else None

    def start(self, target: str, choices: Choices, progress: Callable[[float, str], None] = lambda f, d: None
              ) -> None:
        picture, image = self._picture(), self._image()
        truth = picture.slice_truth(self.index)
        progress(0.1, f"loading the {choices.tool} tool (once per server)")
        tool = self.engine.tool(choices.tool)
        self.tool_name = choices.tool
        policy = self._policy(choices, truth)
        if policy.needs_hint and self.drawn is None:
            raise AppError(f"the {choices.policy} policy starts from your prompt: click on the target (or draw a "
                           "box), then press Start")
        self.close()
        if self.writer is None:
            self.writer = TrajectoryWriter(self.folder / "trajectory.jsonl")
        meta = {"source": "app", "case": picture.name, **picture.describe(self.index)}
        progress(0.4, "encoding the image")
        with self.engine.lock:
            self.session = Session(tool, policy, image, target=target.strip() or picture.target,
                                   ground_truth=truth, image_key=image_key(image), log=self.writer,
                                   max_actions=choices.max_actions, meta=meta)
            done = "Started."
            if self.drawn is not None:
                hint = self._take_drawn()
                self.session.place(hint, hint=True, extra=self._extra(hint, "hint"))
                done = f"Started from your {describe(hint)}."
            progress(0.8, "the agent is thinking")
            self._propose(after=done)

    def accept(self) -> None:
        session = self._need_pending("accept")
        action = session.pending.action
        with self._engine():
            session.accept(extra=self._extra(action))
            self._propose(after=f"Accepted the agent's {describe(action)}.")

    def override(self) -> None:
        session = self._need_session()
        if self.drawn is None:
            raise AppError("draw your own click or box first (pick the prompt type, click on the image), then "
                           "press Override")
        action = self._take_drawn()
        with self._engine():
            if session.pending is not None:
                session.override(action, extra=self._extra(action, "override"))
            else:
                session.place(action, extra=self._extra(action, "placed"))
            self._propose(after=f"Applied your {describe(action)}.")

    def flip(self) -> None:
        session = self._need_pending("flip")
        action = session.pending.action
        if not isinstance(action, Point):
            raise AppError(f"only a proposed click can be flipped; the agent proposes a {action.kind}")
        with self._engine():
            session.override(action.flipped(), extra=self._extra(action.flipped(), "flipped"))
            self._propose(after=f"Applied the flipped {describe(action.flipped())}.")

    def reject(self) -> None:
        session = self._need_pending("reject")
        with self._engine():
            session.reject(extra=self._extra(None, "rejected"))
        self.message = "Rejected. Draw your own prompt and press Override, or press Continue."

    def continue_(self, progress: Callable[[float, str], None] = lambda f, d: None) -> None:
        session = self._need_session()
        with self._engine():
            if session.pending is not None:
                session.accept(extra=self._extra(session.pending.action))
            session.on_step = lambda step: progress(min(len(session.actions) / session.max_actions, 1.0),
                                                    f"step {step.index + 1}: {describe(step.applied or Stop())}")
            try:
                status = session.run(_TrustAgent())
            finally:
                session.on_step = None
        reasons = {"stopped": "the agent proposed stop", "limit": f"the limit of {session.max_actions} actions",
                   "paused": f"the agent could not act: {session.pause_reason}"}
        self.message = f"Continued until {reasons.get(status, status)}. Undo, correct, or press Finish."

    def undo(self) -> None:
        if self.propagated and not self.active:
            for index in self.propagated:
                self.masks.pop(index, None)
            count, self.propagated = len(self.propagated), []
            self._write_downloads()
            self.message = f"Took back the propagation ({count} slices)."
            return
        session = self._need_session()
        if not session.steps:
            raise AppError("nothing to undo")
        undone = len(session.steps)
        with self._engine():
            session.undo(1)
            self._propose(after=f"Undid step {undone}.")

    def finish(self) -> None:
        session = self._need_session()
        with self.engine.lock:
            session.finish(accepted=True, status="finished")
        self.masks[self.index] = session.mask.copy()
        self.propagated = []
        self._write_downloads()
        then = "Propagate carries it through the volume; or download" if isinstance(self.picture, Volume) \
            else "Download"
        self.message = f"Finished: the mask is accepted (an expert trajectory in the log). {then} the mask and the log."

    def propagate(self, progress: Callable[[float, str], None] = lambda f, d: None) -> None:
        """Carry the finished mask of this slice through the volume with the engine's volume session
        (issue 11; ``propagation_sam2.volume_session_for``: SAM2's memory for SAM2 / MedSAM2), up and down until
        its stop rule; the slices it writes join the mask download. The
        clinician's finished slices are kept; Undo takes the propagation back."""
        from ..policies.oracle import gt_box
        from ..propagation import describe_operation
        from ..propagation_sam2 import volume_session_for
        from ..volumes import Volume as SliceStack

        picture = self._picture()
        if not isinstance(picture, Volume):
            raise AppError("propagation needs a volume (NIfTI/NRRD or the bundled volume)")
        if self.active:
            raise AppError("press Finish on this slice first: propagation starts from an accepted mask")
        if self.index not in self.masks or not self.masks[self.index].any():
            raise AppError("segment and Finish this slice first: propagation carries its mask to the next slices")
        plane = picture.plane(self.index)
        stack = SliceStack(picture.model, picture.geometry, axis=2 - plane.axis, name=picture.name)
        truth = picture.truth
        tool = self.engine.tool(self.tool_name)
        with self.engine.lock:
            volume_session = volume_session_for(tool, stack, target=picture.target, ground_truth=truth,
                                                log=self.writer, meta={"source": "app", "case": picture.name,
                                                                       "window": picture.window})
            try:
                volume_session.start(self.index, gt_box(plane.to_ijk_plane(self.masks[self.index])))
                done = [0]

                def on_slice(record) -> None:
                    done[0] += 1
                    progress(min(done[0] / max(picture.slices - 1, 1), 1.0), f"slice {record.index}")

                operations = volume_session.propagate(on_slice=on_slice)
                volume_session.finish(accepted=False, status="propagated")  # not reviewed slice by slice
            finally:
                volume_session.close()
        self.propagated = [index for operation in operations for index in operation.run.slices
                           if index not in self.masks]
        for index in self.propagated:
            self.masks[index] = picture.plane(index).orient(volume_session.slice_mask(index))
        self._write_downloads()
        self.message = ("Propagated: " + "; ".join(describe_operation(op) for op in operations) +
                        ". Move the slider to review; Undo takes it back.")

    def _write_downloads(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.downloads = (self._picture().write_mask(self.masks, self.folder),
                          None if self.writer is None else self.writer.path)

    def close(self) -> None:
        """Leave an open session unaccepted (a new Start, another case)."""
        if self.active:
            with self.engine.lock:
                self.session.finish(accepted=False, status="abandoned")

    # -- what the page shows ------------------------------------------------------------------------------
    def picture_image(self) -> Image.Image:
        image = self._image()
        if self.session is not None and self.session.image is image:
            mask, applied = self.session.mask, [a for a in self.session.actions if not isinstance(a, Stop)]
        else:
            mask, applied = self.masks.get(self.index), []
        proposal = self.pending.action if self.pending and not isinstance(self.pending.action, Stop) else None
        picture = overlay(image, mask, applied + ([self.drawn] if self.drawn else []), proposal, self.scale)
        if self.corner is not None:
            x, y = ((c + 0.5) * self.scale for c in self.corner)
            draw, r = ImageDraw.Draw(picture), 2 * self.scale + 2
            draw.line([x - r, y, x + r, y], fill=colors.BOX, width=2)
            draw.line([x, y - r, x, y + r], fill=colors.BOX, width=2)
        return picture

    def proposal_text(self) -> str:
        if self.pending is None:
            return "No proposal pending."
        proposal = self.pending
        return f"**The agent proposes:** {describe(proposal.action)} ({proposal.policy}): {proposal.reason}"

    def rows(self) -> list[list]:
        if self.session is None or self.session.image is not self.image:
            return []
        rows = []
        for step in self.session.steps:
            row = step_row(step)  # the Slicer panel's table row, plus Dice
            rows.append([row["index"], row["who"], row["proposed"], row["decision"], row["applied"],
                         row["confidence"], _dice(step), row["reason"]])
        return rows

    # -- internals ----------------------------------------------------------------------------------------
    def _image(self) -> np.ndarray:
        self._picture()
        assert self.image is not None
        return self.image

    def _policy(self, choices: Choices, truth: Optional[np.ndarray]):
        if choices.policy == "mllm" and not choices.endpoint.strip():
            raise AppError("the mllm policy needs the URL of a served model (e.g. http://127.0.0.1:8000/v1) "
                           "and its model name")
        if choices.policy == "mllm":
            return registry.make_policy("mllm", endpoint=choices.endpoint.strip(),
                                        model_name=choices.model_name.strip() or None)
        return registry.make_policy(choices.policy, ground_truth=truth)

    def _need_session(self) -> Session:
        if self.session is None:
            raise AppError("press Start first")
        if self.session.finished:
            raise AppError("this session is finished; press Start for a new one")
        return self.session

    def _need_pending(self, verb: str) -> Session:
        session = self._need_session()
        if session.pending is None:
            raise AppError(f"there is no proposal to {verb}: press Continue to let the agent go on, or draw a "
                           "prompt and press Override")
        return session

    def _take_drawn(self) -> Action:
        action, self.drawn = self.drawn, None
        assert action is not None
        return action

    @contextlib.contextmanager
    def _engine(self) -> Iterator[None]:
        """The engine lock, with the shared tool pointed at this session's image (a cached embedding)."""
        session = self.session
        assert session is not None
        with self.engine.lock:
            session.tool.set_image(session.image, key=image_key(session.image))
            yield

    def _propose(self, after: str = "") -> None:
        """Ask the agent for its next action unless it has stopped or used up its actions."""
        session = self.session
        assert session is not None
        prefix = f"{after} " if after else ""
        if session.stopped:
            self.message = f"{prefix}The agent has stopped. Undo, add your own prompt (Override), or Finish."
        elif session.at_limit:
            self.message = f"{prefix}The limit of {session.max_actions} actions is reached. Undo or Finish."
        else:
            try:
                session.propose()
                self.message = f"{prefix}Accept, Flip, Reject, or draw your own prompt and Override; Continue " \
                               "lets the agent go on."
            except PolicyError as error:
                self.message = f"{prefix}The agent could not act: {error}. Draw a prompt and press Override."

    def _extra(self, action: Optional[Action] = None, how: str = "") -> dict:
        extra: dict = {"source": "app"}
        if how:
            extra["how"] = how
        if isinstance(self.picture, Volume) and action is not None:
            extra["slice_index"] = self.index
            extra["applied_coordinates"] = self.picture.plane(self.index).action_coordinates(action)
        return extra


def _dice(step: Step) -> Optional[float]:
    return None if step.dice is None else round(step.dice, 3)

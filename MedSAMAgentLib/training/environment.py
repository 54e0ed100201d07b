"""The RL environment of the paper's second stage, written once for every trainer (TRL, verl).

An episode is one task of the RL export (``trajectories export --format verl``: the engine image, the target
and the ground-truth mask). Each tool call of the policy (``add_bbox`` / ``add_point`` / ``stop_action``, the
protocol's action space, 0..999 model coordinates) runs the segmentation tool on the case's image with the
protocol's update rule (the newest prompt plus the previous low-resolution logits), and answers with what the
policy sees next: the green-overlay image (``mllm_prompt.observation_image``) and the protocol's follow-up text.
The IoU/Dice of the mask after every box/point call are recorded, so the reward (``rewards.episode_reward``:
format + outcome + process) comes from the masks the policy really made, not from its text alone.

Every call counts, in order, whatever turn holds it (both trainers execute each call of a turn); calls after
``stop_action`` are answered but change nothing (the episode has ended), which is how ``rewards`` scores them.
The trainer adapters (``training.trl_env``, ``training.verl_tools``) only translate calls and answers.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

import numpy as np

from ..actions import Action, Box, Point, Stop
from ..geometry import Letterbox
from ..metrics import dice, iou
from ..rewards import RewardBreakdown, decode_image_like, decode_mask_like, episode_reward
from ..toolcall import TOOL_NAMES, ToolCallError, action_from_call
from ..tools.litemedsam import image_key as content_key

def trainer_system_prompt() -> str:
    """The system message when the trainer's chat template renders the tool schemas itself (TRL's ``tools``,
    verl's tool config): the persona and the one-call rule, so the tools block is given once."""
    from ..policies.mllm_prompt import PERSONA

    return f"{PERSONA}\n\nYou must call exactly one function per turn."


STOPPED_TEXT = "The episode is finished: the mask was submitted."
ENDED_TEXT = "The episode has already finished (stop_action was called); no more actions are applied."


@dataclass
class Task:
    """One RL task: the HxWx3 engine image the tool works on, its ground-truth mask and the target text."""

    image: np.ndarray
    ground_truth: np.ndarray
    target: str = ""
    task_id: str = ""

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> "Task":
        """A row of the RL export as any trainer hands it over (parquet columns, a datasets row, verl's
        ``extra_info`` / ``create_kwargs``): ``engine_image`` and ``mask`` (or ``ground_truth``) as PNG bytes,
        ``{"bytes": ...}``, arrays or PIL images."""
        info = row.get("extra_info") if isinstance(row.get("extra_info"), Mapping) else {}
        image = _first(row, info, "engine_image")
        truth = _first(row, info, "mask", "ground_truth")
        if image is None or truth is None:
            raise ValueError(f"an RL task needs 'engine_image' and 'mask' (ground truth); got keys {sorted(row)}")
        image, truth = decode_image_like(_pil_to_array(image)), decode_mask_like(_pil_to_array(truth))
        if image.ndim != 3 or image.shape[2] != 3 or truth.shape != image.shape[:2]:
            raise ValueError(f"engine image {image.shape} and ground truth {truth.shape} do not match (HxWx3, HxW)")
        target = _first(row, info, "target_description", "target") or ""
        return cls(image, truth, str(target), str(_first(row, info, "id") or ""))


def _first(row: Mapping, info: Mapping, *keys: str) -> Any:
    for key in keys:
        for source in (row, info):
            if source.get(key) is not None:
                return source[key]
    return None


def _pil_to_array(value: Any) -> Any:
    if hasattr(value, "convert") and hasattr(value, "size"):  # a PIL image (datasets' Image feature decodes to it)
        return np.asarray(value)
    if isinstance(value, Mapping) and value.get("bytes") is None and value.get("path"):
        with open(value["path"], "rb") as handle:
            return handle.read()
    return value


@dataclass
class StepResult:
    """What one call gives back to the policy: the overlay image (None after stop or a refused call), the
    text, and whether the episode is over."""

    text: str
    image: Optional[np.ndarray] = None
    done: bool = False

    def png(self) -> Optional[bytes]:
        if self.image is None:
            return None
        from PIL import Image

        buffer = io.BytesIO()
        Image.fromarray(self.image).save(buffer, format="PNG")
        return buffer.getvalue()


@dataclass
class SegmentationEnvironment:
    """One episode at a time on a ``SegmentationTool`` (the tool's image embedding is computed once per task)."""

    tool: Any
    task: Optional[Task] = None
    actions: list[Action] = field(default_factory=list)  # every applied call in model coordinates, stop included
    masks: list[np.ndarray] = field(default_factory=list)  # the mask after each box/point action
    ious: list[float] = field(default_factory=list)
    dices: list[float] = field(default_factory=list)
    _prediction: Any = None
    _applied: list[Action] = field(default_factory=list)  # pixel-space prompts sent to the tool
    _image_key: str = ""

    def reset(self, task: Task) -> None:
        self.task = task
        self.actions, self.masks, self.ious, self.dices = [], [], [], []
        self._prediction, self._applied = None, []
        self._image_key = content_key(task.image)
        self._hold_tool()

    def _hold_tool(self) -> None:
        """Point the tool at this episode's image, as ``Session`` does before each prediction: trainers
        interleave the calls of many rollouts on one tool (tools cache embeddings by image: a look-up)."""
        self.tool.set_image(self.task.image, key=self._image_key)

    @property
    def stopped(self) -> bool:
        return bool(self.actions) and isinstance(self.actions[-1], Stop)

    def call(self, name: str, arguments: Optional[Mapping[str, Any]] = None) -> StepResult:
        """Apply one tool call. A malformed call raises ``ToolCallError`` (the trainers turn it into an error
        message for the policy) and changes nothing, as the reward's parser scores it (an unusable call)."""
        if self.task is None:
            raise RuntimeError("reset(task) the environment before calling its tools")
        if name not in TOOL_NAMES:
            raise ToolCallError(f"unknown tool {name!r}; expected one of {', '.join(TOOL_NAMES)}")
        action = action_from_call({"name": name, "arguments": dict(arguments or {})})
        return self.apply(action)

    def apply(self, action: Action) -> StepResult:
        """Apply an action in 0..999 model coordinates (what ``toolcall.parse_model_action`` returns)."""
        from ..policies.mllm_prompt import FOLLOW_UP_TEXT, observation_image

        if self.stopped:
            return StepResult(ENDED_TEXT, done=True)
        self.actions.append(action)
        if isinstance(action, Stop):
            return StepResult(STOPPED_TEXT, done=True)
        assert isinstance(action, (Box, Point))
        letterbox = Letterbox(*self.task.image.shape[:2])
        self._applied.append(letterbox.action_from_model(action))
        self._hold_tool()
        self._prediction = self.tool.predict(tuple(self._applied), self._prediction)
        mask = np.asarray(self._prediction.mask, bool)
        self.masks.append(mask)
        self.ious.append(iou(mask, self.task.ground_truth))
        self.dices.append(dice(mask, self.task.ground_truth))
        return StepResult(FOLLOW_UP_TEXT, observation_image(self.task.image, mask))

    def reward(self) -> RewardBreakdown:
        """The protocol's reward of the episode so far, from the recorded IoU/Dice."""
        if self.task is None:
            raise RuntimeError("no episode: reset(task) first")
        empty = np.zeros_like(self.task.ground_truth)
        return episode_reward(self.actions, self.ious, self.dices, iou(empty, self.task.ground_truth),
                              dice(empty, self.task.ground_truth))

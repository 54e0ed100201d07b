"""The MedSAM-Agent reward for the RLVR stage (AGENT_PROTOCOL.md, "Reward"), and adapters for the trainers.

The reward scores one finished episode: the T box/point actions (stop excluded) made masks M_1..M_T with
IoU_t and Dice_t against the ground truth.

- Format F = 1 if there is at least one box/point action *and* the last call is ``stop_action``; 0.5 if only
  one of the two holds; 0 otherwise.
- base = 0.5 IoU_T + 0.5 Dice_T (no mask at all counts as an empty mask).
- If T > 1: penalty = (max_t IoU_t - IoU_T) + 0.01 T and bonus = 0.1 * sum_{t>=2} max(0, IoU_t - IoU_{t-1});
  else both are 0.
- Q = clip(base - penalty + bonus, 0, 1); score = 0.2 F + 0.8 Q.

``episode_reward`` is the pure function over per-step IoU/Dice; ``episode_reward_from_masks`` computes them
from masks. The trainer adapters see only the model's *text*:

- ``compute_score(data_source, solution_str, ground_truth, extra_info=None)`` (verl's custom reward function);
- ``make_trl_reward(tool=None)`` -> ``reward_func(prompts, completions, **kwargs) -> list[float]`` (TRL GRPO).

Every tool call counts, in order (several in one turn too: both trainers' environments execute each of them,
``training.environment``), up to the first ``stop_action``. Calls arrive as ``<tool_call>`` text, as TRL's parsed
``tool_calls`` of an assistant message, or, where a tokenizer marks the tags special and the trainer decodes with
``skip_special_tokens`` (verl), as untagged ``{"name": ..., "arguments": ...}`` objects: all three parse alike.

From text alone only the format part (and the action sequence) can be checked: the masks come from the
segmentation tool, so the environment must supply them. The adapters take them, in this order of preference,
from (1) ``ious`` + ``dices`` (per box/point action, as computed by the environment that ran the tool; with
``calls``, how many calls it applied, the calls it never answered are left out),
(2) ``masks`` (per box/point action: HxW arrays or PNG bytes) scored against ``ground_truth`` (mask PNG bytes
or array), (3) replaying the parsed actions through a ``SegmentationTool`` on the engine image
(``engine_image`` PNG bytes or array; TRL: ``make_trl_reward(tool)``; verl: ``reward_kwargs: {replay_tool:
litemedsam}`` in the config, or ``set_replay_tool(tool)``). TRL's multi-turn run passes its ``environments``:
their recorded IoU/Dice are (1).
With none of these the episode has no mask, which the protocol scores as an empty mask: the score is then
0.2 F only, and a warning says so once.
"""

from __future__ import annotations

import io
import json
import re
import warnings
from dataclasses import asdict, dataclass
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np

from .actions import Action, Box, Point, Stop
from .metrics import dice, iou

FORMAT_WEIGHT = 0.2
QUALITY_WEIGHT = 0.8
STEP_COST = 0.01  # per box/point action, when T > 1
GAIN_WEIGHT = 0.1  # on the positive IoU gains from the second action on

_TOOL_CALL = re.compile(r"<tool_call>(.*?)(?:</tool_call>|$)", re.DOTALL)


@dataclass(frozen=True)
class RewardBreakdown:
    """Every term of the reward, for logging (``score`` is what the trainer uses)."""

    score: float
    format: float
    quality: float
    base: float
    penalty: float
    bonus: float
    actions: int  # T: box/point actions (stop excluded)
    final_iou: float
    final_dice: float

    def as_dict(self) -> dict:
        return asdict(self)


def format_score(actions: Sequence[Optional[Action]]) -> float:
    """F: 1 if there is a box/point action and the last call is stop, 0.5 if one of the two, else 0.
    ``None`` entries are turns without a usable tool call."""
    has_action = any(isinstance(a, (Box, Point)) for a in actions)
    ends_with_stop = bool(actions) and isinstance(actions[-1], Stop)
    return (float(has_action) + float(ends_with_stop)) / 2


def episode_reward(
    actions: Sequence[Optional[Action]],
    ious: Sequence[float],
    dices: Sequence[float],
    empty_iou: float = 0.0,
    empty_dice: float = 0.0,
) -> RewardBreakdown:
    """The reward of one episode from the IoU/Dice after each box/point action (in order).

    ``empty_iou`` / ``empty_dice`` score the empty mask used when there is no box/point action (0 for a
    non-empty ground truth; ``episode_reward_from_masks`` computes them)."""
    ious, dices = [float(v) for v in ious], [float(v) for v in dices]
    count = sum(1 for a in actions if isinstance(a, (Box, Point)))
    if len(ious) != count or len(dices) != count:
        raise ValueError(f"{count} box/point actions but {len(ious)} IoUs and {len(dices)} Dices: "
                         "need one of each per box/point action")
    fmt = format_score(actions)
    if count == 0:
        final_iou, final_dice = float(empty_iou), float(empty_dice)
    else:
        final_iou, final_dice = ious[-1], dices[-1]
    base = 0.5 * final_iou + 0.5 * final_dice
    penalty = bonus = 0.0
    if count > 1:
        penalty = (max(ious) - final_iou) + STEP_COST * count
        bonus = GAIN_WEIGHT * sum(max(0.0, ious[t] - ious[t - 1]) for t in range(1, count))
    quality = float(np.clip(base - penalty + bonus, 0.0, 1.0))
    score = FORMAT_WEIGHT * fmt + QUALITY_WEIGHT * quality
    return RewardBreakdown(score, fmt, quality, base, penalty, bonus, count, final_iou, final_dice)


def episode_reward_from_masks(
    actions: Sequence[Optional[Action]], masks: Sequence[np.ndarray], ground_truth: np.ndarray
) -> RewardBreakdown:
    """The reward from the mask after each box/point action and the ground truth."""
    gt = np.asarray(ground_truth, bool)
    for mask in masks:
        if np.shape(mask) != gt.shape:
            raise ValueError(f"a mask is {np.shape(mask)}, the ground truth is {gt.shape}")
    empty = np.zeros_like(gt)
    return episode_reward(
        actions, [iou(m, gt) for m in masks], [dice(m, gt) for m in masks], iou(empty, gt), dice(empty, gt)
    )


# -- text ---------------------------------------------------------------------------------------------------
def parse_actions(text: str) -> list[Optional[Action]]:
    """Every ``<tool_call>`` block of ``text`` in order, in 0..999 model coordinates; an unusable block is
    ``None``. Without any tag: the untagged ``{"name": ..., "arguments": ...}`` objects (tags stripped as special
    tokens), else legacy ``add_positive_point`` text."""
    from .toolcall import ToolCallError, parse_model_action

    blocks = [m.group(0) for m in _TOOL_CALL.finditer(text or "")]
    if not blocks:
        untagged = untagged_calls(text or "")
        if untagged:
            return untagged
        try:
            return [parse_model_action(text)]
        except ToolCallError:
            return []
    actions: list[Optional[Action]] = []
    for block in blocks:
        try:
            actions.append(parse_model_action(block))
        except ToolCallError:
            actions.append(None)
    return actions


def untagged_calls(text: str) -> list[Optional[Action]]:
    """The JSON objects of ``text`` that name a tool call (keys ``name`` and ``arguments``), in order."""
    decoder, out, index = json.JSONDecoder(), [], 0
    while True:
        index = text.find("{", index)
        if index < 0:
            return out
        try:
            value, end = decoder.raw_decode(text, index)
        except json.JSONDecodeError:
            index += 1
            continue
        if isinstance(value, dict) and "name" in value and "arguments" in value:
            out.append(call_action(value))
            index = end
        else:
            index += 1


def call_action(call: Any) -> Optional[Action]:
    """A parsed call ``{"name", "arguments"}`` (or an OpenAI/TRL ``{"type": "function", "function": {...}}``)
    -> its action, ``None`` when unusable."""
    from .toolcall import ToolCallError, action_from_call

    if isinstance(call, dict) and isinstance(call.get("function"), dict):
        call = call["function"]
    if not isinstance(call, dict):
        return None
    try:
        return action_from_call(call)
    except ToolCallError:
        return None


def actions_from_turns(turns: Sequence[str]) -> list[Optional[Action]]:
    """Every call of every assistant turn, in order; ``None`` for a turn without a usable call."""
    out: list[Optional[Action]] = []
    for text in turns:
        out += parse_actions(text) or [None]
    return out


# -- decoding what the trainers carry -----------------------------------------------------------------------
MaskLike = Union[np.ndarray, bytes, dict]


def decode_mask_like(value: MaskLike) -> np.ndarray:
    """A mask given as an array, PNG bytes, or a ``{"bytes": ...}`` struct (parquet) -> HxW bool."""
    if isinstance(value, dict):
        value = value.get("bytes")
    if isinstance(value, (bytes, bytearray, memoryview)):
        from PIL import Image

        with Image.open(io.BytesIO(bytes(value))) as image:
            array = np.asarray(image)
        if array.ndim == 3:
            array = array[..., 0]
        return array > 0
    if value is None:
        raise ValueError("no ground-truth mask given")
    array = np.asarray(value)
    return array > 0 if array.dtype != bool else array


def decode_image_like(value: Union[np.ndarray, bytes, dict]) -> np.ndarray:
    """An engine image given as an array, PNG bytes or ``{"bytes": ...}`` -> HxWx3 uint8."""
    if isinstance(value, dict):
        value = value.get("bytes")
    if isinstance(value, (bytes, bytearray, memoryview)):
        from PIL import Image

        with Image.open(io.BytesIO(bytes(value))) as image:
            return np.asarray(image.convert("RGB"))
    return np.asarray(value, dtype=np.uint8)


def replay_masks(tool, image: np.ndarray, model_actions: Sequence[Optional[Action]]) -> list[np.ndarray]:
    """Run the box/point actions (0..999 model coordinates) through ``tool`` on the engine image with the RL
    environment's rule (``training.environment``, the session's update rule) and return the mask after each.
    Stops at the first stop action; ``None`` entries (unusable calls) are skipped."""
    from .training.environment import SegmentationEnvironment, Task

    environment = SegmentationEnvironment(tool)
    environment.reset(Task(image, np.zeros(image.shape[:2], bool)))
    for action in model_actions:
        if isinstance(action, Stop):
            break
        if isinstance(action, (Box, Point)):
            environment.apply(action)
    return environment.masks


_warned_format_only = False


def _score(actions: list[Optional[Action]], ground_truth: Any, info: dict, tool=None) -> RewardBreakdown:
    """The reward of parsed actions with whatever mask information the trainer carried (see module doc)."""
    global _warned_format_only
    # only the actions up to and including the first stop belong to the episode
    for index, action in enumerate(actions):
        if isinstance(action, Stop):
            actions = actions[: index + 1]
            break
    if info.get("calls") is not None:  # the environment applied only these: a call left unanswered (the trainer's
        actions = _first_usable(actions, int(info["calls"]))  # turn limit) is not part of the episode
    count = sum(1 for a in actions if isinstance(a, (Box, Point)))
    if info.get("ious") is not None and info.get("dices") is not None:
        return episode_reward(actions, list(info["ious"])[:count], list(info["dices"])[:count])
    gt = decode_mask_like(ground_truth if ground_truth is not None else info.get("mask"))
    if info.get("masks") is not None:
        masks = [decode_mask_like(m) for m in list(info["masks"])[:count]]
        return episode_reward_from_masks(actions, masks, gt)
    image = info.get("engine_image")
    tool = tool or _REPLAY_TOOL
    if tool is not None and image is not None:
        return episode_reward_from_masks(actions, replay_masks(tool, decode_image_like(image), actions), gt)
    if count and not _warned_format_only:
        _warned_format_only = True
        warnings.warn("reward: no per-turn IoU/Dice, masks or replay tool given; the episode is scored as having "
                      "no mask (0.2 F only). Pass extra_info['ious'/'dices'] from the environment.", stacklevel=3)
    return episode_reward_from_masks(actions, [np.zeros_like(gt)] * count, gt)


def _first_usable(actions: list[Optional[Action]], count: int) -> list[Optional[Action]]:
    """``actions`` up to the ``count``-th usable one (unusable ``None`` entries on the way are kept)."""
    out, usable = [], 0
    for action in actions:
        if action is not None:
            if usable == count:
                break
            usable += 1
        out.append(action)
    return out


# -- verl ---------------------------------------------------------------------------------------------------
_REPLAY_TOOL = None


def set_replay_tool(tool) -> None:
    """Let ``compute_score`` replay actions through ``tool`` when ``extra_info`` carries only the image."""
    global _REPLAY_TOOL
    _REPLAY_TOOL = tool


_NAMED_TOOLS: dict = {}


def named_replay_tool(name: str, checkpoint: Optional[str] = None):
    """A registry tool built once per process (verl's ``reward_kwargs: {replay_tool: NAME}``)."""
    key = (name, checkpoint)
    if key not in _NAMED_TOOLS:
        from .registry import make_tool

        _NAMED_TOOLS[key] = make_tool(name, checkpoint=checkpoint, device="cpu")
    return _NAMED_TOOLS[key]


def compute_score(data_source: str, solution_str: str, ground_truth: Any, extra_info: Optional[dict] = None,
                  replay_tool: Optional[str] = None, replay_checkpoint: Optional[str] = None, **_: Any) -> float:
    """verl custom reward function (``custom_reward_function.path`` = this file, ``name`` = compute_score).

    ``solution_str`` is the rollout's text: every ``<tool_call>`` in it is one turn's call, in order.
    ``ground_truth`` is the mask (PNG bytes, as ``reward_model.ground_truth`` in the exported parquet).
    ``extra_info`` carries the environment's per-action ``ious``/``dices`` or ``masks``, or the
    ``engine_image`` for replay (see the module docstring); ``replay_tool`` names the registry tool to replay
    through (verl: ``custom_reward_function.reward_kwargs``) when there are no per-turn IoU/Dice."""
    info = dict(extra_info or {})
    tool = None
    if replay_tool and (info.get("ious") is None or info.get("dices") is None) and info.get("masks") is None:
        tool = named_replay_tool(replay_tool, replay_checkpoint)
    return _score(parse_actions(solution_str), ground_truth, info, tool).score


# -- TRL ----------------------------------------------------------------------------------------------------
def _completion_actions(completion: Any) -> list[Optional[Action]]:
    """A TRL completion: plain text, or a list of messages (conversational). An assistant message's calls are
    its ``tool_calls`` (TRL's tool-calling mode parses them out of the text), else those in its text. Calls
    that got no ``tool`` answer (the rollout hit the trainer's turn limit) were never applied: left out."""
    if isinstance(completion, str):
        return parse_actions(completion)
    out: list[Optional[Action]] = []
    for index, message in enumerate(completion):
        if message.get("role") != "assistant":
            continue
        if message.get("tool_calls"):
            answers = 0
            for following in completion[index + 1:]:
                if following.get("role") != "tool":
                    break
                answers += 1
            out += [call_action(call) for call in message["tool_calls"][:answers]]
            continue
        content = message.get("content")
        if isinstance(content, list):  # content parts
            content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
        out += parse_actions(content or "") or [None]
    return out


def make_trl_reward(tool=None) -> Callable[..., list[float]]:
    """A TRL GRPO reward function. Dataset columns arrive as keyword lists, one entry per completion:
    ``ground_truth`` (or ``mask``) and optionally ``ious``/``dices``, ``masks`` or ``engine_image``; with
    ``tool`` given and ``engine_image`` present the actions are replayed through it. In TRL's multi-turn mode
    (``environment_factory``) the ``environments`` that ran the calls give the IoU/Dice they recorded."""

    def medsam_agent_reward(prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> list[float]:
        scores = []
        environments = kwargs.get("environments")
        for i, completion in enumerate(completions):
            info = {key: (value[i] if isinstance(value, (list, tuple)) else value)
                    for key, value in kwargs.items()
                    if key in ("ious", "dices", "masks", "engine_image", "mask", "ground_truth")}
            if environments is not None:
                episode = getattr(environments[i], "episode", environments[i])
                info["ious"], info["dices"] = list(episode.ious), list(episode.dices)
                info["calls"] = len(episode.actions)
            gt = info.pop("ground_truth", None)
            scores.append(_score(_completion_actions(completion), gt, info, tool).score)
        return scores

    return medsam_agent_reward


reward_func = make_trl_reward()  # TRL: GRPOTrainer(reward_funcs=[reward_func], ...) with ious/dices columns

__all__ = [
    "RewardBreakdown", "actions_from_turns", "compute_score", "episode_reward", "episode_reward_from_masks",
    "call_action", "format_score", "make_trl_reward", "named_replay_tool", "parse_actions", "replay_masks",
    "reward_func", "set_replay_tool", "untagged_calls",
]

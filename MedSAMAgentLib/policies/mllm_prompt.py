"""The MedSAM-Agent conversation: what the multimodal policy is shown, turn by turn (AGENT_PROTOCOL.md,
"Observation" and "Action space").

One place for the system prompt, the tool schemas, the user texts and the images the policy sees, so the
policy (in-process or served) and the trajectory export for fine-tuning build exactly the same conversation.

- The model image is the 2D image letterboxed to 512x512 (``geometry.Letterbox``, centred black padding).
- After the first action it carries the current mask blended in pure green at alpha 0.5 *inside the mask only*:
  the image and the mask are both letterboxed to 512x512 (the mask resized bilinearly and thresholded at half),
  then each mask pixel becomes ``(pixel + green) // 2`` (0.5 * image + 0.5 * green, rounded down); every other
  pixel is unchanged. Nothing else (contours, clicks, text of the clinician's display) is drawn.
- The system prompt follows the Hermes / Qwen tool format: the three tool schemas as JSON lines inside
  ``<tools></tools>`` and the ``<tool_call>`` instruction, as Qwen's chat template renders ``tools``.
- Assistant turns are the tool-call text of the action actually applied: the model's own answer when the
  action came from it, ``toolcall.format_tool_call`` otherwise (a clinician's hint or override).

Messages are plain dicts; user content is a list of parts ``{"type": "image", "image": HxWx3 uint8}`` and
``{"type": "text", "text": ...}`` (image first), system and assistant content are strings. Backends translate
the parts to their own form; ``split_images`` gives the ``<image>``-placeholder form of LLaMA-Factory.
"""

from __future__ import annotations

import json
from typing import Any, Optional, Sequence

import numpy as np

from ..actions import Action
from ..colors import MODEL_MASK_GREEN
from ..geometry import MODEL_IMAGE_SIZE, Letterbox
from ..toolcall import format_tool_call

GREEN = np.array(MODEL_MASK_GREEN, dtype=np.uint16)
HISTORY_TURNS = 5  # previous user/assistant turns kept in the conversation (images included)
MAX_NEW_TOKENS = 128  # the protocol's generation limit; decoding is greedy

TOOL_SCHEMAS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "add_bbox",
            "description": "Draw a bounding box around the target to create the mask, or to start it again.",
            "parameters": {
                "type": "object",
                "properties": {
                    "bbox_2d": {
                        "type": "array",
                        "items": {"type": "integer"},
                        "minItems": 4,
                        "maxItems": 4,
                        "description": "The box as [x1, y1, x2, y2], integers in [0, 999] relative to the image",
                    }
                },
                "required": ["bbox_2d"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "add_point",
            "description": "Click on the image to correct the mask: a positive point adds the region under it, "
            "a negative point removes it.",
            "parameters": {
                "type": "object",
                "properties": {
                    "point_2d": {
                        "type": "array",
                        "items": {"type": "integer"},
                        "minItems": 2,
                        "maxItems": 2,
                        "description": "The point as [x, y], integers in [0, 999] relative to the image",
                    },
                    "point_type": {
                        "type": "string",
                        "enum": ["positive", "negative"],
                        "description": "'positive' to add the region to the mask, 'negative' to remove it",
                    },
                },
                "required": ["point_2d", "point_type"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "stop_action",
            "description": "Finish: the green mask covers the target accurately.",
            "parameters": {"type": "object", "properties": {}, "required": []},
        },
    },
]

PERSONA = (
    "You are an expert annotator of medical images who creates and refines segmentation masks. "
    "Your task is to segment the target region that the user specifies in the image. "
    "There is no initial mask: first create one with a tool, then refine it step by step until it is accurate "
    "to the pixel. The current mask is shown as a semi-transparent green overlay; make it cover the whole "
    "target region and nothing else (no background, no neighbouring structures)."
)


def tools_block(tools: Sequence[dict] = TOOL_SCHEMAS) -> str:
    """The Hermes tool section, one JSON schema per line as Qwen's template writes ``tool | tojson``."""
    lines = "\n".join(json.dumps(tool, ensure_ascii=False) for tool in tools)
    return (
        "# Tools\n\n"
        "You must call exactly one function per turn.\n\n"
        "You are provided with function signatures within <tools></tools> XML tags:\n"
        f"<tools>\n{lines}\n</tools>\n\n"
        "For each function call, return a json object with function name and arguments within "
        "<tool_call></tool_call> XML tags:\n"
        "<tool_call>\n"
        '{"name": <function-name>, "arguments": <args-json-object>}\n'
        "</tool_call>"
    )


SYSTEM_PROMPT = f"{PERSONA}\n\n{tools_block()}"
FOLLOW_UP_TEXT = (
    "Here is the updated mask after your previous action. Based on this, what is your next action? "
    "If the mask is now accurate, you can call 'stop_action' to finish."
)


def first_user_text(target: str) -> str:
    """The first user turn's text (after the image)."""
    return f"The target to segment is: {target.strip()}. Look at the image and choose your first action."


# -- images -------------------------------------------------------------------------------------------------
def observation_image(image: np.ndarray, mask: Optional[np.ndarray] = None,
                      size: int = MODEL_IMAGE_SIZE) -> np.ndarray:
    """The size x size RGB image the policy sees: the letterboxed image, with ``mask`` blended in green."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"the policy image must be HxWx3 uint8, got {image.shape} {image.dtype}")
    letterbox = Letterbox(*image.shape[:2])
    base = letterbox.apply(image, size)
    if mask is None:
        return base
    if mask.shape != image.shape[:2]:
        raise ValueError(f"mask is {mask.shape}, image is {image.shape[:2]}")
    inside = model_mask(mask, size)
    out = base.copy()
    out[inside] = ((base[inside].astype(np.uint16) + GREEN) // 2).astype(np.uint8)
    return out


def model_mask(mask: np.ndarray, size: int = MODEL_IMAGE_SIZE) -> np.ndarray:
    """``mask`` in the model image's frame (letterboxed, resized, thresholded at half): where green goes."""
    letterbox = Letterbox(*mask.shape[:2])
    return letterbox.apply(np.asarray(mask, bool).astype(np.uint8) * 255, size) >= 128


# -- the conversation ---------------------------------------------------------------------------------------
def user_turn(image: np.ndarray, text: str) -> dict:
    return {"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": text}]}


def build_messages(
    image: np.ndarray,
    target: str,
    applied_actions: Sequence[Action] = (),
    masks: Sequence[np.ndarray] = (),
    assistant_texts: Optional[Sequence[Optional[str]]] = None,
    history_turns: Optional[int] = HISTORY_TURNS,
) -> list[dict]:
    """The conversation that asks for the next action after ``applied_actions``.

    ``masks[i]`` is the mask after ``applied_actions[i]``; ``assistant_texts[i]`` (optional, None entries
    allowed) is the model's own answer for that action, otherwise its ``format_tool_call`` text is used.
    ``history_turns`` keeps that many previous turns (None: all, e.g. for export). For a complete training
    sample of an episode that ended with stop, append ``assistant_message(Stop(), letterbox)``.
    """
    if not target or not target.strip():
        raise ValueError("the policy needs a target description (e.g. 'liver in abdominal CT')")
    if len(masks) != len(applied_actions):
        raise ValueError(f"{len(applied_actions)} actions but {len(masks)} masks: need the mask after each action")
    texts = list(assistant_texts or [])
    letterbox = Letterbox(*image.shape[:2])
    turns: list[tuple[dict, Optional[dict]]] = []
    for k in range(len(applied_actions) + 1):
        if k == 0:
            user = user_turn(observation_image(image), first_user_text(target))
        else:
            user = user_turn(observation_image(image, masks[k - 1]), FOLLOW_UP_TEXT)
        answer = None
        if k < len(applied_actions):
            text = texts[k] if k < len(texts) else None
            answer = {"role": "assistant", "content": text or format_tool_call(applied_actions[k], letterbox)}
        turns.append((user, answer))
    previous, current = turns[:-1], turns[-1][0]
    if history_turns is not None:
        previous = previous[max(len(previous) - history_turns, 0) :] if history_turns > 0 else []
    messages: list[dict] = [{"role": "system", "content": SYSTEM_PROMPT}]
    for user, answer in previous:
        messages += [user, answer]
    messages.append(current)
    return messages


def assistant_message(action: Action, letterbox: Letterbox) -> dict:
    """An assistant turn holding ``action`` in the model's tool-call text."""
    return {"role": "assistant", "content": format_tool_call(action, letterbox)}


def split_images(messages: Sequence[dict], placeholder: str = "<image>") -> tuple[list[dict], list[np.ndarray]]:
    """Messages with text-only content (each image replaced by ``placeholder``) and the images in order:
    the ShareGPT / LLaMA-Factory multimodal form."""
    flat, images = [], []
    for message in messages:
        content = message["content"]
        if isinstance(content, str):
            flat.append({"role": message["role"], "content": content})
            continue
        text = ""
        for part in content:
            if part["type"] == "image":
                images.append(part["image"])
                text += placeholder
            else:
                text += part["text"]
        flat.append({"role": message["role"], "content": text})
    return flat, images


__all__ = [
    "FOLLOW_UP_TEXT", "GREEN", "HISTORY_TURNS", "MAX_NEW_TOKENS", "SYSTEM_PROMPT", "TOOL_SCHEMAS",
    "assistant_message", "build_messages", "first_user_text", "model_mask", "observation_image",
    "split_images", "tools_block",
]

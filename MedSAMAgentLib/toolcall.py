"""The text form of actions: ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` both ways.

Parsing follows AGENT_PROTOCOL.md: only the first call counts, coordinates are integers in 0..999 of the
model image (clamped), and the older ``add_positive_point`` / ``add_negative_point`` form is accepted.
Anything else raises ``ToolCallError`` with a message naming what is wrong; nothing else escapes.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from .actions import Action, Box, Point, Stop
from .geometry import MODEL_SCALE, Letterbox

TOOL_NAMES = ("add_bbox", "add_point", "stop_action")
LEGACY_POINT_NAMES = {"add_positive_point": True, "add_negative_point": False}

_OPEN, _CLOSE = "<tool_call>", "</tool_call>"
_LEGACY_TEXT = re.compile(r"(add_positive_point|add_negative_point)\s*[\{\(\[]\s*([^\}\)\]]*)[\}\)\]]")


class ToolCallError(ValueError):
    """The model's answer holds no usable tool call; the message says why."""


def format_tool_call(action: Action, letterbox: Letterbox) -> str:
    """The assistant text for ``action`` (pixel coordinates) as the released policy emits it."""
    if isinstance(action, Box):
        call = {"name": "add_bbox", "arguments": letterbox.action_to_model(action)}
    elif isinstance(action, Point):
        call = {"name": "add_point", "arguments": letterbox.action_to_model(action)}
    else:
        call = {"name": "stop_action", "arguments": {}}
    return f"{_OPEN}\n{json.dumps(call)}\n{_CLOSE}"


def parse_tool_call(text: str, letterbox: Letterbox) -> Action:
    """The first tool call in ``text``, mapped to image pixels. Raises ``ToolCallError``."""
    return letterbox.action_from_model(parse_model_action(text))


def parse_model_action(text: Any) -> Action:
    """The first tool call in ``text`` with its coordinates still in 0..999 model space."""
    if not isinstance(text, str):
        raise ToolCallError(f"expected the model's text answer, got {type(text).__name__}")
    if not text.strip():
        raise ToolCallError("the model's answer is empty")
    start = text.find(_OPEN)
    if start < 0:
        legacy = _LEGACY_TEXT.search(text)
        if legacy:
            return _legacy_point(legacy.group(1), legacy.group(2))
        raise ToolCallError(f"no {_OPEN} in the model's answer: {_snippet(text)}")
    body = text[start + len(_OPEN) :]
    end = body.find(_CLOSE)
    if end >= 0:
        body = body[:end]
    body = body.strip()
    legacy = _LEGACY_TEXT.match(body)
    if legacy:
        return _legacy_point(legacy.group(1), legacy.group(2))
    try:
        call, _ = json.JSONDecoder().raw_decode(body)
    except json.JSONDecodeError as error:
        raise ToolCallError(f"tool call is not valid JSON ({error.msg}): {_snippet(body)}") from None
    if not isinstance(call, dict):
        raise ToolCallError(f"tool call must be a JSON object, got {_snippet(body)}")
    return action_from_call(call)


def action_from_call(call: dict) -> Action:
    """A parsed call ``{"name": ..., "arguments": ...}`` -> its action in 0..999 model coordinates (the tagged
    text, TRL's ``tool_calls`` and the RL environment's calls all end here); ``ToolCallError`` if unusable."""
    name = call.get("name")
    args = call.get("arguments", {})
    if isinstance(args, str):  # some servers double-encode the arguments
        try:
            args = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError:
            raise ToolCallError(f"arguments of {name!r} are not valid JSON: {_snippet(args)}") from None
    if not isinstance(args, dict):
        raise ToolCallError(f"arguments of {name!r} must be an object, got {_snippet(str(args))}")
    if name == "stop_action":
        return Stop()
    if name == "add_bbox":
        x1, y1, x2, y2 = _coords(args.get("bbox_2d"), 4, "bbox_2d")
        return Box(x1, y1, x2, y2)
    if name == "add_point":
        x, y = _coords(args.get("point_2d"), 2, "point_2d")
        kind = args.get("point_type")
        if kind not in ("positive", "negative"):
            raise ToolCallError(f"point_type must be 'positive' or 'negative', got {kind!r}")
        return Point(x, y, kind == "positive")
    if name in LEGACY_POINT_NAMES:
        value = args.get("point_2d", [args.get("x"), args.get("y")])
        x, y = _coords(value, 2, "point")
        return Point(x, y, LEGACY_POINT_NAMES[name])
    raise ToolCallError(f"unknown tool {name!r}; expected one of {', '.join(TOOL_NAMES)}")


def _legacy_point(name: str, inner: str) -> Point:
    values = re.findall(r"-?\d+(?:\.\d+)?", inner)  # "{12, 34}", "{x: 12, y: 34}", "(12,34)"
    x, y = _coords(values, 2, name)
    return Point(x, y, LEGACY_POINT_NAMES[name])


def _coords(value: Any, count: int, what: str) -> list[int]:
    if not isinstance(value, (list, tuple)) or len(value) != count:
        raise ToolCallError(f"{what} must be a list of {count} numbers, got {value!r}")
    out = []
    for v in value:
        try:
            number = float(v)
        except (TypeError, ValueError):
            raise ToolCallError(f"{what} holds a non-number {v!r}") from None
        if not math.isfinite(number):
            raise ToolCallError(f"{what} holds a non-finite value {v!r}")
        out.append(int(min(max(round(number), 0), MODEL_SCALE - 1)))
    return out


def _snippet(text: str, limit: int = 80) -> str:
    text = " ".join(text.split())
    return repr(text if len(text) <= limit else text[:limit] + "...")

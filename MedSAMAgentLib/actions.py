"""The agent's action space as plain dataclasses, in image pixel coordinates.

Pixel coordinates are (x = column, y = row) of the 2D image the engine works on; integer values are pixel
centres. Conversion to the protocol's 0..999 model space lives in ``geometry.Letterbox``; the text form lives
in ``toolcall``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, Union


@dataclass(frozen=True)
class Box:
    """A box prompt: start (or restart) the mask from this rectangle. Corners are inclusive pixel indices."""

    x1: float
    y1: float
    x2: float
    y2: float
    kind: Literal["box"] = "box"

    def __post_init__(self) -> None:
        _check_finite("box", self.x1, self.y1, self.x2, self.y2)
        x1, x2 = sorted((float(self.x1), float(self.x2)))
        y1, y2 = sorted((float(self.y1), float(self.y2)))
        object.__setattr__(self, "x1", x1)
        object.__setattr__(self, "x2", x2)
        object.__setattr__(self, "y1", y1)
        object.__setattr__(self, "y2", y2)

    def as_list(self) -> list[float]:
        return [self.x1, self.y1, self.x2, self.y2]


@dataclass(frozen=True)
class Point:
    """A click: positive adds the region under it, negative removes it."""

    x: float
    y: float
    positive: bool
    kind: Literal["point"] = "point"

    def __post_init__(self) -> None:
        _check_finite("point", self.x, self.y)

    @property
    def label(self) -> str:
        return "positive" if self.positive else "negative"

    def flipped(self) -> "Point":
        return Point(self.x, self.y, not self.positive)


@dataclass(frozen=True)
class Stop:
    """The mask is done."""

    kind: Literal["stop"] = "stop"


Action = Union[Box, Point, Stop]


def _check_finite(kind: str, *values: float) -> None:
    """Every action is checked once, where it is made: coordinates must be finite numbers."""
    try:
        ok = all(math.isfinite(float(v)) for v in values)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"a {kind} needs finite pixel coordinates, got {', '.join(map(repr, values))}")


def describe(action: Action) -> str:
    """A short human-readable form, for logs, tables and the terminal."""
    if isinstance(action, Box):
        return f"box ({action.x1:.0f},{action.y1:.0f})-({action.x2:.0f},{action.y2:.0f})"
    if isinstance(action, Point):
        return f"{action.label} click ({action.x:.0f},{action.y:.0f})"
    return "stop"


def action_to_dict(action: Action) -> dict[str, Any]:
    """JSON-ready form used by the trajectory log."""
    if isinstance(action, Box):
        return {"type": "box", "box": action.as_list()}
    if isinstance(action, Point):
        return {"type": "point", "point": [action.x, action.y], "label": action.label}
    return {"type": "stop"}


def action_from_dict(data: dict[str, Any]) -> Action:
    kind = data.get("type")
    if kind == "box":
        return Box(*data["box"])
    if kind == "point":
        return Point(data["point"][0], data["point"][1], data["label"] == "positive")
    if kind == "stop":
        return Stop()
    raise ValueError(f"unknown action type {kind!r} in {data!r}")

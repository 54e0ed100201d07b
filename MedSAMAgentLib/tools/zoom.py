"""Zoom: a small structure's box is also segmented on a square crop around it, seen at a larger scale.

LiteMedSAM sees every image at 256 pixels, so a structure 20 pixels across spans a handful of the encoder's
64x64 tokens and its box often yields an empty or wrong mask. On a crop twice the box's side the same
structure fills half of the input. The crop is not always better (an organ the full view already
segments well can lose its edge), so the tool keeps the crop's mask only when it fits the box better: a box
touches its structure on all four sides, so the mask whose bounding box matches the prompt's (``box_fit``)
is the likelier one. Chosen by leave-datasets-out measurement on ../shared/data (README).
The box-fit test assumes a person's box, so the agent's boxes stay on the whole view (``whole_view``, entered
by ``Session._apply`` for an accepted box and by the built-in policy's search around a click): a policy's box
is a guess with a margin, and the volume session's propagated box is the neighbour's plus 3 px (zoomed, the
bundled volume fell from 0.93 to 0.67 Dice); the search would pay a crop embedding per candidate.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, replace
from typing import Optional, Sequence

import numpy as np

from ..actions import Action, Box, Point
from .base import Prediction

# chosen by Testing/benchmarks/choose_zoom.py leave-datasets-out (ground-truth and jittered boxes), README
ZOOM_FACTOR = 2.0  # crop side / the box's longest side
ZOOM_MIN_SIDE = 32  # image pixels: a crop is never smaller (too little context around a tiny box)
ZOOM_FIT_MARGIN = 0.0  # the crop's mask is kept when its box fit exceeds the whole view's by more than this


@dataclass(frozen=True)
class Window:
    """A crop of the image: columns x0 .. x0+width, rows y0 .. y0+height (image pixels)."""

    x0: int
    y0: int
    width: int
    height: int

    def contains(self, x: float, y: float) -> bool:
        return self.x0 <= x <= self.x0 + self.width - 1 and self.y0 <= y <= self.y0 + self.height - 1

    def crop(self, image: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(image[self.y0:self.y0 + self.height, self.x0:self.x0 + self.width])

    def paste(self, part: np.ndarray, shape: tuple[int, int], fill=0) -> np.ndarray:
        """``part`` (the crop's size) placed in an array of ``shape``, ``fill`` elsewhere."""
        out = np.full(shape, fill, dtype=part.dtype)
        out[self.y0:self.y0 + self.height, self.x0:self.x0 + self.width] = part
        return out

    def into(self, action: Action) -> Action:
        """``action`` in the crop's coordinates."""
        if isinstance(action, Box):
            return Box(action.x1 - self.x0, action.y1 - self.y0, action.x2 - self.x0, action.y2 - self.y0)
        if isinstance(action, Point):
            return replace(action, x=action.x - self.x0, y=action.y - self.y0)
        return action

    def paste_prediction(self, part: Prediction, shape: tuple[int, int]) -> Prediction:
        """The crop's prediction as one of the whole image (the low-resolution logits stay the crop's)."""
        probability = None if part.probability is None else self.paste(np.asarray(part.probability, np.float32),
                                                                       shape, 0.0)
        return Prediction(mask=self.paste(np.asarray(part.mask, bool), shape, False), logits=part.logits,
                          score=part.score, probability=probability, repaired_click=part.repaired_click)

    @property
    def tag(self) -> str:
        return f"@{self.x0},{self.y0},{self.width},{self.height}"


def zoom_window(box: Box, shape: tuple[int, int], factor: float = ZOOM_FACTOR,
                min_side: int = ZOOM_MIN_SIDE) -> Optional[Window]:
    """The square crop centred on ``box`` (shifted to stay inside the image); None when it would not be smaller
    than the image's longest side, i.e. no zoom to be had."""
    h, w = shape
    side = int(round(max((max(box.x2 - box.x1, box.y2 - box.y1) + 1) * factor, min_side)))
    if side >= max(h, w):
        return None
    width, height = min(side, w), min(side, h)
    cx, cy = (box.x1 + box.x2) / 2, (box.y1 + box.y2) / 2
    x0 = int(np.clip(round(cx - width / 2), 0, w - width))
    y0 = int(np.clip(round(cy - height / 2), 0, h - height))
    return Window(x0, y0, width, height)


def box_fit(mask: np.ndarray, box: Box) -> float:
    """IoU of ``mask``'s bounding box with ``box`` (0 for an empty mask): how well the mask spans its prompt."""
    ys, xs = np.nonzero(mask)
    if not len(xs):
        return 0.0
    ix = max(0.0, min(xs.max(), box.x2) - max(xs.min(), box.x1) + 1)
    iy = max(0.0, min(ys.max(), box.y2) - max(ys.min(), box.y1) + 1)
    inter = ix * iy
    own = (xs.max() - xs.min() + 1) * (ys.max() - ys.min() + 1)
    prompt = (box.x2 - box.x1 + 1) * (box.y2 - box.y1 + 1)
    return float(inter / (own + prompt - inter))


def all_inside(window: Window, clicks: Sequence[Point]) -> bool:
    return all(window.contains(c.x, c.y) for c in clicks)


def whole_view(tool):
    """A context in which ``tool``'s boxes are segmented on the whole image, and stay so for the clicks after
    them; for a tool that does not zoom, nothing."""
    view = getattr(tool, "whole_view", None)
    return view() if callable(view) else contextlib.nullcontext()

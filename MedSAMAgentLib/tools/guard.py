"""What every tool's input and output must satisfy, checked in one place (``registry.make_tool`` wraps each
tool it builds in ``GuardedTool``).

Input: every box/point lies inside the image (pixel centres 0..W-1, 0..H-1; finite coordinates are
already enforced by ``actions``). Output: a positive click always ends in the mask. A model that ignores a
click (LiteMedSAM was trained with boxes only, and a single click often gives it an empty mask) has its mask
repaired: the connected part of the candidate mask that holds the click is added, or, when no candidate
holds it, a small disk around the click (``CLICK_DISK_FRACTION`` of the image's longer side, at least
``CLICK_DISK_MIN`` pixels). The repair is marked on the prediction (``repaired_click``), so it is never silent.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np

from ..actions import Action, Box, Point
from .base import Prediction, SegmentationTool

CLICK_DISK_FRACTION = 0.01
CLICK_DISK_MIN = 2


def check_inside(action: Action, height: int, width: int) -> None:
    """``ValueError`` naming the prompt when a box or point lies outside the ``width`` x ``height`` image."""
    if isinstance(action, Box):
        xs, ys = (action.x1, action.x2), (action.y1, action.y2)
    elif isinstance(action, Point):
        xs, ys = (action.x,), (action.y,)
    else:
        return
    if min(xs) < 0 or max(xs) > width - 1 or min(ys) < 0 or max(ys) > height - 1:
        raise ValueError(f"prompt {action} lies outside the {width}x{height} image (x 0..{width - 1}, "
                         f"y 0..{height - 1})")


def ensure_click_in_mask(prediction: Prediction, click: Point) -> Prediction:
    """``prediction`` with the positive ``click``'s pixel in its mask (see the module docstring)."""
    from scipy import ndimage

    mask = prediction.mask
    row, col = int(round(click.y)), int(round(click.x))
    if not click.positive or mask[row, col]:
        return prediction
    added = None
    for candidate in prediction.candidates:
        if candidate.shape == mask.shape and candidate[row, col]:
            labels, _ = ndimage.label(candidate)
            added = labels == labels[row, col]
            break
    if added is None:
        radius = max(CLICK_DISK_MIN, CLICK_DISK_FRACTION * max(mask.shape))
        rows, cols = np.ogrid[: mask.shape[0], : mask.shape[1]]
        added = (rows - row) ** 2 + (cols - col) ** 2 <= radius**2
    repaired = mask | added
    probability = prediction.probability
    if probability is not None:
        probability = np.where(added, np.maximum(probability, 0.5), probability)
    return Prediction(repaired, prediction.logits, prediction.score, list(prediction.candidates), probability,
                      repaired_click=True)


class GuardedTool:
    """A tool with ``check_inside`` on its input and ``ensure_click_in_mask`` on its output; everything else
    (name, version, caches, counters) is the wrapped tool's."""

    def __init__(self, tool: SegmentationTool):
        object.__setattr__(self, "inner", tool)
        object.__setattr__(self, "_shape", None)

    def set_image(self, image: np.ndarray, key: Optional[str] = None) -> None:
        self.inner.set_image(image, key=key)
        object.__setattr__(self, "_shape", tuple(image.shape[:2]))

    def predict(self, actions: Sequence[Action], previous: Optional[Prediction]) -> Prediction:
        if self._shape is not None:
            for action in actions:
                check_inside(action, *self._shape)
        prediction = self.inner.predict(actions, previous)
        prompts = [a for a in actions if isinstance(a, (Box, Point))]
        if prompts and isinstance(prompts[-1], Point):
            prediction = ensure_click_in_mask(prediction, prompts[-1])
        return prediction

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self.inner, name, value)

    def __repr__(self) -> str:
        return f"GuardedTool({self.inner!r})"

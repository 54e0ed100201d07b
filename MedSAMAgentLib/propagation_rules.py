"""How the agent carries an accepted slice's mask to the next slice, and when it proposes to stop.

A box-trained tool fills whatever box it is given, so the neighbour's mask must do two jobs: make the next
slice's prompt, and tell the agent when the structure has ended. The rules here are pure functions of the
neighbour's mask and the tool's output on the next slice, so the volume session (``propagation``), the
volume evaluation and the measurement sweep (Testing/benchmarks/sweep_propagation.py) use the very same code.

- prompt: the neighbour mask's bounding box grown by ``margin`` pixels on each side; then up to
  ``max_clicks`` clicks where the tool's mask disagrees with the neighbour's deeper than ``click_depth``
  pixels (the neighbour stands in for the ground truth: a deep disagreement is more likely the tool's error
  than the anatomy's change over one slice);
- stop: before a slice is taken, the tool's mask must still look like the same structure: overlap with the
  neighbour's mask (IoU) at least ``stop_iou``; area between ``stop_area_ratio`` and ``stop_growth`` times the
  neighbour's; the mean intensity under it within ``stop_intensity`` standard deviations of the neighbour's
  (a box tool that has run past the structure segments other tissue); the tool's confidence at least
  ``stop_score``; and the neighbour itself at least ``min_area`` pixels.

The values of ``DEFAULT_RULES`` were chosen by leave-datasets-out measurement on the 3D rows of
../shared/data (README, "3D: propagation through a volume").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from .actions import Box, Point
from .metrics import iou
from .policies.oracle import corrective_clicks, gt_box


@dataclass(frozen=True)
class PropagationRules:
    margin: int = 3  # pixels added to each side of the neighbour's bounding box
    click_depth: Optional[float] = None  # pixels; None: box only
    max_clicks: int = 1
    stop_iou: float = 0.3  # the new mask's IoU with the neighbour's, below which propagation stops
    stop_area_ratio: float = 0.0  # the new mask's area over the neighbour's, below which it stops
    stop_growth: float = float("inf")  # ... above which it stops (a box tool fills a box past the end)
    stop_intensity: float = float("inf")  # mean intensity change under the mask, in the neighbour's std
    min_area: int = 0  # pixels; a neighbour smaller than this ends propagation
    stop_score: float = 0.0  # the tool's own confidence (predicted IoU), below which it stops


DEFAULT_RULES = PropagationRules(margin=3, stop_iou=0.4, stop_intensity=1.0, stop_score=0.7)


@dataclass(frozen=True)
class SliceSignal:
    """What the stop rule reads on a proposed slice."""

    iou_with_neighbour: float
    area_ratio: float
    neighbour_area: int
    score: float
    intensity_shift: float = 0.0  # |mean under the new mask - mean under the neighbour's| / neighbour's std

    def as_dict(self) -> dict:
        return {"iou_with_neighbour": round(self.iou_with_neighbour, 4), "area_ratio": round(self.area_ratio, 4),
                "neighbour_area": self.neighbour_area, "score": round(self.score, 4),
                "intensity_shift": round(self.intensity_shift, 4)}


def neighbour_box(neighbour: np.ndarray, margin: int) -> Optional[Box]:
    """The neighbour mask's bounding box grown by ``margin`` pixels, inside the image; None if it is empty."""
    if not neighbour.any():
        return None
    box, (h, w) = gt_box(neighbour), neighbour.shape
    return Box(max(0, box.x1 - margin), max(0, box.y1 - margin), min(w - 1, box.x2 + margin),
               min(h - 1, box.y2 + margin))


def neighbour_clicks(mask: np.ndarray, neighbour: np.ndarray, rules: PropagationRules) -> list[Point]:
    """Clicks where the tool's ``mask`` disagrees with the neighbour's deeper than ``rules.click_depth``: the
    oracle's click order (``corrective_clicks``) with the neighbour as its truth."""
    if rules.click_depth is None or rules.max_clicks <= 0:
        return []
    from scipy import ndimage

    clicks = []
    for click in corrective_clicks(mask, neighbour):
        region = (neighbour & ~mask) if click.positive else (mask & ~neighbour)
        depth = ndimage.distance_transform_edt(np.pad(region, 1))[1:-1, 1:-1][int(click.y), int(click.x)]
        if depth >= rules.click_depth:
            clicks.append(click)
        if len(clicks) >= rules.max_clicks:
            break
    return clicks


def slice_signal(mask: np.ndarray, neighbour: np.ndarray, score: float, image: Optional[np.ndarray] = None,
                 neighbour_image: Optional[np.ndarray] = None) -> SliceSignal:
    """The stop rule's reading of a proposed slice (images: the engine's HxWx3 uint8 slices)."""
    area = int(neighbour.sum())
    shift = 0.0
    if image is not None and neighbour_image is not None and mask.any() and area:
        before = neighbour_image[..., 0][neighbour].astype(np.float32)
        shift = abs(float(image[..., 0][mask].astype(np.float32).mean()) - float(before.mean())) / (
            float(before.std()) + 1.0)
    return SliceSignal(iou(mask, neighbour), float(mask.sum()) / max(area, 1), area, float(score), shift)


def stop_reason(signal: SliceSignal, rules: PropagationRules) -> Optional[str]:
    """Why propagation should stop before taking this slice, or None to take it."""
    if signal.neighbour_area < max(rules.min_area, 1):
        return f"the previous slice's mask has {signal.neighbour_area} pixels (< {max(rules.min_area, 1)})"
    if signal.iou_with_neighbour < rules.stop_iou:
        return (f"the mask overlaps the previous slice's by IoU {signal.iou_with_neighbour:.2f} "
                f"(< {rules.stop_iou:.2f}): the structure seems to end")
    if signal.area_ratio < rules.stop_area_ratio:
        return (f"the mask is {signal.area_ratio:.2f} of the previous slice's area (< {rules.stop_area_ratio:.2f}):"
                " the structure seems to end")
    if signal.score < rules.stop_score:
        return f"the tool's confidence is {signal.score:.2f} (< {rules.stop_score:.2f})"
    if signal.area_ratio > rules.stop_growth:
        return (f"the mask is {signal.area_ratio:.2f} times the previous slice's area (> {rules.stop_growth:.2f}):"
                " the tool seems to fill the box past the structure")
    if signal.intensity_shift > rules.stop_intensity:
        return (f"the intensity under the mask changed by {signal.intensity_shift:.2f} std of the previous "
                f"slice's (> {rules.stop_intensity:.2f}): different tissue")
    return None

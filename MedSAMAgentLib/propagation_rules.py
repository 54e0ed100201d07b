"""How the agent carries an accepted slice's mask to the next slice, and when it proposes to stop.

A box-trained tool fills whatever box it is given, so the neighbour's mask must do two jobs: make the next
slice's prompt, and tell the agent when the structure has ended. The rules here are pure functions of the
neighbour's mask and the tool's output on the next slice, so the volume session (``propagation``), the
volume evaluation and the measurement sweep (Testing/benchmarks/sweep_propagation.py) use the very same code.

- prompt: the neighbour mask's bounding box grown by ``margin`` pixels on each side (each side at most
  ``max_growth`` pixels beyond the neighbour's own prompt box, and no side longer than ``max_size`` times the
  run's start box's, when set: both off, see the README); then up to ``tighten`` times the box
  of the tool's own mask, ``margin`` pixels wider, inside the last box (``tightened_box``: where a structure
  shrinks from one slice to the next, a box tool fills the neighbour's looser box with what lies around it;
  the box never grows here, so the tightening cannot walk onto the next structure); then up to
  ``max_clicks`` clicks where the tool's mask disagrees with the neighbour's deeper than ``click_depth``
  pixels (the neighbour stands in for the ground truth: a deep disagreement is more likely the tool's error
  than the anatomy's change over one slice);
- repair: where the stop rule (below) fires on a slice the agent prompted, the agent first tries the
  neighbour mask's own box (``repair_margin`` pixels wider, not tightened) once, and stops only if that
  mask fails the rule too: a box filled with what lies around the structure reads like the structure's end;
- stop: before a slice is taken, the tool's mask must still look like the same structure: overlap with the
  neighbour's mask (IoU) at least ``stop_iou``; at least ``stop_appearance`` as much of it made of grey levels
  that, on the run's start slice (key or corrected), were commoner inside the structure than in a ring around it
  (``Appearance``: scale-free, so a structure whose brightness drifts over the slices still passes, and a mask
  filled with the surroundings past the structure's end does not); area between ``stop_area_ratio`` and
  ``stop_growth`` times the neighbour's; the mean intensity under it within ``stop_intensity`` standard
  deviations of the neighbour's and within ``stop_start_intensity`` of the start slice's; not covering more than
  ``stop_border`` of its box's edge (a box tool fills the box it is given); not ``stop_regrowth`` times the
  run's smallest mask (tapered off, then something else grows); its centre within ``stop_jump`` radii of the
  neighbour's; the tool's confidence at least ``stop_score``; and the neighbour itself at least ``min_area``
  pixels.

The values of ``DEFAULT_RULES`` were chosen on the 16 labelled 3D rows of ../shared/data and checked
leave-datasets-out (Testing/benchmarks/sweep_propagation.py for the prompt and the candidate stop rules,
``evaluate --protocol volume`` for the choice among them, which the sweep's truncated chains cannot make with the
repair; README, "3D: propagation through a volume"): the box tightened up to 3 times; stop when the mask
overlaps the neighbour's with IoU < 0.4, when less than half as much of it looks like the start's structure as
the start's own mask did, or when its mean intensity is more than 1.5 std from the start's, after one repair
with the neighbour mask's own box.
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
    # drift over the run, not just one slice: signals read against the run's start slice (key or corrected)
    stop_start_intensity: float = float("inf")  # mean intensity change under the mask, in the start's std
    stop_border: float = float("inf")  # fraction of the prompt box's inner edge the mask covers (fills its box)
    stop_regrowth: float = float("inf")  # area over the run's smallest area so far (tapered, then grows again)
    stop_jump: float = float("inf")  # centroid move over the neighbour's equivalent radius
    stop_appearance: float = 0.0  # share of the mask that looks like the start's structure, not its surroundings,
    # over the start mask's own share, below which it stops
    max_growth: Optional[int] = None  # pixels a side may move out beyond the neighbour's own prompt box
    tighten: int = 0  # times the box is re-drawn around the tool's own mask (never outside the last box)
    # where the stop rule fires on a slice the agent prompted, the neighbour mask's own box (this margin, not
    # tightened) is tried once before stopping; None: stop at once
    repair_margin: Optional[int] = None
    # no prompt box side longer than this times the run's start box's (the start slice's mask's box + margin):
    # a box tool fills the box it is given, so a leaking chain's boxes would otherwise grow slice after slice
    max_size: Optional[float] = None


DEFAULT_RULES = PropagationRules(margin=3, tighten=3, stop_iou=0.4, stop_appearance=0.5, stop_start_intensity=1.5,
                                 repair_margin=0)


@dataclass(frozen=True)
class SliceSignal:
    """What the stop rule reads on a proposed slice."""

    iou_with_neighbour: float
    area_ratio: float
    neighbour_area: int
    score: float
    intensity_shift: float = 0.0  # |mean under the new mask - mean under the neighbour's| / neighbour's std
    start_intensity_shift: float = 0.0  # the same against the run's start slice
    border: float = 0.0  # fraction of the prompt box's inner edge (image edges excluded) inside the mask
    regrowth: float = 1.0  # area over the smallest area of the run so far
    jump: float = 0.0  # centroid move / sqrt(neighbour area / pi)
    appearance: float = 1.0  # Appearance.resemblance of the new mask to the run's start slice

    def as_dict(self) -> dict:
        return {name: round(value, 4) if isinstance(value, float) else value
                for name, value in self.__dict__.items()}


@dataclass(frozen=True)
class Intensity:
    """Mean and spread of the (engine's uint8) intensity under a mask: what "the same tissue" is read against."""

    mean: float
    std: float

    @classmethod
    def under(cls, image: np.ndarray, mask: np.ndarray) -> Optional["Intensity"]:
        if not mask.any():
            return None
        values = image[..., 0][mask].astype(np.float32)
        return cls(float(values.mean()), float(values.std()))

    def shift(self, other: Optional["Intensity"]) -> float:
        """|other's mean - this mean| in this spread (+1 grey level: a flat region is not infinitely strict)."""
        return 0.0 if other is None else abs(other.mean - self.mean) / (self.std + 1.0)


@dataclass(frozen=True)
class Appearance:
    """Which grey levels look like the start slice's structure rather than what surrounds it (a ring around its
    mask). Scale-free where ``Intensity`` is not: a tumour whose mean drifts over the slices still looks more
    like tumour than like the tissue around it, while a mask past the structure's end is filled with that
    tissue."""

    structure_like: np.ndarray  # bool per grey-level bin: more frequent in the structure than in its ring
    share: float  # the start mask's own share of pixels in such bins

    BINS = 32

    @classmethod
    def of(cls, image: np.ndarray, mask: np.ndarray) -> Optional["Appearance"]:
        from scipy import ndimage

        if not mask.any():
            return None
        radius = float(np.sqrt(mask.sum() / np.pi))
        ring = ndimage.binary_dilation(mask, iterations=int(np.clip(round(0.5 * radius), 3, 15))) & ~mask
        if not ring.any():
            return None
        inside, around = (ndimage.gaussian_filter1d(np.bincount(image[..., 0][m] // (256 // cls.BINS),
                                                                minlength=cls.BINS) / m.sum(), 1.0)
                          for m in (mask, ring))
        like, seen = inside > around, np.flatnonzero(inside + around > 1e-6)
        # a grey level neither region showed takes the label of the nearest one seen: a drifted structure is
        # judged by which side of the start's contrast it lies on
        like = like[seen[np.abs(np.arange(cls.BINS)[:, None] - seen[None]).argmin(axis=1)]]
        return cls(like, cls._share(like, image, mask))

    @classmethod
    def _share(cls, like: np.ndarray, image: np.ndarray, mask: np.ndarray) -> float:
        return float(like[image[..., 0][mask] // (256 // cls.BINS)].mean()) if mask.any() else 0.0

    def resemblance(self, image: np.ndarray, mask: np.ndarray) -> float:
        """The mask's share of structure-like pixels over the start's own share (1: as much like the structure
        as the start slice; 0: all like its surroundings)."""
        return self._share(self.structure_like, image, mask) / max(self.share, 1e-6)


def neighbour_box(neighbour: np.ndarray, margin: int, previous: Optional[Box] = None,
                  max_growth: Optional[int] = None, max_size: Optional[tuple[float, float]] = None) -> Optional[Box]:
    """The neighbour mask's bounding box grown by ``margin`` pixels, inside the image; None if it is empty.
    With ``previous`` (the neighbour's own prompt box) and ``max_growth``, no side moves out more than
    ``max_growth`` pixels beyond it: a box tool fills the box it is given, so an unchecked box can grow slice
    after slice onto the next structure. ``max_size`` (width, height): a longer side is cut to it, centred on
    the neighbour mask's box."""
    if not neighbour.any():
        return None
    box, (h, w) = gt_box(neighbour), neighbour.shape
    x1, y1, x2, y2 = box.x1 - margin, box.y1 - margin, box.x2 + margin, box.y2 + margin
    if previous is not None and max_growth is not None:
        x1, y1 = max(x1, previous.x1 - max_growth), max(y1, previous.y1 - max_growth)
        x2, y2 = min(x2, previous.x2 + max_growth), min(y2, previous.y2 + max_growth)
    if max_size is not None:
        cx, cy = (box.x1 + box.x2) / 2, (box.y1 + box.y2) / 2
        if x2 - x1 + 1 > max_size[0]:
            x1, x2 = round(cx - (max_size[0] - 1) / 2), round(cx + (max_size[0] - 1) / 2)
        if y2 - y1 + 1 > max_size[1]:
            y1, y2 = round(cy - (max_size[1] - 1) / 2), round(cy + (max_size[1] - 1) / 2)
    return Box(max(0, int(x1)), max(0, int(y1)), min(w - 1, int(x2)), min(h - 1, int(y2)))


def tightened_box(mask: np.ndarray, box: Box, margin: int) -> Optional[Box]:
    """The box of ``mask`` grown by ``margin`` pixels and kept inside ``box``; None when that is ``box`` itself
    (nothing to tighten) or the mask is empty."""
    inner = neighbour_box(mask, margin)
    if inner is None:
        return None
    tight = Box(max(inner.x1, box.x1), max(inner.y1, box.y1), min(inner.x2, box.x2), min(inner.y2, box.y2))
    return None if tight.as_list() == box.as_list() else tight


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


def box_border(mask: np.ndarray, box: Optional[Box]) -> float:
    """Fraction of the box's inner edge pixels that the mask covers, the image's own edges left out: a box tool
    past the structure's end fills the box it is given, so its mask runs along the box's sides."""
    if box is None:
        return 0.0
    h, w = mask.shape
    x1, y1, x2, y2 = (int(round(v)) for v in box.as_list())
    x1, y1, x2, y2 = max(x1, 0), max(y1, 0), min(x2, w - 1), min(y2, h - 1)
    if x2 <= x1 or y2 <= y1:
        return 0.0
    sides = [mask[y1, x1:x2 + 1] if y1 > 0 else None, mask[y2, x1:x2 + 1] if y2 < h - 1 else None,
             mask[y1:y2 + 1, x1] if x1 > 0 else None, mask[y1:y2 + 1, x2] if x2 < w - 1 else None]
    edge = [side for side in sides if side is not None]
    return float(np.concatenate(edge).mean()) if edge else 0.0


def slice_signal(mask: np.ndarray, neighbour: np.ndarray, score: float, image: Optional[np.ndarray] = None,
                 neighbour_image: Optional[np.ndarray] = None, *, start: Optional[Intensity] = None,
                 box: Optional[Box] = None, smallest_area: Optional[int] = None,
                 appearance: Optional[Appearance] = None) -> SliceSignal:
    """The stop rule's reading of a proposed slice (images: the engine's HxWx3 uint8 slices; ``start``: the
    intensity under the run's start slice's mask; ``box``: the slice's prompt box; ``smallest_area``: the
    smallest mask of the run so far, the start slice's included; ``appearance``: the start slice's)."""
    area, new_area = int(neighbour.sum()), int(mask.sum())
    shift = start_shift = jump = 0.0
    resemblance = 1.0
    if image is not None and mask.any():
        here = Intensity.under(image, mask)
        if neighbour_image is not None and area:
            shift = Intensity.under(neighbour_image, neighbour).shift(here)
        if start is not None:
            start_shift = start.shift(here)
        if appearance is not None:
            resemblance = appearance.resemblance(image, mask)
    if mask.any() and area:
        moved = np.argwhere(mask).mean(axis=0) - np.argwhere(neighbour).mean(axis=0)
        jump = float(np.hypot(*moved)) / float(np.sqrt(area / np.pi))
    regrowth = new_area / max(smallest_area, 1) if smallest_area is not None else 1.0
    return SliceSignal(iou(mask, neighbour), new_area / max(area, 1), area, float(score), shift, start_shift,
                       box_border(mask, box), float(regrowth), jump, resemblance)


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
    if signal.start_intensity_shift > rules.stop_start_intensity:
        return (f"the intensity under the mask is {signal.start_intensity_shift:.2f} std from the start slice's "
                f"(> {rules.stop_start_intensity:.2f}): the chain has drifted to different tissue")
    if signal.appearance < rules.stop_appearance:
        return (f"{signal.appearance:.0%} as much of the mask looks like the start slice's structure, against "
                f"its surroundings (< {rules.stop_appearance:.0%}): the chain has left the structure")
    if signal.border > rules.stop_border:
        return (f"the mask covers {signal.border:.0%} of its box's edge (> {rules.stop_border:.0%}): the tool "
                "seems to fill the box past the structure")
    if signal.regrowth > rules.stop_regrowth:
        return (f"the mask is {signal.regrowth:.2f} times the smallest of this run (> {rules.stop_regrowth:.2f}):"
                " the structure tapered off and something else is growing")
    if signal.jump > rules.stop_jump:
        return (f"the mask's centre moved {signal.jump:.2f} radii from the previous slice's "
                f"(> {rules.stop_jump:.2f}): not the same structure")
    return None

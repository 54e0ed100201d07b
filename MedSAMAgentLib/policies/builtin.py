"""The built-in policy: needs no large model and no ground truth.

It starts from a clinician's hint (one click or one box). From a click it proposes a box: it tries square boxes
of growing size around the click with the tool and outlines the mask the tool is most confident about; then it proposes refinement clicks from the tool's own signals, in this order:
- implausible fragments: a small piece of mask apart from the main object -> negative click on it;
- holes: background enclosed by the mask -> positive click in the largest one;
- uncertainty: the largest region where the tool is unsure (probability near 0.5, or where its candidate
  masks disagree) -> a click on its deepest point that changes the tool's call there (the reviewer flips it if
  the tool was right);
and proposes stop when the tool is confident and none of these signals is left. It never proposes a click
next to an earlier one of the episode (within ``near_click`` of the image's longer side): where a click did
not settle a region, another one on the same spot will not either, so it goes to the next region.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
from scipy import ndimage

from ..actions import Box, Point, Stop
from .base import Observation, PolicyError, Proposal


@dataclass(frozen=True)
class BuiltinSettings:
    box_margin: float = 0.05  # the box from a click grows the region's bounding rectangle by this fraction
    fragment_fraction: float = 0.1  # a component smaller than this fraction of the largest is a fragment
    min_region: int = 12  # pixels; smaller holes / unsure regions are ignored
    unsure_band: float = 0.2  # |p - 0.5| below this is "unsure"
    unsure_fraction: float = 0.04  # an unsure region matters if it is at least this fraction of the mask
    stop_score: float = 0.8  # the tool's confidence needed to stop
    # half-sides (pixels at 256 px image size, scaled with the image) of the boxes tried around a click
    search_sizes: tuple[int, ...] = (6, 10, 16, 24, 36, 52, 76, 110)
    score_tie: float = 0.02  # tool scores this close count as a tie (the larger box wins)
    near_click: float = 0.02  # a click closer than this fraction of the longer side to an earlier one is "tried"


def _largest_component(mask: np.ndarray) -> tuple[np.ndarray, int]:
    labels, count = ndimage.label(mask)
    if count == 0:
        return labels, 0
    sizes = ndimage.sum_labels(mask, labels, index=np.arange(1, count + 1))
    return labels, int(np.argmax(sizes)) + 1


def _deepest_point(region: np.ndarray) -> tuple[int, int]:
    dist = ndimage.distance_transform_edt(np.pad(region, 1))[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return int(x), int(y)


class BuiltinPolicy:
    name = "builtin"
    version = "1"
    needs_hint = True

    def __init__(self, settings: Optional[BuiltinSettings] = None):
        self.settings = settings or BuiltinSettings()
        self._tried: set[tuple[int, int]] = set()
        self._near = 2.0  # pixels; set from the image size on each proposal

    def reset(self) -> None:
        self._tried = set()

    def propose(self, observation: Observation) -> Proposal:
        prediction = observation.prediction
        if prediction is None or not observation.actions:
            raise PolicyError("the built-in policy starts from your hint: place one click or one box first")
        if len(observation.actions) >= observation.max_actions:
            return Proposal(Stop(), "action limit reached", self.name)
        for action in observation.actions:
            if isinstance(action, Point):
                self._tried.add((int(round(action.x)), int(round(action.y))))
        mask = prediction.mask
        self._near = max(2.0, self.settings.near_click * max(mask.shape))
        if not any(isinstance(a, Box) for a in observation.actions):
            box = self._box_from_click(mask, observation)
            if box is not None:
                return Proposal(box, "box around the structure under your click", self.name)
        if not mask.any():
            return Proposal(Stop(), "the tool finds nothing here; place a click on the target", self.name)
        for proposal in (self._fragment(mask), self._hole(mask), self._unsure(prediction, mask)):
            if proposal is not None:
                self._tried.add((int(proposal.action.x), int(proposal.action.y)))
                return proposal
        if prediction.score >= self.settings.stop_score:
            return Proposal(Stop(), f"confident mask (score {prediction.score:.2f}), nothing left to fix", self.name)
        return Proposal(Stop(), f"no clear fix left (score {prediction.score:.2f}); review the mask", self.name)

    def box_from_click(self, observation: Observation) -> Optional[Box]:
        """The box this policy proposes from the episode's first positive click (None without one); the
        learned policy starts the same way."""
        return self._box_from_click(observation.prediction.mask, observation)

    # -- signals --------------------------------------------------------------------------------------------
    def _box_from_click(self, mask: np.ndarray, observation: Observation) -> Optional[Box]:
        """Try square boxes of growing size around the click with the tool itself and keep the one the tool
        is most confident about (its predicted IoU; near-ties go to the larger box, since a box-trained tool
        fills whatever box it gets); propose the box around that mask's piece under the click."""
        click = next((a for a in observation.actions if isinstance(a, Point) and a.positive), None)
        if click is None:
            return None
        h, w = mask.shape
        cx, cy = int(round(click.x)), int(round(click.y))
        found: list[tuple[float, np.ndarray]] = []
        for half in self.settings.search_sizes:
            half = max(2, int(round(half * max(h, w) / 256)))
            box = Box(max(0, cx - half), max(0, cy - half), min(w - 1, cx + half), min(h - 1, cy + half))
            prediction = observation.preview(box, whole_view=True)  # a search: no zoomed crop per candidate
            labels, _ = ndimage.label(prediction.mask)
            if labels[cy, cx]:
                found.append((prediction.score, labels == labels[cy, cx]))
        if not found:
            return None
        best = max(score for score, _ in found)
        region = [r for score, r in found if score >= best - self.settings.score_tie][-1]
        ys, xs = np.nonzero(region)
        mx = self.settings.box_margin * (xs.max() - xs.min() + 1)
        my = self.settings.box_margin * (ys.max() - ys.min() + 1)
        return Box(
            int(max(0, xs.min() - mx)), int(max(0, ys.min() - my)),
            int(min(w - 1, xs.max() + mx)), int(min(h - 1, ys.max() + my)),
        )

    def _new(self, x: int, y: int) -> bool:
        return all((x - tx) ** 2 + (y - ty) ** 2 >= self._near ** 2 for tx, ty in self._tried)

    def _fragment(self, mask: np.ndarray) -> Optional[Proposal]:
        labels, largest = _largest_component(mask)
        if largest == 0:
            return None
        sizes = ndimage.sum_labels(mask, labels, index=np.arange(1, labels.max() + 1))
        limit = self.settings.fragment_fraction * sizes[largest - 1]
        for index in np.argsort(-sizes):
            if index + 1 == largest or sizes[index] >= limit:
                continue
            x, y = _deepest_point(labels == index + 1)
            if self._new(x, y):
                return Proposal(Point(x, y, False), f"remove a small stray fragment ({int(sizes[index])} px)",
                                self.name)
        return None

    def _hole(self, mask: np.ndarray) -> Optional[Proposal]:
        holes = ndimage.binary_fill_holes(mask) & ~mask
        labels, largest = _largest_component(holes)
        if largest == 0:
            return None
        region = labels == largest
        if region.sum() < self.settings.min_region:
            return None
        x, y = _deepest_point(region)
        if not self._new(x, y):
            return None
        return Proposal(Point(x, y, True), f"fill a hole inside the mask ({int(region.sum())} px)", self.name)

    def _unsure(self, prediction, mask: np.ndarray) -> Optional[Proposal]:
        s = self.settings
        unsure = np.zeros_like(mask)
        if prediction.probability is not None:
            unsure |= np.abs(prediction.probability - 0.5) < s.unsure_band
        for candidate in prediction.candidates:
            unsure |= candidate != mask
        labels, count = ndimage.label(unsure)
        if count == 0:
            return None
        sizes = ndimage.sum_labels(unsure, labels, index=np.arange(1, count + 1))
        for index in np.argsort(-sizes):  # the largest unsure region not already clicked
            if sizes[index] < max(s.min_region, s.unsure_fraction * mask.sum()):
                return None
            x, y = _deepest_point(labels == index + 1)
            if not self._new(x, y):
                continue
            # Without ground truth the sign is a guess: propose the change (include what the tool left out,
            # exclude what it took in) and let the reviewer flip it.
            include = not mask[y, x]
            what = "include" if include else "exclude"
            return Proposal(Point(x, y, include),
                            f"the tool is unsure about a {int(sizes[index])} px region; {what} it", self.name)
        return None

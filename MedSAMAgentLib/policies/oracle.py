"""The oracle expert: reads ground truth to act like an expert annotator (AGENT_PROTOCOL.md, "Expert
trajectories"). Used for simulation, evaluation (the click protocol) and trajectory generation.

- First action: a box from the ground-truth bounding rectangle, each side jittered by up to ``jitter`` of the
  box's size (sequential-click paradigm: a positive click at the centre of the object instead).
- Then corrective clicks: the distance-transform maximum of the larger error region (FN -> positive,
  FP -> negative), the standard RITM/SimpleClick oracle; with the progress constraint, an action is kept only
  if it raises IoU by at least ``tau``; otherwise the next candidate (the maximum of the other error, then
  points sampled in the larger error region) is tried.
- Stop when IoU reaches ``stop_iou`` or no candidate helps.

Seeded: the same seed and inputs give the same actions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Literal, Optional

import numpy as np
from scipy import ndimage

from ..actions import Action, Box, Point, Stop
from ..metrics import iou
from .base import Observation, PolicyError, Proposal


@dataclass(frozen=True)
class OracleSettings:
    """Documented defaults (the paper's values are not public)."""

    jitter: float = 0.1  # each box side moves by up to this fraction of the box's width/height
    tau: float = 0.01  # an action is kept only if it raises IoU by at least this much
    stop_iou: float = 0.9  # stop once the mask reaches this IoU
    resample: int = 4  # extra candidates tried when the first one fails the progress constraint
    paradigm: Literal["box-to-point", "sequential-click"] = "box-to-point"


def gt_box(ground_truth: np.ndarray) -> Box:
    ys, xs = np.nonzero(ground_truth)
    if ys.size == 0:
        raise PolicyError("the ground truth is empty: nothing to segment")
    return Box(int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max()))


def jittered_box(ground_truth: np.ndarray, jitter: float, rng: np.random.Generator) -> Box:
    """The ground-truth box with each side moved independently by up to ``jitter`` of the box's size."""
    box = gt_box(ground_truth)
    h, w = ground_truth.shape
    bw, bh = box.x2 - box.x1 + 1, box.y2 - box.y1 + 1
    dx1, dx2 = rng.uniform(-jitter, jitter, 2) * bw
    dy1, dy2 = rng.uniform(-jitter, jitter, 2) * bh
    return Box(
        int(np.clip(round(box.x1 + dx1), 0, w - 1)),
        int(np.clip(round(box.y1 + dy1), 0, h - 1)),
        int(np.clip(round(box.x2 + dx2), 0, w - 1)),
        int(np.clip(round(box.y2 + dy2), 0, h - 1)),
    )


def _padded_distance(region: np.ndarray) -> np.ndarray:
    """Distance to the nearest pixel outside ``region``, with the image border counting as outside."""
    return ndimage.distance_transform_edt(np.pad(region, 1))[1:-1, 1:-1]


def corrective_click(prediction: np.ndarray, ground_truth: np.ndarray) -> Optional[Point]:
    """The standard click oracle: positive at the FN distance maximum if it is larger than the FP one,
    else negative at the FP maximum. None when the mask is already exact."""
    return next(corrective_clicks(prediction, ground_truth), None)


def corrective_clicks(
    prediction: np.ndarray, ground_truth: np.ndarray, rng: Optional[np.random.Generator] = None, extra: int = 0
) -> Iterator[Point]:
    """Candidates in order: the standard oracle click, the other error's maximum, then ``extra`` points drawn
    (with ``rng``) from the deep part of the larger error region."""
    gt = np.asarray(ground_truth, bool)
    pred = np.asarray(prediction, bool)
    fn_dist = _padded_distance(gt & ~pred)
    fp_dist = _padded_distance(pred & ~gt)
    fn_max, fp_max = fn_dist.max(), fp_dist.max()
    if fn_max == 0 and fp_max == 0:
        return
    order = [(fn_dist, True), (fp_dist, False)] if fn_max > fp_max else [(fp_dist, False), (fn_dist, True)]
    for dist, positive in order:
        if dist.max() > 0:
            y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
            yield Point(int(x), int(y), positive)
    if rng is None or extra <= 0:
        return
    dist, positive = order[0]
    if dist.max() == 0:
        dist, positive = order[1]
    deep = np.argwhere(dist >= 0.5 * dist.max())
    for index in rng.choice(len(deep), size=min(extra, len(deep)), replace=False):
        y, x = deep[index]
        yield Point(int(x), int(y), positive)


class OracleExpert:
    """``Policy`` that reads ground truth; proposes only actions that pass the progress constraint."""

    name = "oracle"
    version = "1"
    needs_hint = False

    def __init__(self, ground_truth: np.ndarray, seed: int = 0, settings: Optional[OracleSettings] = None,
                 **overrides):
        self.ground_truth = np.asarray(ground_truth, bool)
        if not self.ground_truth.any():
            raise PolicyError("the ground truth is empty: nothing to segment")
        self.settings = settings or OracleSettings(**overrides)
        self.seed = seed
        self.rng = np.random.default_rng(seed)

    def reset(self) -> None:
        self.rng = np.random.default_rng(self.seed)

    def first_action(self) -> Action:
        s = self.settings
        if s.paradigm == "sequential-click":
            dist = _padded_distance(self.ground_truth)
            y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
            return Point(int(x), int(y), True)
        return jittered_box(self.ground_truth, s.jitter, self.rng)

    def propose(self, observation: Observation) -> Proposal:
        s = self.settings
        if observation.prediction is None:
            action = self.first_action()
            what = "box around the target" if isinstance(action, Box) else "click in the middle of the target"
            return Proposal(action, f"start with a {what}", self.name)
        current = iou(observation.prediction.mask, self.ground_truth)
        if current >= s.stop_iou:
            return Proposal(Stop(), f"IoU {current:.2f} reached the target {s.stop_iou:.2f}", self.name)
        if len(observation.actions) >= observation.max_actions:
            return Proposal(Stop(), f"action limit reached at IoU {current:.2f}", self.name)
        candidates = corrective_clicks(observation.prediction.mask, self.ground_truth, self.rng, s.resample)
        for candidate in candidates:
            gain = iou(observation.preview(candidate).mask, self.ground_truth) - current
            if gain >= s.tau:
                error = "missed region" if candidate.positive else "false region"
                return Proposal(candidate, f"click the centre of the largest {error} (IoU +{gain:.2f})",
                                self.name)
        return Proposal(Stop(), f"no click raises IoU by {s.tau:.2f} (IoU {current:.2f})", self.name)

"""Overlap metrics and the number-of-clicks summary (AGENT_PROTOCOL.md, "Metrics")."""

from __future__ import annotations

from typing import Sequence

import numpy as np


def iou(pred: np.ndarray, gt: np.ndarray) -> float:
    """Intersection over union of two boolean masks; two empty masks agree perfectly (1.0)."""
    pred, gt = np.asarray(pred, bool), np.asarray(gt, bool)
    union = np.logical_or(pred, gt).sum()
    return 1.0 if union == 0 else float(np.logical_and(pred, gt).sum() / union)


def dice(pred: np.ndarray, gt: np.ndarray) -> float:
    """Dice coefficient of two boolean masks; two empty masks agree perfectly (1.0)."""
    pred, gt = np.asarray(pred, bool), np.asarray(gt, bool)
    total = pred.sum() + gt.sum()
    return 1.0 if total == 0 else float(2.0 * np.logical_and(pred, gt).sum() / total)


def number_of_clicks(ious: Sequence[float], threshold: float, limit: int = 20) -> int:
    """Interactions (the box counts as the first) until IoU first reaches ``threshold``; ``limit`` if never."""
    for i, value in enumerate(ious[:limit]):
        if value >= threshold:
            return i + 1
    return limit


def clinician_effort(steps: Sequence[tuple[bool, float]], threshold: float, limit: int = 20) -> int:
    """The clinician's actions until IoU first reaches ``threshold``, over the episode's applied box/point
    actions ``(by_clinician, iou_after)`` in order (the hint, overrides and corrections count, an accepted
    proposal costs none); ``limit`` when it is not reached within ``limit`` actions: the agent protocol's
    counterpart of ``number_of_clicks`` (the clinician alone)."""
    spent = 0
    for by_clinician, value in steps[:limit]:
        spent += int(by_clinician)
        if value >= threshold:
            return spent
    return limit


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """IoU of two boxes given as inclusive pixel corners (x1, y1, x2, y2)."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]) + 1)
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]) + 1)
    inter = ix * iy
    area = lambda r: (r[2] - r[0] + 1) * (r[3] - r[1] + 1)  # noqa: E731
    union = area(a) + area(b) - inter
    return 0.0 if union <= 0 else float(inter / union)

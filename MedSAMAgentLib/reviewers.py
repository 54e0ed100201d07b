"""Reviewers answer the agent's proposals. ``SimulatedClinician`` reads ground truth and stands in for a
clinician in the demo, evaluation and tests; in Slicer the clinician is the reviewer."""

from __future__ import annotations

from typing import Optional

import numpy as np

from .actions import Action, Box, Point, Stop
from .metrics import box_iou, iou
from .policies.base import Observation, Proposal
from .policies.oracle import OracleExpert, OracleSettings, gt_box
from .session import Review

BOX_ACCEPT_IOU = 0.7  # a proposed box is accepted when its IoU with the ground-truth box reaches this
STOP_ACCEPT_IOU = 0.9  # a proposed stop is accepted when the mask's IoU reaches this


class SimulatedClinician:
    """Accepts a click that lies in the current error region of the right sign, a box whose IoU with the
    ground-truth box is >= 0.7, a stop when IoU >= 0.9; otherwise overrides with the oracle's action."""

    def __init__(self, ground_truth: np.ndarray, seed: int = 0, settings: Optional[OracleSettings] = None):
        self.ground_truth = np.asarray(ground_truth, bool)
        self.oracle = OracleExpert(self.ground_truth, seed=seed, settings=settings or OracleSettings(tau=0.0))

    def hint(self, kind: str = "point") -> Action:
        """The clinician's starting hint: a click in the middle of the target, or its box."""
        if kind == "box":
            return gt_box(self.ground_truth)
        return OracleExpert(self.ground_truth, settings=OracleSettings(paradigm="sequential-click")).first_action()

    def acceptable(self, action: Action, observation: Observation) -> bool:
        mask = np.zeros_like(self.ground_truth) if observation.prediction is None else observation.prediction.mask
        if isinstance(action, Box):
            return box_iou(action.as_list(), gt_box(self.ground_truth).as_list()) >= BOX_ACCEPT_IOU
        if isinstance(action, Point):
            y, x = int(round(action.y)), int(round(action.x))
            if not (0 <= y < mask.shape[0] and 0 <= x < mask.shape[1]):
                return False
            gt, pred = self.ground_truth[y, x], mask[y, x]
            return bool(gt and not pred) if action.positive else bool(pred and not gt)
        return iou(mask, self.ground_truth) >= STOP_ACCEPT_IOU

    def review(self, proposal: Proposal, observation: Observation) -> Review:
        if self.acceptable(proposal.action, observation):
            return Review("accept")
        if isinstance(proposal.action, Box):  # a clinician redraws a bad box rather than clicking
            return Review("override", self.oracle.first_action(), reason="expert box")
        correction = self.oracle.propose(observation).action
        if isinstance(correction, Stop) and isinstance(proposal.action, Stop):
            return Review("accept", reason="nothing the expert would do helps")
        return Review("override", correction, reason="expert correction")


def volume_correction(prediction: np.ndarray, ground_truth: np.ndarray, box_below_iou: float = 0.5,
                      boxed: frozenset = frozenset(), key: Optional[int] = None):
    """The simulated clinician's next correction of a propagated 3D mask (k, j, i), on the slice with the most
    wrong voxels: where the structure is absent, ``"clear"`` ("stop here") on the first slice of that stretch
    past the structure's end, seen from the key slice (``key``; else from the nearest slice with the structure):
    clearing it also clears the propagated slices beyond, so one action takes back the whole overrun; where the
    slice's mask is empty or poor (IoU below ``box_below_iou``) and the slice has not had it yet (``boxed``: a
    second identical box changes nothing), the ground-truth box; else the standard corrective click. Returns
    (slice, action) or None when exact."""
    from .policies.oracle import corrective_click

    prediction, ground_truth = np.asarray(prediction, bool), np.asarray(ground_truth, bool)
    errors = (prediction ^ ground_truth).sum(axis=(1, 2))
    index = int(np.argmax(errors))
    if errors[index] == 0:
        return None
    pred, gt = prediction[index], ground_truth[index]
    if not gt.any():
        present = np.nonzero(ground_truth.any(axis=(1, 2)))[0]
        origin = key if key is not None else (int(present[np.argmin(abs(present - index))]) if present.size else index)
        step = -1 if index > origin else 1  # toward the key slice
        has_mask = prediction.any(axis=(1, 2))
        while index + step != origin and not ground_truth[index + step].any() and has_mask[index + step]:
            index += step
        return index, "clear"
    if not pred.any() or (iou(pred, gt) < box_below_iou and index not in boxed):
        return index, gt_box(gt)
    return index, corrective_click(pred, gt)

"""The oracle expert (determinism, progress constraint), the built-in policy and the simulated clinician."""

import numpy as np
import pytest

from MedSAMAgentLib.actions import Box, Point, Stop
from MedSAMAgentLib.metrics import box_iou, iou
from MedSAMAgentLib.policies.base import PolicyError
from MedSAMAgentLib.policies.builtin import BuiltinPolicy
from MedSAMAgentLib.policies.oracle import OracleExpert, corrective_click, gt_box, jittered_box
from MedSAMAgentLib.reviewers import SimulatedClinician
from MedSAMAgentLib.session import Review, Session

CASE = "medscribble/HipXRay/image_054_axis0_midslice"


class AcceptAll:
    def review(self, proposal, observation):
        return Review("accept")


def test_corrective_click_follows_the_larger_error():
    gt = np.zeros((40, 40), bool)
    gt[5:35, 5:35] = True
    pred = gt.copy()
    pred[10:30, 10:20] = False  # a 20x10 hole: false negative
    click = corrective_click(pred, gt)
    assert click.positive and gt[click.y, click.x] and not pred[click.y, click.x]
    pred = gt.copy()
    pred[0:40, 36:40] = True  # a strip outside: false positive touching the border (padding counts)
    click = corrective_click(pred, gt)
    assert not click.positive and pred[click.y, click.x] and not gt[click.y, click.x]
    assert corrective_click(gt, gt) is None


def test_jittered_box_stays_near_the_truth_and_is_seeded(bundled):
    gt = bundled[CASE].ground_truth
    boxes = [jittered_box(gt, 0.1, np.random.default_rng(s)) for s in range(20)]
    assert all(box_iou(b.as_list(), gt_box(gt).as_list()) > 0.6 for b in boxes)
    assert len({b.as_list().__str__() for b in boxes}) > 10
    assert jittered_box(gt, 0.1, np.random.default_rng(3)) == jittered_box(gt, 0.1, np.random.default_rng(3))


def _oracle_episode(tool, case, seed, log=None):
    session = Session(tool, OracleExpert(case.ground_truth, seed=seed), case.image, target=case.case.target,
                      ground_truth=case.ground_truth, log=log)
    status = session.run(AcceptAll())
    return session, status


def test_oracle_is_deterministic_and_obeys_the_progress_constraint(litemedsam, bundled):
    case = bundled[CASE]
    first, status = _oracle_episode(litemedsam, case, seed=7)
    second, _ = _oracle_episode(litemedsam, case, seed=7)
    assert status in ("stopped", "limit")
    assert [s.applied for s in first.steps] == [s.applied for s in second.steps]
    assert all(np.array_equal(a.prediction.mask, b.prediction.mask) for a, b in zip(first.steps, second.steps))
    assert isinstance(first.steps[0].applied, Box)
    tau = OracleExpert(case.ground_truth).settings.tau
    ious = [s.iou for s in first.steps]
    for before, after, step in zip(ious, ious[1:], first.steps[1:]):
        if isinstance(step.applied, Point):
            assert after - before >= tau
    if status == "stopped":
        assert isinstance(first.steps[-1].applied, Stop)


def test_oracle_stops_once_the_target_iou_is_reached(litemedsam, bundled):
    case = bundled["sam-med2d/s0114_111_aorta_000"]
    session, status = _oracle_episode(litemedsam, case, seed=0)
    assert status == "stopped"
    assert session.steps[-1].iou >= 0.9 or "no click" in session.steps[-1].proposal.reason


def test_builtin_policy_needs_a_hint_then_boxes_the_clicked_structure(litemedsam, bundled):
    case = bundled["medscribble/BTCV/0763890-Image_axis1_maxslice"]
    session = Session(litemedsam, BuiltinPolicy(), case.image, ground_truth=case.ground_truth)
    with pytest.raises(PolicyError, match="hint"):
        session.propose()
    clinician = SimulatedClinician(case.ground_truth)
    session.place(clinician.hint(), hint=True)
    proposal = session.propose()
    assert isinstance(proposal.action, Box) and proposal.reason
    assert box_iou(proposal.action.as_list(), gt_box(case.ground_truth).as_list()) >= 0.5
    session.accept()
    assert session.steps[-1].dice > 0.85


def test_builtin_policy_reads_fragments_and_holes_without_ground_truth(litemedsam, bundled):
    from MedSAMAgentLib.policies.base import Observation
    from MedSAMAgentLib.tools.base import Prediction

    mask = np.zeros((64, 64), bool)
    mask[10:50, 10:50] = True
    mask[25:35, 25:35] = False  # a hole
    mask[58:61, 58:61] = True  # a stray fragment
    prediction = Prediction(mask, np.zeros((1, 256, 256), np.float32), 0.95)
    obs = Observation(np.zeros((64, 64, 3), np.uint8), "", [Box(8, 8, 52, 52)], prediction, lambda a: None)
    policy = BuiltinPolicy()
    first = policy.propose(obs)
    assert isinstance(first.action, Point) and not first.action.positive and mask[first.action.y, first.action.x]
    assert first.action.x >= 58 and "fragment" in first.reason
    second = policy.propose(obs)
    assert second.action.positive and 25 <= second.action.x < 35 and "hole" in second.reason
    mask[25:35, 25:35] = True
    mask[58:61, 58:61] = False
    assert isinstance(BuiltinPolicy().propose(obs).action, Stop)


def test_simulated_clinician_rules(litemedsam, bundled):
    case = bundled[CASE]
    gt = case.ground_truth
    session = Session(litemedsam, OracleExpert(gt), case.image, ground_truth=gt)
    clinician = SimulatedClinician(gt)
    obs = session.observation()
    assert clinician.acceptable(gt_box(gt), obs)
    x1, y1, x2, y2 = gt_box(gt).as_list()
    assert not clinician.acceptable(Box(x1, y1, (x1 + x2) / 2, (y1 + y2) / 2), obs)
    session.place(Box(x1, y1, x2, y2))
    obs = session.observation()
    fn = gt & ~obs.prediction.mask
    fp = obs.prediction.mask & ~gt
    inside = np.argwhere(gt & obs.prediction.mask)[0]
    if fn.any():
        y, x = np.argwhere(fn)[0]
        assert clinician.acceptable(Point(x, y, True), obs) and not clinician.acceptable(Point(x, y, False), obs)
    if fp.any():
        y, x = np.argwhere(fp)[0]
        assert clinician.acceptable(Point(x, y, False), obs)
    assert not clinician.acceptable(Point(inside[1], inside[0], True), obs)  # already right there
    assert clinician.acceptable(Stop(), obs) == (iou(obs.prediction.mask, gt) >= 0.9)
    review = clinician.review(session.propose(), obs)
    assert review.decision in ("accept", "override")

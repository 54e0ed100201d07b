"""The session loop: accept / override / reject, counts, the action limit, undo."""

import numpy as np
import pytest

from MedSAMAgentLib.actions import Box, Point, Stop
from MedSAMAgentLib.policies.base import PolicyError
from MedSAMAgentLib.policies.builtin import BuiltinPolicy
from MedSAMAgentLib.policies.oracle import OracleExpert, gt_box
from MedSAMAgentLib.reviewers import SimulatedClinician
from MedSAMAgentLib.session import Review, Session

CASE = "medscribble/HipXRay/image_054_axis0_midslice"


class Scripted:
    def __init__(self, *reviews):
        self.reviews = list(reviews)

    def review(self, proposal, observation):
        return self.reviews.pop(0)


def test_undo_restores_masks_and_tool_state_bit_identically(litemedsam, bundled):
    case = bundled[CASE]
    gt = case.ground_truth
    session = Session(litemedsam, OracleExpert(gt, seed=1), case.image, ground_truth=gt)
    box = gt_box(gt)
    session.place(box)
    snapshots = [(session.actions, session.mask.copy(), session.prediction.logits.copy())]
    for _ in range(3):
        session.propose()
        session.accept()
        snapshots.append((session.actions, session.mask.copy(), session.prediction.logits.copy()))
    # undo one at a time, back to the box
    for actions, mask, logits in reversed(snapshots[:-1]):
        assert session.undo() == 1
        assert session.actions == actions
        assert np.array_equal(session.mask, mask)
        assert np.array_equal(session.prediction.logits, logits)
    # applying the same action again after undo gives the same mask: the tool state was restored exactly
    session.place(snapshots[1][0][-1])
    assert np.array_equal(session.mask, snapshots[1][1])
    # undo several steps at once, then everything
    assert session.undo(10) == 2
    assert session.actions == () and not session.mask.any() and session.prediction is None


def test_accept_override_reject_and_counts(litemedsam, bundled):
    case = bundled[CASE]
    gt = case.ground_truth
    session = Session(litemedsam, BuiltinPolicy(), case.image, ground_truth=gt)
    clinician = SimulatedClinician(gt)
    session.place(clinician.hint(), hint=True)
    proposal = session.propose()
    redrawn = gt_box(gt)
    step = session.override(redrawn)
    assert step.decision == "override" and step.applied == redrawn and step.proposal == proposal
    session.propose()
    step = session.reject()
    assert step.applied is None and session.actions == (session.steps[0].applied, redrawn)
    session.propose()
    session.accept()
    assert session.clinician_actions == 2  # the hint and the override
    assert session.agent_actions == (0 if isinstance(session.steps[-1].applied, Stop) else 1)
    with pytest.raises(RuntimeError, match="no proposal is pending"):
        session.accept()


def test_run_stops_at_the_limit_and_pauses_on_policy_errors(litemedsam, bundled):
    case = bundled[CASE]
    gt = case.ground_truth

    class AlwaysClick:
        name, version, needs_hint = "clicker", "0", False

        def reset(self):
            self.n = 0

        def propose(self, observation):
            self.n += 1
            if not observation.actions:
                return __import__("MedSAMAgentLib.policies.base", fromlist=["Proposal"]).Proposal(
                    gt_box(gt), "box", self.name)
            if self.n > 3:
                raise PolicyError("the model's answer had no tool call twice")
            y, x = np.argwhere(gt)[self.n * 7]
            return __import__("MedSAMAgentLib.policies.base", fromlist=["Proposal"]).Proposal(
                Point(x, y, True), "click", self.name)

    session = Session(litemedsam, AlwaysClick(), case.image, ground_truth=gt, max_actions=2)
    assert session.run(Scripted(Review("accept"), Review("accept"))) == "limit"
    assert len(session.actions) == 2
    session = Session(litemedsam, AlwaysClick(), case.image, ground_truth=gt, max_actions=10)
    assert session.run(Scripted(*[Review("accept")] * 5)) == "paused"
    assert "no tool call" in session.pause_reason and len(session.actions) == 3


def test_a_prompt_after_stop_reopens_the_episode(litemedsam, bundled):
    case = bundled[CASE]
    session = Session(litemedsam, OracleExpert(case.ground_truth), case.image)
    session.place(gt_box(case.ground_truth))
    session.place(Stop())
    assert session.stopped
    x, y = np.argwhere(case.ground_truth)[0][::-1]
    session.place(Point(x, y, True))
    assert not session.stopped and len(session.actions) == 2
    session.undo()
    assert session.stopped


def test_bad_inputs_are_named(litemedsam, bundled):
    case = bundled[CASE]
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        Session(litemedsam, BuiltinPolicy(), case.image[..., 0])
    with pytest.raises(ValueError, match="ground truth is"):
        Session(litemedsam, BuiltinPolicy(), case.image, ground_truth=case.ground_truth[:10])


def test_sessions_sharing_one_tool_each_predict_on_their_own_image(litemedsam, bundled):
    """A volume's slices share one tool: a correction on an earlier slice, made after the tool has moved on to
    another slice, must still be computed on the earlier slice's image."""
    first, other = list(bundled.values())[:2]
    box = gt_box(first.ground_truth)
    click = Point(box.x1 + (box.x2 - box.x1) // 2, box.y1 + (box.y2 - box.y1) // 2, positive=True)
    alone = Session(litemedsam, OracleExpert(first.ground_truth, seed=1), first.image)
    alone.place(box)
    alone.place(click)
    shared = Session(litemedsam, OracleExpert(first.ground_truth, seed=1), first.image)
    shared.place(box)
    Session(litemedsam, OracleExpert(other.ground_truth, seed=1), other.image).place(gt_box(other.ground_truth))
    shared.place(click)  # the tool's current image is now the other case's
    assert np.array_equal(shared.mask, alone.mask)
    assert np.array_equal(shared.preview(click).mask, alone.preview(click).mask)

"""The learned policy (issue 15): the shipped weights load (SHA-256 checked; a bad file is named), it proposes
valid actions with readable reasons on a real case, and the SFT -> RL training runs end to end for a few steps
on real expert trajectories (the full runs are ``python -m MedSAMAgentLib.learning.policy_training``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from MedSAMAgentLib.actions import Box, Point, Stop
from MedSAMAgentLib.learning.embeddings import training_cases
from MedSAMAgentLib.learning.policy_data import build_samples
from MedSAMAgentLib.learning.policy_net import GRID
from MedSAMAgentLib.learning.policy_training import (RLSettings, SFTSettings, load_weights, save_weights, train_rl,
                                                     train_sft)
from MedSAMAgentLib.manifest import bundled_manifest
from MedSAMAgentLib.policies.base import PolicyError
from MedSAMAgentLib.policies.learned import WEIGHTS, WEIGHTS_SHA256, LearnedPolicy
from MedSAMAgentLib.registry import POLICIES, make_policy
from MedSAMAgentLib.reviewers import SimulatedClinician
from MedSAMAgentLib.session import Session

CASES = ("medscribble/HipXRay/image_054_axis0_midslice", "medscribble/BTCV/0763890-Image_axis1_maxslice")


@pytest.fixture(scope="module")
def cases():
    found, _ = training_cases([c for c in bundled_manifest() if c.id in CASES])
    return found


def test_shipped_weights_load_with_their_sha256():
    assert "learned" in POLICIES and WEIGHTS.is_file() and len(WEIGHTS_SHA256) == 64
    policy = make_policy("learned")
    assert policy.sha256 == WEIGHTS_SHA256 and policy.version.endswith(WEIGHTS_SHA256[:12])
    assert WEIGHTS.stat().st_size < 2_000_000  # small enough to ship in the package
    # trained only on rows whose licence allows shipping derived weights
    licences = policy.meta["licences"]
    assert licences and all(lic.startswith(("CC BY 4.0", "CC0", "MIT")) for lic in licences)


def test_bad_weights_are_named(tmp_path):
    with pytest.raises(PolicyError, match="SHA-256"):
        LearnedPolicy(expected_sha256="0" * 64)  # the shipped file against a wrong checksum
    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"not a torch file")
    with pytest.raises(PolicyError, match="broken.pt"):
        LearnedPolicy(weights=bad)
    with pytest.raises(PolicyError, match="missing"):
        LearnedPolicy(weights=tmp_path / "absent.pt")
    other = tmp_path / "other.pt"
    torch.save({"state": {}}, other)
    with pytest.raises(PolicyError, match="format tag"):
        LearnedPolicy(weights=other)


def test_proposes_valid_actions_with_reasons(litemedsam, cases):
    case = cases[0]
    reviewer = SimulatedClinician(case.mask)
    policy = make_policy("learned")
    session = Session(litemedsam, policy, case.image, ground_truth=case.mask, max_actions=5)
    with pytest.raises(PolicyError, match="hint"):
        session.propose()  # it starts from the clinician's hint
    session.place(reviewer.hint(), hint=True)
    h, w = case.mask.shape
    seen = []
    for _ in range(6):
        if session.stopped or session.at_limit:
            break
        mask = session.mask.copy()
        proposal = session.propose()
        action = proposal.action
        assert proposal.policy == "learned" and len(proposal.reason) > 5
        seen.append(type(action))
        if isinstance(action, Point):
            assert 0 <= action.x < w and 0 <= action.y < h
            assert mask[int(action.y), int(action.x)] != action.positive  # on the side its sign changes
            assert " px" in proposal.reason and ("missed" in proposal.reason) == action.positive
        review = reviewer.review(proposal, session.observation())
        session.accept() if review.decision == "accept" else session.override(review.action)
    assert seen[0] is Box and all(t in (Box, Point, Stop) for t in seen)  # from a click: a box first
    clicks = [(s.proposal.action.x, s.proposal.action.y) for s in session.steps
              if s.proposal is not None and isinstance(s.proposal.action, Point)]
    assert len(clicks) == len(set(clicks))  # an overridden proposal does not come back unchanged


def test_a_few_steps_of_sft_then_rl(litemedsam, cases, tmp_path):
    samples = build_samples(cases, litemedsam, episodes=1, progress=False)
    assert len(samples) >= 2 and samples.x.shape[1:] == (6, GRID, GRID)
    assert set(samples.group) == {c.group for c in cases} and samples.licence_ok.all()
    net = train_sft(samples, SFTSettings(steps=2, batch=4))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    net = train_rl(net, cases[:1], litemedsam, samples, RLSettings(iterations=1, cases=1, group=2))
    assert any(not torch.equal(before[k], v) for k, v in net.state_dict().items())  # RL moved the weights
    path = tmp_path / "w.pt"
    sha = save_weights(net, path, {"note": "test"})
    loaded, meta = load_weights(path)
    x = torch.from_numpy(samples.x[:2].astype(np.float32))
    with torch.inference_mode():
        (a, s), (b, t) = net(x), loaded(x)
    assert meta == {"note": "test"} and torch.allclose(a, b, atol=0.05) and torch.allclose(s, t, atol=0.05)
    assert LearnedPolicy(weights=path).sha256 == sha

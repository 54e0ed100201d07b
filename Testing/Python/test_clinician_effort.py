"""The clinician-effort metric of the agent protocol (issue 15): the clinician's actions until IoU 0.85/0.90,
on a known trajectory and on a real episode, next to the clinician alone (the click protocol)."""

from __future__ import annotations

import pytest

from MedSAMAgentLib.evaluation import load_cases, run_agent, run_clicks, summarize
from MedSAMAgentLib.manifest import bundled_manifest
from MedSAMAgentLib.metrics import clinician_effort
from MedSAMAgentLib.trajectory import TrajectoryWriter, read_episodes

CASE = "medscribble/HipXRay/image_054_axis0_midslice"  # 256 px: quick
LIMIT = 10  # effort steps (the metric uses 20; fewer keep the test short)


def test_effort_on_a_known_trajectory():
    # hint (clinician) 0.50, accepted box 0.80, override 0.86, accepted click 0.88, accepted click 0.91
    steps = [(True, 0.50), (False, 0.80), (True, 0.86), (False, 0.88), (False, 0.91)]
    assert clinician_effort(steps, 0.85) == 2  # the hint and the override
    assert clinician_effort(steps, 0.90) == 2  # the agent's accepted clicks cost nothing
    assert clinician_effort(steps[:4], 0.90) == 20  # never reached: counted as the limit
    assert clinician_effort([(False, 0.95)], 0.85) == 0  # the agent alone got there
    # only the first ``limit`` actions count: reached at the 4th action is a failure with limit 3
    assert clinician_effort(steps, 0.86, limit=3) == 2 and clinician_effort(steps, 0.88, limit=3) == 3


@pytest.fixture(scope="module")
def task():
    loaded, _ = load_cases([c for c in bundled_manifest() if c.id == CASE])
    return loaded[0]


class _StopOnly:
    """An agent that only ever proposes stop: the clinician does every action, so the effort is all of them."""

    name, version, needs_hint = "stop-only", "1", True

    def reset(self) -> None:
        pass

    def propose(self, observation):
        from MedSAMAgentLib.actions import Stop
        from MedSAMAgentLib.policies.base import Proposal

        return Proposal(Stop(), "nothing to add", self.name)


def test_effort_of_a_real_episode_and_the_log_is_the_protocols(litemedsam, task, tmp_path):
    logs = {}
    for effort in (0, LIMIT):
        path = tmp_path / f"effort{effort}.jsonl"
        with TrajectoryWriter(path) as log:
            result = run_agent(task, litemedsam, _StopOnly(), max_steps=5, log=log, effort_steps=effort)
        logs[effort] = (result, read_episodes(path)[0])
    plain, measured = logs[0][0], logs[LIMIT][0]
    assert plain.clinician_noc85 is None and plain.alone_noc85 is None  # off: not measured
    # the continuation is undone: the protocol's result and its log are the same with and without it
    assert (measured.final_dice, measured.actions, measured.status) == (plain.final_dice, plain.actions, plain.status)
    assert [s.decision for s in logs[LIMIT][1].steps] == [s.decision for s in logs[0][1].steps]
    assert measured.accepted == 0 and measured.clinician_actions == len(measured.actions) == 5
    # every action is the clinician's: the effort is the number of actions until IoU first reaches 0.85,
    # which the episode's own per-step IoU shows when it got there within the protocol's 5 actions
    ious = [s.record["iou"] for s in logs[LIMIT][1].steps if s.record.get("iou") is not None]
    reached = next((i + 1 for i, v in enumerate(ious) if v >= 0.85), None)
    if reached is not None:
        assert measured.clinician_noc85 == reached
    assert 1 <= measured.clinician_noc85 <= measured.clinician_noc90 <= LIMIT
    alone = run_clicks(task, litemedsam, LIMIT)
    assert (measured.alone_noc85, measured.alone_noc90) == (alone.noc85, alone.noc90)
    assert measured.alone_dice_at_steps == pytest.approx(alone.dice[4])
    block = summarize([measured], "agent", litemedsam.name, "stop-only")["overall"]
    assert block["clinician_noc85"] == measured.clinician_noc85 and block["alone_noc90"] == alone.noc90

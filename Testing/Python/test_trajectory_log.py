"""Trajectory logs: mask encoding, reading back, undo records, and a writer killed mid-session."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from MedSAMAgentLib.actions import Box, Point, action_from_dict
from MedSAMAgentLib.policies.oracle import OracleExpert, gt_box
from MedSAMAgentLib.session import Review, Session
from MedSAMAgentLib.trajectory import TrajectoryWriter, decode_mask, encode_mask, read_episodes

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("shape", [(1, 1), (7, 5), (64, 64), (181, 258)])
def test_mask_run_length_round_trip(shape, rng):
    for density in (0.0, 0.02, 0.5, 1.0):
        mask = rng.random(shape) < density
        assert np.array_equal(decode_mask(json.loads(json.dumps(encode_mask(mask)))), mask)


def test_session_log_reads_back_into_episodes(litemedsam, bundled, tmp_path):
    case = bundled["sam-med2d/s0114_111_aorta_000"]
    gt = case.ground_truth
    path = tmp_path / "log.jsonl"

    class AcceptAll:
        def review(self, proposal, observation):
            return Review("accept")

    with TrajectoryWriter(path) as log:
        session = Session(litemedsam, OracleExpert(gt), case.image, target="aorta", ground_truth=gt, log=log,
                          meta={"case": case.case.id})
        session.place(gt_box(gt), hint=True, extra={"ras": [1.0, 2.0, 3.0]})
        session.propose()
        session.override(Point(*np.argwhere(gt)[0][::-1], True))
        session.undo()
        session.run(AcceptAll())
        session.finish(accepted=True)
    (episode,) = read_episodes(path)
    assert episode.header["target"] == "aorta" and episode.header["meta"]["case"] == case.case.id
    assert episode.header["tool"]["name"] == "litemedsam" and episode.header["policy"]["name"] == "oracle"
    assert len(episode.steps) == len(session.steps) and len(episode.undone) == 1
    assert episode.steps[0].decision == "hint" and episode.steps[0].record["extra"] == {"ras": [1.0, 2.0, 3.0]}
    for logged, step in zip(episode.steps, session.steps):
        assert logged.applied == step.applied and logged.decision == step.decision
        if logged.record["mask"] is not None:
            assert np.array_equal(logged.mask, step.prediction.mask)
            assert logged.record["iou"] == pytest.approx(step.iou)
        if isinstance(step.applied, Box):
            assert logged.record["applied_model"]["bbox_2d"] == session.letterbox.action_to_model(step.applied)[
                "bbox_2d"]
    assert episode.accepted and np.array_equal(episode.final_mask, session.mask)


KILLED_WRITER = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    from MedSAMAgentLib.actions import Box, Point
    from MedSAMAgentLib.policies.oracle import OracleExpert
    from MedSAMAgentLib.session import Session
    from MedSAMAgentLib.tools.base import Prediction
    from MedSAMAgentLib.trajectory import TrajectoryWriter

    class BoxFill:  # a tiny deterministic tool: the mask is the newest box, clicks toggle a 3x3 patch
        name, version, trained_with_clicks = "boxfill", "0", False
        def set_image(self, image, key=None):
            self.shape = image.shape[:2]
        def predict(self, actions, previous):
            mask = np.zeros(self.shape, bool) if previous is None else previous.mask.copy()
            a = actions[-1]
            if isinstance(a, Box):
                mask[:] = False
                mask[int(a.y1):int(a.y2) + 1, int(a.x1):int(a.x2) + 1] = True
            else:
                mask[int(a.y) - 1:int(a.y) + 2, int(a.x) - 1:int(a.x) + 2] = a.positive
            return Prediction(mask, np.zeros((1, 256, 256), np.float32), 0.5)

    gt = np.zeros((40, 60), bool)
    gt[10:30, 15:45] = True
    session = Session(BoxFill(), OracleExpert(gt), np.zeros((40, 60, 3), np.uint8),
                      ground_truth=gt, log=TrajectoryWriter(sys.argv[1]), max_actions=100)
    session.place(Box(12, 8, 40, 33), hint=True)
    for i in range(1000):
        session.place(Point(15 + i % 30, 10 + i % 20, i % 2 == 0))
        print(i + 1, flush=True)
        time.sleep(0.05)
    """
)


def test_killed_writer_leaves_every_completed_step_readable(tmp_path):
    path = tmp_path / "killed.jsonl"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(path)], stdout=subprocess.PIPE, env=env,
                            text=True)
    done = 0
    deadline = time.time() + 60
    while done < 5 and time.time() < deadline:
        done = int(proc.stdout.readline() or done)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert done >= 5
    (episode,) = read_episodes(path)
    assert len(episode.steps) >= done + 1  # the hint plus every click it reported
    assert isinstance(episode.steps[0].applied, Box) and episode.end is None
    for i, step in enumerate(episode.steps[1 : done + 1]):
        assert step.applied == Point(15 + i % 30, 10 + i % 20, i % 2 == 0)
        assert step.mask.shape == (40, 60)
    # a line torn mid-write (power loss) is skipped with a warning; what came before still reads
    with path.open("a") as handle:
        handle.write('{"type": "step", "episode_id": "x", "index": 9')
    with pytest.warns(UserWarning, match="torn"):
        (again,) = read_episodes(path)
    assert len(again.steps) == len(episode.steps)


def test_action_dicts_round_trip():
    for action in (Box(1, 2, 3, 4), Point(5, 6, True), Point(7, 8, False)):
        from MedSAMAgentLib.actions import action_to_dict

        assert action_from_dict(json.loads(json.dumps(action_to_dict(action)))) == action
    with pytest.raises(ValueError, match="unknown action type"):
        action_from_dict({"type": "lasso"})

"""The command line as a user runs it: the demo, segment, and one-line errors."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from MedSAMAgentLib.cli import main
from MedSAMAgentLib.metrics import dice
from MedSAMAgentLib.policies.oracle import gt_box
from MedSAMAgentLib.trajectory import read_episodes

ROOT = Path(__file__).resolve().parents[2]


def test_demo_writes_mask_overlays_and_log_and_prints_dice(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "Dice" in printed and "clinician" in printed and "agent" in printed
    (episode,) = read_episodes(tmp_path / "trajectory.jsonl")
    mask = np.asarray(Image.open(tmp_path / "final_mask.png")) > 0
    assert np.array_equal(mask, episode.final_mask) and episode.accepted
    overlays = sorted(tmp_path.glob("step_*.png"))
    assert len(overlays) == len(episode.steps) >= 2
    final_dice = episode.end["dice"]
    assert f"final Dice {round(final_dice, 3)}" in printed and final_dice > 0.9


def test_segment_a_png_with_a_box_then_a_click(tmp_path, bundled):
    case = bundled["sam-med2d/s0114_111_aorta_000"]
    Image.fromarray(case.image).save(tmp_path / "image.png")
    box = gt_box(case.ground_truth)
    args = ["segment", str(tmp_path / "image.png"), "--box", *map(str, box.as_list()), "--out",
            str(tmp_path / "mask.png")]
    assert main(args) == 0
    mask = np.asarray(Image.open(tmp_path / "mask.png")) > 0
    assert mask.shape == case.ground_truth.shape and dice(mask, case.ground_truth) > 0.9


def test_segment_a_volume_slice(tmp_path, bundled, capsys):
    case = bundled["volumes/totalseg_ct_liver"]
    box = gt_box(case.ground_truth)
    out = tmp_path / "m.npy"
    args = ["segment", str(case.case.image), "--slice", f"0:{case.slice.index}", "--modality", "CT", "--box",
            *map(str, box.as_list()), "--out", str(out)]
    assert main(args) == 0
    assert dice(np.load(out), case.ground_truth) > 0.9
    assert f"slice 0:{case.slice.index}" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args, message",
    [
        (["segment", "missing.png", "--box", "1", "2", "3", "4", "--out", "x.png"], "no such file"),
        (["segment", "IMAGE", "--out", "x.png"], "at least one --box or --point"),
        (["segment", "IMAGE", "--point", "999", "5", "pos", "--out", "x.png"], "outside"),
        (["segment", "IMAGE", "--box", "1", "2", "3", "4", "--tool-option", "size", "--out", "x.png"], "KEY=VALUE"),
        (["segment", "IMAGE", "--box", "1", "2", "3", "4", "--tool", "sam", "--checkpoint", "no.pth", "--out",
          "x.png"], "no.pth"),
        (["demo", "--case", "nope"], "no bundled case"),
    ],
)
def test_errors_are_one_clear_line(tmp_path, args, message):
    image = tmp_path / "image.png"
    Image.fromarray((np.arange(600).reshape(20, 30) % 256).astype(np.uint8)).save(image)  # not constant
    args = [str(image) if a == "IMAGE" else a for a in args]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("MEDSAM_AGENT_DEBUG", None)
    result = subprocess.run([sys.executable, "-m", "MedSAMAgentLib.cli", *args], capture_output=True, text=True,
                            cwd=tmp_path, env=env)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if "Warning" not in line and "warnings.warn" not in line]
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in result.stderr

"""The MedSAM-Agent reward (AGENT_PROTOCOL.md, "Reward"): worked examples by hand, edge cases, and the verl /
TRL adapters that see only the model's text."""

from __future__ import annotations

import importlib.util
import io
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from MedSAMAgentLib.actions import Box, Point, Stop
from MedSAMAgentLib.geometry import Letterbox
from MedSAMAgentLib.metrics import dice, iou
from MedSAMAgentLib.rewards import (
    compute_score,
    episode_reward,
    episode_reward_from_masks,
    format_score,
    make_trl_reward,
    parse_actions,
    reward_func,
)
from MedSAMAgentLib.toolcall import format_tool_call

BOX, CLICK, STOP = Box(10, 10, 50, 50), Point(30, 30, True), Stop()
LB = Letterbox(100, 100)


def text(*actions) -> str:
    return "\n".join(format_tool_call(a, LB) for a in actions)


def png(mask: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(mask.astype(np.uint8) * 255).save(buffer, format="PNG")
    return buffer.getvalue()


# -- worked examples (by hand) ------------------------------------------------------------------------------
def test_box_then_stop():
    # F = 1; T = 1 so no penalty/bonus; base = 0.5*0.80 + 0.5*0.889 = 0.8445; 0.2 + 0.8*0.8445 = 0.8756
    r = episode_reward([BOX, STOP], [0.80], [0.889])
    assert (r.format, r.penalty, r.bonus, r.actions) == (1.0, 0.0, 0.0, 1)
    assert r.base == pytest.approx(0.8445)
    assert r.score == pytest.approx(0.876, abs=5e-4)


def test_box_click_then_stop():
    # base = 0.5*0.85 + 0.5*0.919 = 0.8845; penalty = (0.85-0.85) + 0.01*2 = 0.02; bonus = 0.1*0.05 = 0.005
    # Q = 0.8695; score = 0.2 + 0.8*0.8695 = 0.8956
    r = episode_reward([BOX, CLICK, STOP], [0.80, 0.85], [0.889, 0.919])
    assert r.penalty == pytest.approx(0.02)
    assert r.bonus == pytest.approx(0.005)
    assert r.quality == pytest.approx(0.8695)
    assert r.score == pytest.approx(0.896, abs=5e-4)


def test_a_click_that_makes_it_worse_is_penalised():
    # penalty = (0.90 - 0.70) + 0.02 = 0.22, no gain; base = 0.5*0.70 + 0.5*0.82 = 0.76 -> Q = 0.54
    r = episode_reward([BOX, CLICK, STOP], [0.90, 0.70], [0.95, 0.82])
    assert r.quality == pytest.approx(0.54)
    assert r.score == pytest.approx(0.2 + 0.8 * 0.54)


def test_quality_is_clipped_at_zero():
    r = episode_reward([BOX, CLICK, CLICK, STOP], [0.9, 0.1, 0.0], [0.95, 0.2, 0.0])
    assert r.quality == 0.0 and r.score == pytest.approx(0.2)


# -- edge cases ---------------------------------------------------------------------------------------------
def test_no_tool_call_scores_zero():
    assert episode_reward([], [], []).score == 0.0
    assert episode_reward([None], [], []).score == 0.0  # a turn whose text held no usable call
    assert compute_score("medsam_agent", "I think the liver is on the left.", png(np.ones((4, 4), bool))) == 0.0


def test_stop_first_is_half_format_and_an_empty_mask():
    gt = np.zeros((20, 20), bool)
    gt[5:10, 5:10] = True
    r = episode_reward_from_masks([STOP], [], gt)
    assert r.format == 0.5 and r.final_iou == 0.0 and r.final_dice == 0.0
    assert r.score == pytest.approx(0.1)


def test_no_stop_is_half_format():
    r = episode_reward([BOX], [0.80], [0.889])
    assert r.format == 0.5
    assert r.score == pytest.approx(0.1 + 0.8 * 0.8445)


def test_format_score_table():
    assert format_score([BOX, STOP]) == 1.0
    assert format_score([BOX]) == 0.5
    assert format_score([STOP]) == 0.5
    assert format_score([BOX, STOP, BOX]) == 0.5  # the last call must be stop
    assert format_score([None]) == 0.0


def test_one_iou_and_dice_per_box_or_point_action():
    with pytest.raises(ValueError, match="2 box/point actions but 1 IoUs"):
        episode_reward([BOX, CLICK, STOP], [0.8], [0.9])


def test_from_masks_matches_metrics():
    gt = np.zeros((40, 40), bool)
    gt[10:30, 10:30] = True
    m1, m2 = np.zeros_like(gt), np.zeros_like(gt)
    m1[10:25, 10:30] = True
    m2[10:30, 10:29] = True
    r = episode_reward_from_masks([BOX, CLICK, STOP], [m1, m2], gt)
    expected = episode_reward([BOX, CLICK, STOP], [iou(m1, gt), iou(m2, gt)], [dice(m1, gt), dice(m2, gt)])
    assert r == expected


# -- text adapters ------------------------------------------------------------------------------------------
def test_parse_actions_in_order_with_unusable_calls_kept_as_none():
    actions = parse_actions(text(BOX) + "\n<tool_call>not json</tool_call>\n" + text(CLICK, STOP))
    assert [type(a) for a in actions] == [Box, type(None), Point, Stop]


def test_verl_compute_score_with_environment_ious():
    score = compute_score("medsam_agent", text(BOX, CLICK, STOP), b"", {"ious": [0.80, 0.85],
                                                                          "dices": [0.889, 0.919]})
    assert score == pytest.approx(0.896, abs=5e-4)


def test_verl_compute_score_with_masks_and_png_ground_truth():
    gt = np.zeros((40, 40), bool)
    gt[10:30, 10:30] = True
    m1 = np.zeros_like(gt)
    m1[10:26, 10:30] = True
    expected = episode_reward_from_masks([BOX, STOP], [m1], gt).score
    assert compute_score("medsam_agent", text(BOX, STOP), png(gt), {"masks": [png(m1)]}) == pytest.approx(expected)


def test_calls_after_stop_are_not_part_of_the_episode():
    score = compute_score("medsam_agent", text(BOX, STOP, CLICK), b"", {"ious": [0.8], "dices": [0.889]})
    assert score == pytest.approx(0.876, abs=5e-4)


def test_text_only_scores_format_and_warns():
    gt = np.ones((8, 8), bool)
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        assert compute_score("medsam_agent", text(BOX, STOP), png(gt)) == pytest.approx(0.2)


def test_trl_reward_function_plain_and_conversational():
    completions = [
        text(BOX, STOP),
        [{"role": "assistant", "content": text(BOX)},
         {"role": "user", "content": "Here is the updated mask ..."},
         {"role": "assistant", "content": text(STOP)}],
    ]
    scores = reward_func(["p1", "p2"], completions, ious=[[0.80], [0.80]], dices=[[0.889], [0.889]],
                         ground_truth=[b"", b""])
    assert scores == pytest.approx([0.876, 0.876], abs=5e-4)


def test_every_call_counts_alike_in_text_tool_calls_and_untagged_json():
    """Both trainers execute every call of a turn, so each adapter scores every call, in order: TRL's parsed
    ``tool_calls``, tagged text (verl) and untagged JSON (tags stripped as special tokens) give one score."""
    info = {"ious": [0.80, 0.85], "dices": [0.889, 0.919]}
    tagged = text(BOX) + text(CLICK) + text(STOP)  # two calls in one turn, then stop
    untagged = tagged.replace("<tool_call>", "").replace("</tool_call>", "")
    calls = [{"type": "function", "function": json.loads(t.split("<tool_call>")[1].split("</tool_call>")[0])}
             for t in (text(BOX), text(CLICK), text(STOP))]
    conversation = [{"role": "assistant", "content": "", "tool_calls": calls[:2]},  # two calls, two answers
                    {"role": "tool", "content": "..."}, {"role": "tool", "content": "..."},
                    {"role": "assistant", "content": "", "tool_calls": calls[2:]}, {"role": "tool", "content": "."}]
    unanswered = conversation[:3] + [{"role": "assistant", "content": "", "tool_calls": calls[1:]}]
    verl_scores = [compute_score("medsam_agent", s, b"", dict(info)) for s in (tagged, untagged)]
    trl_scores = reward_func(["p", "p"], [tagged, conversation], ground_truth=[b"", b""], **{
        k: [v, v] for k, v in info.items()})
    assert verl_scores + trl_scores == pytest.approx([verl_scores[0]] * 4)
    assert len(parse_actions(untagged)) == 3 and verl_scores[0] > 0.8
    # the trainer's turn limit ended the rollout before the last turn's calls ran: they are not in the episode
    cut = reward_func(["p"], [unanswered], ground_truth=[b""], **{k: [v] for k, v in info.items()})
    assert cut == pytest.approx([0.2 * 0.5 + 0.8 * max(0.0, 0.5 * 0.85 + 0.5 * 0.919 - 0.02 + 0.005)])


def test_trl_reward_replays_actions_through_the_tool(litemedsam, bundled):
    case = bundled["sam-med2d/s0114_111_aorta_000"]
    image, gt = case.image, case.ground_truth
    ys, xs = np.nonzero(gt)
    box = Box(xs.min(), ys.min(), xs.max(), ys.max())
    letterbox = Letterbox(*image.shape[:2])
    completion = format_tool_call(box, letterbox) + format_tool_call(Stop(), letterbox)
    # what the session would have produced: the tool on the box as the model's coordinates map back
    litemedsam.set_image(image)
    mask = litemedsam.predict((letterbox.action_from_model(parse_actions(completion)[0]),), None).mask
    expected = episode_reward_from_masks([box, Stop()], [mask], gt).score
    score = make_trl_reward(litemedsam)(["p"], [completion], ground_truth=[png(gt)], engine_image=[image])
    assert score == pytest.approx([expected])
    assert expected > 0.2  # the replay found a real mask, not the empty-mask fallback


def test_verl_loads_the_reward_from_a_file_path():
    """verl imports custom_reward_function.path with spec_from_file_location, outside any package."""
    import MedSAMAgentLib

    path = Path(MedSAMAgentLib.__file__).parent / "trajectories" / "verl_reward.py"
    spec = importlib.util.spec_from_file_location("custom_module", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.compute_score("medsam_agent", text(BOX, STOP), b"", {"ious": [0.8], "dices": [0.889]}) == \
        pytest.approx(0.876, abs=5e-4)

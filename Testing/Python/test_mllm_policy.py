"""The MedSAM-Agent MLLM policy: the exact conversation (golden texts, tool schemas, overlay pixels), coordinate
mapping on a non-square image, the in-process Qwen3-VL backend on a tiny random-weight model built here
(real transformers classes, nothing downloaded) and the endpoint backend against a loopback chat-completions
server, all in whole episodes with the real built-in tool on bundled cases."""

from __future__ import annotations

import argparse
import base64
import io
import json
import socket
import threading
import warnings
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import NON_SQUARE_CASE
from tiny_agent_model import save_tiny_agent
from MedSAMAgentLib.actions import Box, Point, Stop
from MedSAMAgentLib.geometry import Letterbox
from MedSAMAgentLib.policies.base import PolicyError
from MedSAMAgentLib.policies.mllm import (
    MLLMPolicy,
    add_policy_arguments,
    policy_options_from_args,
    trained_tool_from_names,
)
from MedSAMAgentLib.policies.mllm_backends import BackendError, EndpointBackend, TransformersBackend
from MedSAMAgentLib.policies import mllm_backends
from MedSAMAgentLib.policies.mllm_prompt import (
    FOLLOW_UP_TEXT,
    SYSTEM_PROMPT,
    build_messages,
    first_user_text,
    model_mask,
    observation_image,
    split_images,
)
from MedSAMAgentLib.registry import make_policy
from MedSAMAgentLib.session import Review, Session
from MedSAMAgentLib.toolcall import format_tool_call
from MedSAMAgentLib.trajectory import TrajectoryWriter, read_episodes


class AcceptAll:
    def review(self, proposal, observation):
        return Review("accept")


class OverrideFirst:
    """Replaces the first proposal with a clinician's click, accepts the rest."""

    def __init__(self, action):
        self.action, self.done = action, False

    def review(self, proposal, observation):
        if self.done:
            return Review("accept")
        self.done = True
        return Review("override", self.action)


# -- golden texts -------------------------------------------------------------------------------------------
GOLDEN_TOOLS = (
    '{"type": "function", "function": {"name": "add_bbox", "description": "Draw a bounding box around the target '
    'to create the mask, or to start it again.", "parameters": {"type": "object", "properties": {"bbox_2d": '
    '{"type": "array", "items": {"type": "integer"}, "minItems": 4, "maxItems": 4, "description": "The box as '
    '[x1, y1, x2, y2], integers in [0, 999] relative to the image"}}, "required": ["bbox_2d"]}}}\n'
    '{"type": "function", "function": {"name": "add_point", "description": "Click on the image to correct the '
    'mask: a positive point adds the region under it, a negative point removes it.", "parameters": {"type": '
    '"object", "properties": {"point_2d": {"type": "array", "items": {"type": "integer"}, "minItems": 2, '
    '"maxItems": 2, "description": "The point as [x, y], integers in [0, 999] relative to the image"}, '
    '"point_type": {"type": "string", "enum": ["positive", "negative"], "description": "\'positive\' to add the '
    'region to the mask, \'negative\' to remove it"}}, "required": ["point_2d", "point_type"]}}}\n'
    '{"type": "function", "function": {"name": "stop_action", "description": "Finish: the green mask covers the '
    'target accurately.", "parameters": {"type": "object", "properties": {}, "required": []}}}'
)
GOLDEN_SYSTEM = (
    "You are an expert annotator of medical images who creates and refines segmentation masks. Your task is to "
    "segment the target region that the user specifies in the image. There is no initial mask: first create one "
    "with a tool, then refine it step by step until it is accurate to the pixel. The current mask is shown as a "
    "semi-transparent green overlay; make it cover the whole target region and nothing else (no background, no "
    "neighbouring structures).\n\n"
    "# Tools\n\nYou must call exactly one function per turn.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
    + GOLDEN_TOOLS
    + "\n</tools>\n\nFor each function call, return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": "
    "<args-json-object>}\n</tool_call>"
)


def test_prompt_texts_are_exact():
    assert SYSTEM_PROMPT == GOLDEN_SYSTEM
    assert FOLLOW_UP_TEXT == ("Here is the updated mask after your previous action. Based on this, what is your "
                              "next action? If the mask is now accurate, you can call 'stop_action' to finish.")
    assert first_user_text(" aorta in CT ") == ("The target to segment is: aorta in CT. Look at the image and "
                                                "choose your first action.")
    names = [json.loads(line)["function"]["name"] for line in GOLDEN_TOOLS.splitlines()]
    assert names == ["add_bbox", "add_point", "stop_action"]


def test_overlay_pixels_square_image_exact(rng):
    image = rng.integers(0, 256, (512, 512, 3), dtype=np.uint8)
    mask = np.zeros((512, 512), bool)
    mask[100:300, 50:200] = True
    mask[400, 400] = True
    assert np.array_equal(observation_image(image), image)
    out = observation_image(image, mask)
    expected = image.copy()
    expected[mask] = ((image[mask].astype(int) + [0, 255, 0]) // 2).astype(np.uint8)
    assert np.array_equal(out, expected)
    assert out[400, 400].tolist() == [image[400, 400, 0] // 2, (int(image[400, 400, 1]) + 255) // 2,
                                      image[400, 400, 2] // 2]


def test_overlay_non_square_case_blends_inside_the_mask_only(bundled):
    case = bundled[NON_SQUARE_CASE]
    image, gt = case.image, case.ground_truth
    assert image.shape[:2] == (181, 258)
    letterbox = Letterbox(181, 258)
    base = letterbox.apply(image)
    assert np.array_equal(observation_image(image), base)
    out = observation_image(image, gt)
    inside = model_mask(gt)
    assert inside.sum() > 0
    assert np.array_equal(out[~inside], base[~inside])
    assert np.array_equal(out[inside], ((base[inside].astype(int) + [0, 255, 0]) // 2).astype(np.uint8))
    # the green lands where the mask is: interior mask pixels map inside, far-away pixels outside
    scale = 512 / 258
    ys, xs = np.nonzero(gt)
    cy, cx = int(np.median(ys)), int(np.median(xs))
    assert gt[cy, cx]
    assert inside[int((cy + letterbox.pad_y + 0.5) * scale), int((cx + letterbox.pad_x + 0.5) * scale)]
    assert not inside[:int(letterbox.pad_y * scale) - 1].any()  # the padding band stays black
    assert (out[:int(letterbox.pad_y * scale) - 1] == 0).all()


def test_messages_structure_history_and_export_form(bundled):
    case = bundled[NON_SQUARE_CASE]
    image, gt = case.image, case.ground_truth
    letterbox = Letterbox(*image.shape[:2])
    actions = [Box(100, 50, 200, 150), Point(150, 100, True), Point(10, 10, False)]
    masks = [gt, gt & False, gt]
    messages = build_messages(image, "aorta in CT", actions, masks, ["model said box", None, None])
    assert [m["role"] for m in messages] == ["system"] + ["user", "assistant"] * 3 + ["user"]
    assert messages[0]["content"] == SYSTEM_PROMPT
    assert messages[1]["content"][1]["text"] == first_user_text("aorta in CT")
    assert messages[2]["content"] == "model said box"
    assert messages[4]["content"] == format_tool_call(actions[1], letterbox)
    assert all(m["content"][1]["text"] == FOLLOW_UP_TEXT for m in messages[3::2])
    assert np.array_equal(messages[1]["content"][0]["image"], observation_image(image))
    assert np.array_equal(messages[-1]["content"][0]["image"], observation_image(image, masks[-1]))
    # the protocol keeps up to 5 previous turns
    many = [Box(10, 10, 50, 50)] * 7
    trimmed = build_messages(image, "aorta", many, [gt] * 7)
    assert len(trimmed) == 1 + 2 * 5 + 1 and trimmed[1]["content"][1]["text"] == FOLLOW_UP_TEXT
    assert len(build_messages(image, "aorta", many, [gt] * 7, history_turns=None)) == 1 + 2 * 7 + 1
    flat, images = split_images(messages)
    assert flat[1]["content"] == "<image>" + first_user_text("aorta in CT") and len(images) == 4
    with pytest.raises(ValueError, match="target description"):
        build_messages(image, "  ", [], [])


# -- coordinate mapping on a non-square image ---------------------------------------------------------------
def test_model_coordinates_map_back_through_the_letterbox(bundled, loopback):
    case = bundled[NON_SQUARE_CASE]
    h, w = case.image.shape[:2]
    loopback.script = [call("add_bbox", bbox_2d=[0, 0, 999, 999]), call("add_point", point_2d=[500, 500],
                                                                       point_type="negative")]
    policy = make_policy("mllm", endpoint=loopback.url, model_name="m")
    observation = _observation(case.image, "aorta in CT")
    box = policy.propose(observation).action
    assert box == Box(0, 0, w - 1, h - 1)  # the padding is undone and clamped, not stretched
    point = policy.propose(observation).action
    assert (h, w) == (181, 258)  # square side 258, 38 rows of padding on top
    assert point == Point(129, 91, False)  # 500/1000*258 = 129; 129 - 38 = 91
    # a box in pixels survives the round trip through the model's text
    letterbox = Letterbox(h, w)
    ys, xs = np.nonzero(case.ground_truth)
    truth = Box(xs.min(), ys.min(), xs.max(), ys.max())
    loopback.script = [format_tool_call(truth, letterbox)]
    back = policy.propose(observation).action
    assert np.allclose(back.as_list(), truth.as_list(), atol=1)
    # the top padding band of the square (rows 0..37 of 258) clamps to the first image row
    assert letterbox.action_from_model(Point(500, 10, True)) == Point(129, 0, True)


def _observation(image, target):
    from MedSAMAgentLib.policies.base import Observation

    def no_preview(action):
        raise AssertionError("the MLLM policy never previews")

    return Observation(image=image, target=target, actions=(), prediction=None, preview=no_preview)


# -- the loopback chat-completions server -------------------------------------------------------------------
def call(name, **arguments):
    return "<tool_call>\n" + json.dumps({"name": name, "arguments": arguments}) + "\n</tool_call>"


class Loopback:
    """A chat-completions server on 127.0.0.1 answering from ``script`` (or failing as ``mode`` says)."""

    def __init__(self):
        self.script: list[str] = []
        self.requests: list[dict] = []
        self.headers: list[dict] = []
        self.mode = "answer"  # answer | slow | http500 | http404
        self.release = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, code, payload):
                body = json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                if self.path == "/v1/models":
                    self._send(200, {"object": "list", "data": [{"id": "MedSAM-Agent-Qwen3-VL-8B-IMISNet"}]})
                else:
                    self._send(404, {"error": "no such path"})

            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                request = json.loads(self.rfile.read(length))
                outer.requests.append(request)
                outer.headers.append(dict(self.headers))
                if outer.mode == "slow":
                    outer.release.wait(10)
                    return
                if outer.mode == "http500":
                    return self._send(500, {"error": "CUDA out of memory"})
                if self.path != "/v1/chat/completions" or outer.mode == "http404":
                    return self._send(404, {"error": {"message": "The model `x` does not exist."}})
                text = outer.script.pop(0) if outer.script else ""
                message = {"role": "assistant", "content": text}
                if outer.mode == "tool_calls":  # a server started with a tool-call parser (vLLM --tool-call-parser)
                    call_ = json.loads(text.split("\n")[1])
                    message = {"role": "assistant", "content": None, "tool_calls": [
                        {"id": "t0", "type": "function", "function": {
                            "name": call_["name"], "arguments": json.dumps(call_["arguments"])}}]}
                self._send(200, {"id": "c", "object": "chat.completion", "model": request["model"],
                                 "choices": [{"index": 0, "finish_reason": "stop", "message": message}]})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def loopback():
    server = Loopback()
    yield server
    server.close()


def _decode_png(url):
    assert url.startswith("data:image/png;base64,")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB"))


def test_endpoint_episode_follows_the_script(bundled, litemedsam, loopback, tmp_path):
    case = bundled[NON_SQUARE_CASE]  # one image for all endpoint tests: the tool encodes it once
    letterbox = Letterbox(*case.image.shape[:2])
    ys, xs = np.nonzero(case.ground_truth)
    model_box = letterbox.action_to_model(Box(xs.min() - 3, ys.min() - 3, xs.max() + 3, ys.max() + 3))["bbox_2d"]
    model_click = list(letterbox.to_model(float(np.median(xs)), float(np.median(ys))))
    box_text = call("add_bbox", bbox_2d=model_box)
    click_text = call("add_point", point_2d=model_click, point_type="positive")
    loopback.script = [box_text, click_text, "I think the mask is fine {not json", call("stop_action")]
    policy = make_policy("mllm", endpoint=loopback.url, model_name="MedSAM-Agent-Qwen3-VL-8B-MedSAM2",
                         api_key="secret", timeout=30)
    assert policy.trained_tool.tool == "medsam2" and policy.tool_advice("medsam2") is None
    assert "medsam2" in policy.tool_advice("litemedsam")
    log = tmp_path / "episodes.jsonl"
    with TrajectoryWriter(log) as writer:
        session = Session(litemedsam, policy, case.image, target=case.case.target,
                          ground_truth=case.ground_truth, log=writer)
        status = session.run(AcceptAll())
        session.finish(accepted=False, status=status)
    assert status == "stopped"
    [episode] = read_episodes(log)
    applied = [step.applied for step in episode.steps]
    assert applied == [letterbox.action_from_model(Box(*model_box)),
                       letterbox.action_from_model(Point(*model_click, True)), Stop()]
    assert [s.record["proposal"]["raw_text"] for s in episode.steps] == [box_text, click_text, call("stop_action")]
    # pixels are whole, so the box reads back in 0..999 within one unit of what the model said
    assert np.allclose(episode.steps[0].record["applied_model"]["bbox_2d"], model_box, atol=1)
    assert episode.steps[1].record["dice"] > 0.3 and episode.header["policy"]["name"] == "mllm"
    # four requests: the malformed answer was asked for once more with the same conversation
    assert len(loopback.requests) == 4 and loopback.requests[2]["messages"] == loopback.requests[3]["messages"]
    first = loopback.requests[0]
    assert first["model"] == "MedSAM-Agent-Qwen3-VL-8B-MedSAM2"
    assert first["max_tokens"] == 128 and first["temperature"] == 0
    assert loopback.headers[0]["Authorization"] == "Bearer secret"
    messages = loopback.requests[2]["messages"]
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert messages[0]["content"] == SYSTEM_PROMPT
    assert messages[1]["content"][1] == {"type": "text", "text": first_user_text(case.case.target)}
    assert messages[2]["content"] == box_text and messages[4]["content"] == click_text
    assert messages[5]["content"][1]["text"] == FOLLOW_UP_TEXT
    # the images the server saw are exactly the observation images: plain, then the logged masks in green
    seen = [_decode_png(m["content"][0]["image_url"]["url"]) for m in messages if m["role"] == "user"]
    assert np.array_equal(seen[0], observation_image(case.image))
    assert np.array_equal(seen[1], observation_image(case.image, episode.steps[0].mask))
    assert np.array_equal(seen[2], observation_image(case.image, episode.steps[1].mask))
    assert not np.array_equal(seen[1], seen[0])


def _box_around(truth, letterbox):
    ys, xs = np.nonzero(truth)
    return letterbox.action_to_model(Box(xs.min(), ys.min(), xs.max(), ys.max()))["bbox_2d"]


EVAL_CASES = ("medscribble/BTCV/0763890-Image_axis1_maxslice", "medscribble/HipXRay/image_054_axis0_midslice")


def test_evaluate_agent_protocol_through_an_endpoint(bundled, loopback, tmp_path, capsys):
    """``medsam-agent evaluate --policy mllm --endpoint URL``: the policy is made once, every case's episode is
    logged, and the summary counts the model's actions."""
    from MedSAMAgentLib import cli
    from MedSAMAgentLib.manifest import BUNDLED_DATA

    cases = [bundled[c] for c in EVAL_CASES]
    loopback.script = [call("add_bbox", bbox_2d=_box_around(c.ground_truth, Letterbox(256, 256))) for c in cases]
    out = tmp_path / "eval"
    code = cli.main(["evaluate", "--manifest", str(BUNDLED_DATA / "manifest.jsonl"), "--protocol", "agent",
                     "--policy", "mllm", "--endpoint", loopback.url, "--model-name",
                     "MedSAM-Agent-Qwen3-VL-8B-MedSAM2", "--limit", "2", "--max-steps", "1", "--effort-steps", "0", "--no-progress",
                     "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0
    assert "trained with MedSAM2" in printed and "--tool medsam2" in printed  # which tool, shown to the user
    summary = json.loads((out / "summary.json").read_text())
    assert summary["policy"] == "mllm" and summary["overall"]["n"] == 2
    assert summary["overall"]["mean_agent_actions"] == 1.0 and summary["overall"]["acceptance_rate"] == 1.0
    episodes = read_episodes(out / "trajectories.jsonl")
    assert [e.header["meta"]["case_id"] for e in episodes] == list(EVAL_CASES)
    rows = {r["id"]: r for r in csv_rows(out / "cases.csv")}
    for episode, case in zip(episodes, cases):
        [step] = episode.steps
        assert step.decision == "accept" and step.record["proposal"]["raw_text"].count("add_bbox") == 1
        assert episode.end["status"] == "limit" and episode.end["dice"] > 0.8
        assert episode.end["dice"] == pytest.approx(rows[case.case.id]["final_dice"], abs=1e-4)
    assert len(loopback.requests) == 2 and not loopback.script


def csv_rows(path):
    import csv

    with open(path, newline="") as handle:
        return [{k: (float(v) if k.startswith("final") else v) for k, v in row.items()}
                for row in csv.DictReader(handle)]


def test_gpu_evaluation_script_runs_against_an_endpoint(bundled, loopback, tmp_path):
    """scripts/run_mllm_eval.sh (the README's script for a machine with the real checkpoint) end to end, with
    the loopback server standing in for vLLM: it runs the agent protocol and reports Dice and actions."""
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    case = bundled[EVAL_CASES[0]]  # its box alone reaches IoU 0.9: the simulated clinician accepts the stop
    loopback.script = [call("add_bbox", bbox_2d=_box_around(case.ground_truth, Letterbox(256, 256))),
                       call("stop_action")]
    env = dict(os.environ, ENDPOINT=loopback.url, MODEL_NAME="MedSAM-Agent-Qwen3-VL-8B-IMISNet", TOOL="litemedsam",
               MANIFEST=str(root / "MedSAMAgentLib" / "data" / "manifest.jsonl"), OUT=str(tmp_path / "run"),
               PYTHON=sys.executable)
    result = subprocess.run(["bash", str(root / "scripts" / "run_mllm_eval.sh"), "--limit", "1", "--no-progress"],
                            cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr + result.stdout
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    dice = summary["overall"]["final_dice"]
    assert f"mean Dice {dice:.4f}" in result.stdout
    assert "box/point actions per episode 1.00 (stop not counted)" in result.stdout
    assert "episodes ended by the model's stop 1" in result.stdout


def test_endpoint_override_shows_the_applied_action_and_unparsable_answers_pause(bundled, litemedsam, loopback):
    case = bundled[NON_SQUARE_CASE]
    letterbox = Letterbox(*case.image.shape[:2])
    clinician = Box(100, 60, 170, 130)
    loopback.script = [call("add_bbox", bbox_2d=[1, 2, 3, 4]), "no idea", "still no idea"]
    policy = make_policy("mllm", endpoint=loopback.url)  # model name from /v1/models
    session = Session(litemedsam, policy, case.image, target=case.case.target)
    status = session.run(OverrideFirst(clinician))
    assert status == "paused"
    assert "no usable tool call in 2 attempt(s)" in session.pause_reason and "still no idea" in session.pause_reason
    assert session.actions == (clinician,)
    messages = loopback.requests[-1]["messages"]
    assert messages[2]["content"] == format_tool_call(clinician, letterbox)  # not the model's overridden box
    assert loopback.requests[0]["model"] == "MedSAM-Agent-Qwen3-VL-8B-IMISNet"
    assert policy.trained_tool.tool == "sam"
    # the session is intact: the clinician can go on, and the agent can be asked again
    loopback.script = [call("stop_action")]
    assert session.run(AcceptAll()) == "stopped"


def test_endpoint_empty_answer_and_http_errors_pause(bundled, litemedsam, loopback):
    case = bundled[NON_SQUARE_CASE]
    policy = make_policy("mllm", endpoint=loopback.url + "/chat/completions", model_name="m")
    session = Session(litemedsam, policy, case.image, target=case.case.target)
    loopback.script = ["", ""]
    assert session.run(AcceptAll()) == "paused" and "answer is empty" in session.pause_reason
    loopback.mode = "http500"
    assert session.run(AcceptAll()) == "paused"
    assert "HTTP 500" in session.pause_reason and "tried 2 times" in session.pause_reason
    loopback.mode = "http404"
    count = len(loopback.requests)
    assert session.run(AcceptAll()) == "paused"
    assert "HTTP 404" in session.pause_reason and "--model-name" in session.pause_reason
    assert len(loopback.requests) == count + 1  # a client error is not retried
    loopback.mode, loopback.script = "answer", [call("add_bbox", bbox_2d=[300, 300, 700, 700]), call("stop_action")]
    assert session.run(AcceptAll()) == "stopped" and len(session.actions) == 1
    # a server whose tool parser moves the call into ``tool_calls`` is read the same way
    session = Session(litemedsam, policy, case.image, target=case.case.target)
    loopback.mode, loopback.script = "tool_calls", [call("add_point", point_2d=[500, 500], point_type="positive")]
    assert policy.propose(session.observation()).action == Point(129, 91, True)


def test_endpoint_timeout_and_refused_connection_pause(bundled, litemedsam, loopback):
    case = bundled[NON_SQUARE_CASE]
    loopback.mode = "slow"
    policy = make_policy("mllm", endpoint=loopback.url, model_name="m", timeout=0.3)
    session = Session(litemedsam, policy, case.image, target=case.case.target)
    assert session.run(AcceptAll()) == "paused"
    assert "did not answer within 0.3 s" in session.pause_reason  # one deadline for the answer: no retry
    assert session.steps == [] and not session.finished

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    policy = make_policy("mllm", endpoint=f"http://127.0.0.1:{port}/v1", model_name="m", timeout=5)
    session = Session(litemedsam, policy, case.image, target=case.case.target)
    assert session.run(AcceptAll()) == "paused"
    assert "connection refused" in session.pause_reason and f"127.0.0.1:{port}" in session.pause_reason
    with pytest.raises(PolicyError, match="http"):
        EndpointBackend("127.0.0.1:8000")


# -- command line and registry ------------------------------------------------------------------------------
def _parse(argv, policy_flag=True):
    parser = argparse.ArgumentParser()
    add_policy_arguments(parser, policy_flag=policy_flag)
    return parser.parse_args(argv)


def test_cli_flags_give_policy_options(monkeypatch):
    monkeypatch.delenv("MEDSAM_AGENT_API_KEY", raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", "from-env")
    args = _parse(["--policy", "mllm", "--endpoint", "http://h:8000/v1", "--model-name", "M", "--timeout", "9"])
    assert policy_options_from_args(args) == {"endpoint": "http://h:8000/v1", "model_name": "M",
                                              "api_key": "from-env", "timeout": 9.0}
    args = _parse(["--policy", "mllm", "--model", "/ckpt/MedSAM-Agent-Qwen3-VL-8B-MedSAM2", "--policy-device", "cpu"])
    assert policy_options_from_args(args) == {"model": "/ckpt/MedSAM-Agent-Qwen3-VL-8B-MedSAM2", "device": "cpu"}
    assert policy_options_from_args(_parse([])) == {}
    for bad in (["--policy", "mllm"], ["--policy", "mllm", "--model", "a", "--endpoint", "http://b"],
                ["--model", "a"]):
        with pytest.raises(ValueError, match="--model"):
            policy_options_from_args(_parse(bad))
    ns = _parse(["--endpoint", "http://h/v1"], policy_flag=False)
    ns.policy = "mllm"
    assert policy_options_from_args(ns)["endpoint"] == "http://h/v1"
    with pytest.raises(PolicyError, match="exactly one"):
        make_policy("mllm")


def test_trained_tool_is_read_from_names():
    assert trained_tool_from_names("MedSAM-Agent-Qwen3-VL-8B-MedSAM2").tool == "medsam2"
    assert trained_tool_from_names(None, "CUHK/MedSAM-Agent-Qwen3-VL-8B-IMISNet").label == "IMIS-Net"
    assert trained_tool_from_names("Qwen3-VL-8B-Instruct") is None


# -- the in-process backend on a tiny Qwen3-VL built here ---------------------------------------------------
CHAT_TEMPLATE = (  # the Qwen3-VL template's rendering of string and image/text content
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message.role + '\\n' }}"
    "{%- if message.content is string %}{{- message.content }}"
    "{%- else %}{%- for part in message.content %}"
    "{%- if part.type == 'image' %}{{- '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{%- elif part.type == 'text' %}{{- part.text }}{%- endif %}"
    "{%- endfor %}{%- endif %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def save_tiny_qwen3vl(directory: Path, answer_body: str | None = None, seed: int = 0) -> Path:
    """A Qwen3-VL checkpoint of real transformers classes with tiny random weights (``tiny_agent_model``).
    With ``answer_body`` every answer is ``<tool_call>{answer_body}</tool_call>``; sampling as released
    configs say."""
    return save_tiny_agent(directory, [answer_body] if answer_body else [], seed=seed, chat_template=CHAT_TEMPLATE,
                           generation=dict(do_sample=True, temperature=0.7))


TINY_BOX = '\n{"name": "add_bbox", "arguments": {"bbox_2d": [250, 250, 750, 750]}}\n'


@pytest.fixture(scope="module")
def tiny_checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("qwen3vl")
    return {
        "random": save_tiny_qwen3vl(root / "MedSAM-Agent-Qwen3-VL-tiny-IMISNet"),
        "box": save_tiny_qwen3vl(root / "MedSAM-Agent-Qwen3-VL-tiny-MedSAM2", TINY_BOX),
    }


def _load(directory, **options):
    with pytest.warns(UserWarning, match="runs on the CPU"):
        return make_policy("mllm", model=str(directory), device="cpu", **options)


def test_in_process_random_model_whole_episodes_end_cleanly(tiny_checkpoints, bundled, litemedsam, tmp_path):
    policy = _load(tiny_checkpoints["random"])
    assert isinstance(policy.backend, TransformersBackend) and policy.trained_tool.tool == "sam"
    assert policy.backend.generation.do_sample is False and policy.backend.generation.max_new_tokens == 128
    case = bundled[NON_SQUARE_CASE]
    log = tmp_path / "random.jsonl"
    with TrajectoryWriter(log) as writer:
        session = Session(litemedsam, policy, case.image, target=case.case.target,
                          ground_truth=case.ground_truth, log=writer)
        hint = Box(90, 70, 170, 120)  # a clinician's box first: the model then sees two images and a tool call
        session.place(hint, hint=True)
        status = session.run(AcceptAll())
        assert status in ("stopped", "limit", "paused")
        if status == "paused":  # what random weights say: garbled text, asked twice, then a clean pause
            assert "no usable tool call in 2 attempt(s)" in session.pause_reason
        session.finish(accepted=False, status=status)
    messages = policy.last_messages  # system, first turn, the hint as a tool call, the overlay turn
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert messages[2]["content"] == format_tool_call(hint, Letterbox(*case.image.shape[:2]))
    [episode] = read_episodes(log)
    assert episode.end["status"] == status and episode.steps[0].applied == hint


def test_in_process_model_runs_a_whole_episode(tiny_checkpoints, bundled, litemedsam, tmp_path):
    policy = _load(tiny_checkpoints["box"])
    assert policy.trained_tool.tool == "medsam2"
    case = bundled[NON_SQUARE_CASE]
    log = tmp_path / "box.jsonl"
    with TrajectoryWriter(log) as writer:
        session = Session(litemedsam, policy, case.image, target=case.case.target,
                          ground_truth=case.ground_truth, log=writer)
        assert session.run(AcceptAll()) == "limit"
    expected = Letterbox(*case.image.shape[:2]).action_from_model(Box(250, 250, 750, 750))
    [episode] = read_episodes(log)
    assert [step.applied for step in episode.steps] == [expected] * 5
    answer = "<tool_call>" + TINY_BOX + "</tool_call>"
    assert all(step.record["proposal"]["raw_text"] == answer for step in episode.steps)
    assert all(step.mask is not None and step.mask.any() for step in episode.steps)
    # the last proposal saw the whole history: five images, the model's own answers as assistant turns
    messages = policy.last_messages
    assert [m["role"] for m in messages] == ["system"] + ["user", "assistant"] * 4 + ["user"]
    assert all(m["content"] == answer for m in messages[2::2][:4])
    assert np.array_equal(messages[-1]["content"][0]["image"], observation_image(case.image, session.mask))


def test_in_process_loader_errors(tmp_path, tiny_checkpoints, monkeypatch):
    with pytest.raises(BackendError, match="not found"):
        TransformersBackend(tmp_path / "nowhere")
    other = tmp_path / "llama"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(BackendError, match="'llama' checkpoint.*qwen3_vl"):
        TransformersBackend(other)
    empty = tmp_path / "no-weights"
    empty.mkdir()
    (empty / "config.json").write_text(json.dumps({"model_type": "qwen3_vl"}))
    with pytest.raises(BackendError, match="no \\*.safetensors"):
        TransformersBackend(empty)
    monkeypatch.setattr(mllm_backends, "available_memory", lambda device: 1024**2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(BackendError, match="needs about .* GiB of RAM but only 0.0 GiB is free.*--endpoint"):
            TransformersBackend(tiny_checkpoints["box"], device="cpu")

"""Fault suite, part 2: a policy server on loopback that refuses, errs, answers garbage, stalls and trickles
(``fault_server.FaultServer``, 127.0.0.1 only, every fault bounded in time). What must hold: one deadline per
model answer, the reason printed and logged, a paused episode never accepted nor exported, and ``evaluate``
counting an episode that did not run as an error (exit status 1), never as a Dice of 0."""

from __future__ import annotations

import json
import time

import pytest

from MedSAMAgentLib import cli
from MedSAMAgentLib.manifest import BUNDLED_DATA
from MedSAMAgentLib.policies.mllm_backends import BackendError, EndpointBackend
from MedSAMAgentLib.trajectory import read_episodes

from fault_server import FaultServer, free_port

HOLD = 6.0  # how long a stalling or trickling server keeps the connection at most
MESSAGES = [{"role": "user", "content": "hello"}]


@pytest.fixture(scope="module")
def server():
    with FaultServer("answer", hold=HOLD, interval=0.1) as running:
        yield running


@pytest.mark.parametrize("mode, says", [
    ("error", "answered HTTP 500"),
    ("garbage", "did not answer JSON"),
    ("nochoices", r"sent no choices\[0\]\.message"),
])
def test_a_server_that_errs_gives_a_named_reason(server, mode, says):
    backend = EndpointBackend(server.url_for(mode), model_name="m", timeout=5)
    with pytest.raises(BackendError, match=says) as raised:
        backend.generate(MESSAGES)
    assert "127.0.0.1" in str(raised.value)


def test_a_refused_connection_names_the_server():
    url = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(BackendError, match="connection refused .*is vLLM/SGLang running"):
        EndpointBackend(url, model_name="m", timeout=5).generate(MESSAGES)


@pytest.mark.parametrize("mode", ["stall", "trickle"])
def test_one_deadline_covers_the_whole_answer(server, mode):
    """A silent server, and one that sends a byte every 0.1 s (which per-read timeouts never catch), both
    end at the deadline: the call returns long before the server would have let go."""
    backend = EndpointBackend(server.url_for(mode), model_name="m", timeout=1.0)
    started = time.monotonic()
    with pytest.raises(BackendError, match=r"did not answer within 1 s \(--timeout covers connecting"):
        backend.generate(MESSAGES)
    assert time.monotonic() - started < HOLD  # it did not wait for the server to give up


def test_nonsense_answers_pause_with_the_reason(server, bundled, litemedsam):
    from MedSAMAgentLib.registry import make_policy
    from MedSAMAgentLib.session import Session

    case = bundled["medscribble/BTCV/0763890-Image_axis1_maxslice"]
    policy = make_policy("mllm", endpoint=server.url_for("nonsense"), model_name="m", timeout=5)
    session = Session(litemedsam, policy, case.image, target=case.case.target)
    with pytest.raises(Exception, match="no usable tool call"):
        session.propose()
    assert "no usable tool call" in session.pause_reason  # what the Slicer panel shows


def test_demo_with_the_server_down_says_why_and_logs_it(tmp_path, capsys):
    out = tmp_path / "demo"
    url = f"http://127.0.0.1:{free_port()}/v1"
    code = cli.main(["demo", "--out", str(out), "--policy", "mllm", "--endpoint", url, "--timeout", "3"])
    printed = capsys.readouterr().out
    assert code == 1 and "paused: cannot reach the policy server" in printed and "connection refused" in printed
    (episode,) = read_episodes(out / "trajectory.jsonl")
    assert episode.end["status"] == "paused" and episode.end["accepted"] is False
    assert "connection refused" in episode.end["reason"]
    assert not (out / "trajectory.jsonl.partial").exists()


def test_a_demo_that_fails_keeps_the_earlier_runs_log(tmp_path):
    out = tmp_path / "demo"
    out.mkdir()
    earlier = out / "trajectory.jsonl"
    earlier.write_text('{"type": "episode", "episode_id": "earlier"}\n')
    assert cli.main(["demo", "--out", str(out), "--policy", "mllm", "--endpoint", "ftp://nowhere"]) == 2
    assert earlier.read_text() == '{"type": "episode", "episode_id": "earlier"}\n'


def test_a_paused_episode_is_never_exported(server, bundled, litemedsam, tmp_path):
    """Even a log written by the old code (``status: paused, accepted: true``) is not training data."""
    from MedSAMAgentLib.actions import Box
    from MedSAMAgentLib.policies.builtin import BuiltinPolicy
    from MedSAMAgentLib.session import Session
    from MedSAMAgentLib.trajectories.export import export
    from MedSAMAgentLib.trajectory import TrajectoryWriter

    case = bundled["medscribble/BTCV/0763890-Image_axis1_maxslice"]
    path = tmp_path / "logs" / "paused.jsonl"
    with TrajectoryWriter(path) as log:
        session = Session(litemedsam, BuiltinPolicy(), case.image, target=case.case.target, log=log)
        session.place(Box(60, 60, 200, 200))
        session.finish(accepted=True, status="paused", reason="the server went away")
    (episode,) = read_episodes(path)
    assert episode.end["accepted"] is False and episode.end["reason"] == "the server went away"
    lines = path.read_text().splitlines()
    lines[-1] = lines[-1].replace('"accepted":false', '"accepted":true')  # the old, wrong record
    path.write_text("\n".join(lines) + "\n")
    report = export([path.parent], "llamafactory", tmp_path / "sft")
    assert report.samples == 0 and report.skipped == {"episodes that paused, failed or were interrupted": 1}


def test_evaluate_counts_an_episode_that_did_not_run_as_an_error(tmp_path, capsys):
    url = f"http://127.0.0.1:{free_port()}/v1"
    out = tmp_path / "eval"
    code = cli.main(["evaluate", "--manifest", str(BUNDLED_DATA / "manifest.jsonl"), "--protocol", "agent",
                     "--policy", "mllm", "--endpoint", url, "--model-name", "m", "--limit", "2", "--no-progress",
                     "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 1 and "2 case(s) did not run" in captured.err and "connection refused" in captured.err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["overall"] == {"n": 0} and summary["groups"] == {} and len(summary["errors"]) == 2
    assert all("the policy paused: cannot reach" in e["reason"] for e in summary["errors"])
    assert "ERRORS: 2 case(s) did not run" in captured.out and "no case was measured" in captured.out
    episodes = read_episodes(out / "trajectories.jsonl")
    assert [e.end["status"] for e in episodes] == ["paused", "paused"]
    assert all(not e.accepted and "connection refused" in e.end["reason"] for e in episodes)


def test_two_runs_on_one_folder_refuse_and_a_read_only_folder_is_named_first(tmp_path):
    from MedSAMAgentLib.evaluation import evaluate_manifest
    from MedSAMAgentLib.outputs import OutputError, OutputLock

    with OutputLock(tmp_path / "busy", "evaluate"):
        with pytest.raises(OutputError, match=r"another medsam-agent run \(pid \d+ evaluate\) is writing to"):
            evaluate_manifest(BUNDLED_DATA / "manifest.jsonl", "clicks", tmp_path / "busy", tool=object())
    (tmp_path / "file").write_text("")
    with pytest.raises(OutputError, match="cannot write to the output folder"):
        evaluate_manifest(BUNDLED_DATA / "manifest.jsonl", "clicks", tmp_path / "file" / "sub", tool=object())

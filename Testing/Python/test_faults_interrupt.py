"""Fault suite, part 3: ``demo``, ``evaluate`` and ``trajectories generate`` stopped mid-run by kill -9 and by
SIGINT (Ctrl-C), then what is on disk is checked: an earlier run's files are whole, a summary is this run's
(marked partial) or the earlier one together with its own log, never a stale one next to a new log, and
every finished log is complete.

The agent runs use a loopback policy server that answers after ``DELAY`` seconds, so "mid-run" is a known
moment (a request in flight) rather than a guess at timing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from MedSAMAgentLib.manifest import BUNDLED_DATA
from MedSAMAgentLib.trajectory import read_episodes

from fault_server import FaultServer

ROOT = Path(__file__).resolve().parents[2]
DELAY = 1.0  # seconds the server takes per answer
WAIT = 180  # at most this long for a run to reach the moment it is stopped (a busy CI machine)
EARLIER_LOG = '{"type":"episode","episode_id":"earlier-run"}\n'
EARLIER_SUMMARY = '{"earlier": true}\n'


def start(args: list[str]) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("MEDSAM_AGENT_DEBUG", None)
    # a run started in the background by a shell inherits SIGINT ignored, and Python then never raises
    # KeyboardInterrupt: the child gets the default back, as in a terminal
    return subprocess.Popen([sys.executable, "-m", "MedSAMAgentLib.cli", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def wait_for(condition, process: subprocess.Popen) -> None:
    ends = time.monotonic() + WAIT
    while not condition():
        if process.poll() is not None:
            raise AssertionError(f"the run ended (rc {process.returncode}) before it was stopped:\n"
                                 f"{process.stdout.read()}")
        if time.monotonic() > ends:
            process.kill()
            raise AssertionError("the run never reached the moment to stop it")
        time.sleep(0.1)


def stop(process: subprocess.Popen, how: str) -> tuple[int, str]:
    process.send_signal(signal.SIGKILL if how == "kill" else signal.SIGINT)
    output, _ = process.communicate(timeout=WAIT)
    return process.returncode, output


@pytest.fixture
def slow_server():
    with FaultServer("answer", delay=DELAY) as server:
        yield server


@pytest.mark.parametrize("how", ["kill", "sigint"])
def test_demo_stopped_mid_run_keeps_the_earlier_log(tmp_path, slow_server, how):
    out = tmp_path / "demo"
    out.mkdir()
    (out / "trajectory.jsonl").write_text(EARLIER_LOG)
    process = start(["demo", "--out", str(out), "--policy", "mllm", "--endpoint", slow_server.url])
    wait_for(lambda: slow_server.requests >= 2, process)  # one step done, the next answer in flight
    code, output = stop(process, how)
    assert code == (-signal.SIGKILL if how == "kill" else 130), output
    if how == "sigint":
        assert "medsam-agent: interrupted" in output
    assert (out / "trajectory.jsonl").read_text() == EARLIER_LOG  # untouched: this run never finished
    (episode,) = read_episodes(out / "trajectory.jsonl.partial")  # what it did is readable, step by step
    assert len(episode.steps) >= 1
    assert episode.end is None if how == "kill" else episode.end["status"] == "interrupted"
    if how == "sigint":
        assert not list(out.glob(".*.tmp-*"))  # an interrupted write cleans up its temporary file


@pytest.mark.parametrize("how", ["kill", "sigint"])
def test_evaluate_stopped_mid_run_leaves_a_partial_summary_or_the_earlier_pair(tmp_path, slow_server, how):
    out = tmp_path / "eval"
    out.mkdir()
    (out / "summary.json").write_text(EARLIER_SUMMARY)
    (out / "trajectories.jsonl").write_text(EARLIER_LOG)
    process = start(["evaluate", "--manifest", str(BUNDLED_DATA / "manifest.jsonl"), "--protocol", "agent",
                     "--policy", "mllm", "--endpoint", slow_server.url, "--model-name", "m", "--limit", "3",
                     "--effort-steps", "0",  # a case is done when its episode ends (no effort continuation)
                     "--no-progress", "--out", str(out)])
    partial = out / "trajectories.jsonl.partial"
    wait_for(lambda: partial.exists() and partial.read_text().count('"type":"end"') >= 1, process)
    code, output = stop(process, how)
    if how == "kill":
        assert code == -signal.SIGKILL
        assert (out / "summary.json").read_text() == EARLIER_SUMMARY  # the earlier run's pair, still matching
        assert (out / "trajectories.jsonl").read_text() == EARLIER_LOG
        assert read_episodes(partial)  # the killed run's episodes so far, readable
        return
    assert code == 130, output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["partial"] is True and summary["planned_cases"] == 3
    finished = summary["finished_cases"]
    assert 1 <= finished < 3 and summary["overall"]["n"] + len(summary["errors"]) == finished
    episodes = read_episodes(out / "trajectories.jsonl")  # this run's log, moved into place with its summary
    assert [e.end["status"] for e in episodes if e.end][-1] == "interrupted" or len(episodes) == finished
    assert all(not e.accepted for e in episodes) and not partial.exists()
    assert f"interrupted: partial summary of {finished} of 3 cases written to" in output


@pytest.mark.parametrize("how", ["kill", "sigint"])
def test_generate_stopped_mid_run_leaves_only_complete_logs(tmp_path, how):
    from MedSAMAgentLib.trajectories.generate import GenerateSettings, is_finished, log_path
    from MedSAMAgentLib.manifest import bundled_manifest

    out = tmp_path / "gen"
    process = start(["trajectories", "generate", "--manifest", str(BUNDLED_DATA / "manifest.jsonl"), "--out",
                     str(out), "--no-progress", "--max-steps", "2"])
    wait_for(lambda: len(list((out / "logs").glob("*.jsonl"))) >= 1 if (out / "logs").is_dir() else False, process)
    code, output = stop(process, how)
    assert code == (-signal.SIGKILL if how == "kill" else 130), output
    settings = GenerateSettings(max_steps=2)
    logs = sorted((out / "logs").glob("*.jsonl"))
    assert logs
    cases = {log_path(out, c.id): c.id for c in bundled_manifest()}
    for log in logs:  # a log under its final name is always complete
        assert is_finished(log, cases[log], settings)
    from PIL import Image

    for image in (out / "images").glob("*.png"):  # under their real names, images are whole
        if not image.name.startswith("."):  # a kill -9 may leave a hidden .tmp- file, never a torn image
            with Image.open(image) as handle:
                handle.load()
    summary = out / "generate.json"
    if how == "kill":
        assert not summary.exists()
    else:
        recorded = json.loads(summary.read_text())
        assert recorded["partial"] is True and {c["case_id"] for c in recorded["cases"]} >= set(
            cases[log] for log in logs)

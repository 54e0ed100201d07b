"""Expert trajectories -> training data: generation (progress constraint, stop, determinism, resume), export to
LLaMA-Factory JSON and verl parquet loaded back with the trainers' readers, clinician-session export, stats.

Fast: one small bundled case (non-square, so the letterbox padding is exercised). The run on all of
shared/data's 2D rows is a documented command; set MEDSAM_AGENT_FULL_TRAJECTORIES=1 to run it here too.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from MedSAMAgentLib.actions import Box, Point, Stop
from MedSAMAgentLib.geometry import Letterbox
from MedSAMAgentLib.manifest import BUNDLED_DATA, SHARED_DATA
from MedSAMAgentLib.policies.mllm_prompt import observation_image
from MedSAMAgentLib.policies.oracle import OracleExpert, OracleSettings
from MedSAMAgentLib.rewards import compute_score
from MedSAMAgentLib.session import Session
from MedSAMAgentLib.toolcall import parse_tool_call
from MedSAMAgentLib.trajectories.export import export_llamafactory, export_verl
from MedSAMAgentLib.trajectories.generate import (
    GenerateSettings,
    comparable_records,
    generate,
    log_path,
)
from MedSAMAgentLib.trajectories.stats import collect, plot
from MedSAMAgentLib.trajectory import TrajectoryWriter, read_episodes

CASE = "sam-med2d/s0114_111_aorta_000"  # 181 x 258
MANIFEST = BUNDLED_DATA / "manifest.jsonl"
SETTINGS = GenerateSettings(paradigms=("box-to-point", "sequential-click"), seed=7, resample=2)
CHEAP = GenerateSettings(paradigms=("box-to-point",), seed=11, max_steps=2, resample=0)  # determinism runs


def decode_png(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image)


@pytest.fixture(scope="module")
def generated(tmp_path_factory, litemedsam):
    out = tmp_path_factory.mktemp("generated")
    report = generate(MANIFEST, out, SETTINGS, tool=litemedsam, progress=False, cases=[CASE])
    assert report.count("done") == 1, report.summary()
    return out


@pytest.fixture(scope="module")
def episodes(generated):
    return read_episodes(log_path(generated, CASE))


# -- generation ---------------------------------------------------------------------------------------------
def test_one_log_per_case_with_both_paradigms(generated, episodes):
    assert sorted(p.name for p in (generated / "logs").iterdir()) == [log_path(generated, CASE).name]
    assert [e.header["meta"]["paradigm"] for e in episodes] == ["box-to-point", "sequential-click"]
    for episode in episodes:
        meta = episode.header["meta"]
        assert meta["case_id"] == CASE and Path(meta["manifest"]) == MANIFEST.resolve()
        assert isinstance(meta["seed"], int)
        assert (log_path(generated, CASE).parent / meta["image_path"]).is_file()
        assert episode.accepted and episode.end["status"] == "stopped"
    assert isinstance(episodes[0].steps[0].applied, Box)
    assert isinstance(episodes[1].steps[0].applied, Point) and episodes[1].steps[0].applied.positive


def test_progress_constraint_and_stop(episodes):
    tau = SETTINGS.tau
    for episode in episodes:
        steps = episode.steps
        assert isinstance(steps[-1].applied, Stop), "every generated episode ends with the stop action"
        prompts = [s for s in steps if not isinstance(s.applied, Stop)]
        assert 1 <= len(prompts) <= SETTINGS.max_steps
        assert all(s.decision == "accept" and s.record["actor"] == "agent" for s in steps)
        ious = [s.record["iou"] for s in prompts]
        for before, after in zip(ious, ious[1:]):
            assert after - before >= tau - 1e-9, f"a kept click raised IoU by only {after - before:.4f}"
        # stop because the mask is good enough, the limit was reached, or no click helps (not tested here)
        stop_reason = steps[-1].record["proposal"]["reason"]
        assert ious[-1] >= SETTINGS.stop_iou or len(prompts) == SETTINGS.max_steps or "no click" in stop_reason


def test_same_seed_same_files_and_resume(tmp_path, litemedsam):
    """Identical records except the wall-clock keys 'created' and 'timings'; a rerun skips finished cases
    and redoes a half-written log."""
    once, again = tmp_path / "once", tmp_path / "again"
    generate(MANIFEST, once, CHEAP, tool=litemedsam, progress=False, cases=[CASE])
    generate(MANIFEST, again, CHEAP, tool=litemedsam, progress=False, cases=[CASE])
    first, second = log_path(once, CASE), log_path(again, CASE)
    assert list(comparable_records(first)) == list(comparable_records(second))
    assert first.read_text() != second.read_text()  # the wall-clock keys stay in the logs
    for folder in ("images", "masks"):
        name = second.with_suffix(".png").name
        assert (once / folder / name).read_bytes() == (again / folder / name).read_bytes()

    report = generate(MANIFEST, again, CHEAP, progress=False, cases=[CASE])  # no tool needed: all finished
    assert [r.status for r in report.results] == ["skipped"]

    lines = second.read_text().splitlines()
    second.write_text("\n".join(lines[: len(lines) // 2]) + "\n")  # a run killed half-way
    report = generate(MANIFEST, again, CHEAP, tool=litemedsam, progress=False, cases=[CASE])
    assert [r.status for r in report.results] == ["done"]
    assert list(comparable_records(first)) == list(comparable_records(second))

    other = GenerateSettings(paradigms=("box-to-point",), seed=8, max_steps=1, resample=0)  # another request
    report = generate(MANIFEST, again, other, tool=litemedsam, progress=False, cases=[CASE])
    assert [r.status for r in report.results] == ["done"]
    assert len(read_episodes(second)) == 1


# -- export: LLaMA-Factory ----------------------------------------------------------------------------------
def check_sharegpt(out: Path, episodes_by_id: dict, images_by_id: dict) -> list[dict]:
    import datasets

    info = json.loads((out / "dataset_info.json").read_text())["medsam_agent_sft"]
    assert info["formatting"] == "sharegpt"
    assert info["columns"] == {"messages": "messages", "images": "images"}
    assert info["tags"]["system_tag"] == "system" and info["tags"]["assistant_tag"] == "assistant"
    data = datasets.load_dataset("json", data_files=str(out / info["file_name"]), split="train",
                                 cache_dir=str(out / ".hf-cache"))
    assert set(data.column_names) >= {"messages", "images"}
    for sample in data:
        messages, images = sample["messages"], sample["images"]
        assert sum(m["content"].count("<image>") for m in messages) == len(images) > 0
        for name in images:
            with Image.open(out / name) as image:
                assert image.size == (512, 512) and image.mode == "RGB"
        roles = [m["role"] for m in messages]
        assert roles[0] == "system" and roles[-1] == "assistant"
        assert roles[1:] == ["user", "assistant"] * (len(roles[1:]) // 2)
        episode = episodes_by_id[sample["id"].split("-t")[0]]
        image = images_by_id[episode.episode_id]
        letterbox = Letterbox(*image.shape[:2])
        assert np.array_equal(np.asarray(Image.open(out / images[0])), observation_image(image))
        logged = [s.applied for s in episode.steps if s.applied is not None]
        said = [parse_tool_call(m["content"], letterbox) for m in messages if m["role"] == "assistant"]
        if "-t" not in sample["id"]:
            assert len(said) == len(logged)
            for a, b in zip(said, logged):
                assert type(a) is type(b)
                if isinstance(a, Box):
                    assert np.allclose(a.as_list(), b.as_list(), atol=1.0)
                elif isinstance(a, Point):
                    assert a.positive == b.positive and abs(a.x - b.x) <= 1 and abs(a.y - b.y) <= 1
            # the overlay on turn k is the mask after action k, blended as the policy sees it
            for k, step in enumerate(s for s in episode.steps if not isinstance(s.applied, Stop)):
                overlay = np.asarray(Image.open(out / images[k + 1]))
                assert np.array_equal(overlay, observation_image(image, step.mask))
    return list(data)


def test_llamafactory_export_loads_with_datasets(generated, episodes, tmp_path):
    report = export_llamafactory([generated / "logs"], tmp_path / "sft")
    assert report.samples == len(episodes) and not report.skipped
    image = np.asarray(Image.open(generated / "images" / log_path(generated, CASE).with_suffix(".png").name))
    samples = check_sharegpt(tmp_path / "sft", {e.episode_id: e for e in episodes},
                             {e.episode_id: image for e in episodes})
    assert all(s["messages"][-1]["content"].count("stop_action") == 1 for s in samples)


# -- export: verl -------------------------------------------------------------------------------------------
def test_verl_export_loads_with_pyarrow(generated, episodes, tmp_path, bundled):
    import pyarrow as pa
    import pyarrow.parquet as pq

    report = export_verl([generated / "logs"], tmp_path / "rl")
    table = pq.read_table(report.files[0])
    assert table.num_rows == 1  # both episodes are the same task
    for name in ("data_source", "prompt", "images", "ability", "reward_model", "extra_info", "id",
                 "target_description", "mask", "engine_image"):
        assert name in table.column_names
    assert table.schema.field("mask").type == pa.binary()
    assert table.schema.field("reward_model").type.field("ground_truth").type == pa.binary()
    row = table.to_pylist()[0]
    case = bundled[CASE]
    assert row["id"] == CASE and row["target_description"] == case.case.target
    assert [m["role"] for m in row["prompt"]] == ["system", "user"]
    assert row["prompt"][1]["content"].count("<image>") == len(row["images"]) == 1
    assert decode_png(row["images"][0]["bytes"]).shape == (512, 512, 3)
    mask = decode_png(row["mask"]) > 0
    assert mask.shape == case.ground_truth.shape == (181, 258)
    assert np.array_equal(mask, case.ground_truth)
    assert row["reward_model"]["ground_truth"] == row["mask"]
    assert np.array_equal(decode_png(row["engine_image"]), case.image)
    info = row["extra_info"]
    assert info["expert_episodes"] == 2 and (info["height"], info["width"]) == (181, 258)
    # the reward of the expert's own episode, from the text the policy would emit plus the logged IoU/Dice
    episode = episodes[0]
    letterbox = Letterbox(181, 258)
    from MedSAMAgentLib.toolcall import format_tool_call

    text = "".join(format_tool_call(s.applied, letterbox) for s in episode.steps)
    prompts = [s for s in episode.steps if not isinstance(s.applied, Stop)]
    score = compute_score(row["data_source"], text, row["reward_model"]["ground_truth"],
                          {"ious": [s.record["iou"] for s in prompts], "dices": [s.record["dice"] for s in prompts]})
    assert 0.2 <= score <= 1.0


# -- a clinician's session, as the Slicer panel logs it -----------------------------------------------------
def test_clinician_session_export(tmp_path, litemedsam, bundled):
    case = bundled[CASE]
    gt = case.ground_truth
    log_file = tmp_path / "slicer" / "session.jsonl"
    with TrajectoryWriter(log_file) as log:
        agent = OracleExpert(gt, seed=3, settings=OracleSettings(jitter=0.3))
        session = Session(litemedsam, agent, case.image, target=case.case.target, log=log)  # no ground truth
        session.propose()
        session.accept()
        proposal = session.propose()
        moved = proposal.action if isinstance(proposal.action, Point) else Point(120, 90, True)
        correction = Point(moved.x + 2, moved.y, moved.positive)
        session.override(correction)  # the clinician moves the agent's click
        session.finish(accepted=True)
    episode = read_episodes(log_file)[0]
    assert (log_file.parent / episode.header["meta"]["image_path"]).is_file(), "Session saves the image"
    final = episode.final_mask

    report = export_llamafactory([log_file], tmp_path / "sft", only_corrections=True)
    assert report.samples == 1
    check_sharegpt(tmp_path / "sft", {episode.episode_id: episode}, {episode.episode_id: case.image})
    sample = json.loads((tmp_path / "sft" / "medsam_agent_sft.json").read_text())[0]
    said = parse_tool_call(sample["messages"][-1]["content"], Letterbox(*case.image.shape[:2]))
    assert isinstance(said, Point) and abs(said.x - correction.x) <= 1 and abs(said.y - correction.y) <= 1

    import pyarrow.parquet as pq

    rl = export_verl([log_file], tmp_path / "rl")
    row = pq.read_table(rl.files[0]).to_pylist()[0]
    assert row["extra_info"]["ground_truth_source"] == "accepted final mask"
    assert np.array_equal(decode_png(row["mask"]) > 0, final)

    # an episode the clinician did not accept is not training data
    with TrajectoryWriter(log_file) as log:
        session = Session(litemedsam, OracleExpert(gt), case.image, target=case.case.target, log=log)
        session.propose()
        session.accept()
        session.finish(accepted=False, status="discarded")
    report = export_llamafactory([log_file], tmp_path / "sft2")
    assert report.samples == 1 and report.skipped == {"episodes not accepted": 1}


def test_a_propagated_episode_that_a_correction_replaced_is_not_exported(tmp_path, litemedsam, bundled):
    """The Slicer panel's 3D run: a propagated slice, accepted with the volume, that the clinician later redid
    in a session of its own (its header names it in ``meta.corrects_episode``, in another log file): only the
    correction is training data, in both formats; an unrelated propagated slice still is."""
    case = bundled[CASE]
    gt = case.ground_truth
    propagation_log, correction_log = tmp_path / "run.jsonl", tmp_path / "later" / "fix.jsonl"
    ids = {}
    with TrajectoryWriter(propagation_log) as log:
        for name, seed in (("replaced", 1), ("kept", 2)):  # two propagated slices, accepted at Finish
            session = Session(litemedsam, OracleExpert(gt, seed=seed), case.image, target=case.case.target, log=log,
                              meta={"source": "slicer", "origin": "propagated"})
            session.propose()
            session.accept()
            session.finish(accepted=True)
            ids[name] = session.episode_id
    with TrajectoryWriter(correction_log) as log:
        session = Session(litemedsam, OracleExpert(gt, seed=3), case.image, target=case.case.target, log=log,
                          meta={"source": "slicer", "corrects_episode": ids["replaced"]})
        session.propose()
        session.override(Box(40, 60, 150, 170))  # the clinician's own box
        session.finish(accepted=True)
        ids["correction"] = session.episode_id

    reason = "episodes a clinician's later correction replaced (meta.corrects_episode)"
    report = export_llamafactory([tmp_path], tmp_path / "sft")
    assert report.episodes == 2 and report.skipped == {reason: 1}, report.summary()
    samples = json.loads((tmp_path / "sft" / "medsam_agent_sft.json").read_text())
    assert len(samples) == 2
    letterbox = Letterbox(*case.image.shape[:2])
    first = [parse_tool_call(next(m["content"] for m in s["messages"] if m["role"] == "assistant"), letterbox)
             for s in samples]
    fixes = [a for a in first if isinstance(a, Box) and abs(a.x1 - 40) <= 1 and abs(a.y2 - 170) <= 1]
    assert len(fixes) == 1, first  # the correction's own box is exported
    report = export_llamafactory([tmp_path], tmp_path / "sft-corrections", only_corrections=True)
    assert report.episodes == 1 and report.samples == 1

    import pyarrow.parquet as pq

    rl = export_verl([tmp_path], tmp_path / "rl")
    rows = pq.read_table(rl.files[0]).to_pylist()
    exported = {e for row in rows for e in row["extra_info"]["episode_ids"]}
    assert exported == {ids["kept"], ids["correction"]} and rl.skipped == {reason: 1}
    # only its own log given: the propagated episode counts again (nothing there names it as corrected)
    assert export_llamafactory([propagation_log], tmp_path / "sft-alone").episodes == 2


# -- stats --------------------------------------------------------------------------------------------------
def test_stats_and_plot(generated, episodes, tmp_path):
    stats = collect([generated / "logs"])
    assert stats.episodes == 2 and stats.accepted == 2
    assert stats.actions["stop"] == [1, 1] and stats.actions["box"] == [1, 0]
    assert stats.override_rate == 0.0
    assert len(stats.ious[0]) == 2 and len(stats.rewards) == 2
    assert "clinician overrode the agent: 0.0%" in stats.text()
    path = plot(stats, tmp_path / "stats.png")
    with Image.open(path) as image:
        assert image.size[0] > 500


def test_cli_wiring(generated, tmp_path, capsys):
    from MedSAMAgentLib.cli import main

    assert main(["trajectories", "stats", str(generated / "logs"), "--plot", str(tmp_path / "s.png")]) == 0
    assert "2 episodes" in capsys.readouterr().out
    assert main(["trajectories", "export", str(generated / "logs"), "--format", "verl", "--out",
                 str(tmp_path / "rl"), "--no-progress"]) == 0
    assert (tmp_path / "rl" / "medsam_agent_rl.parquet").is_file()
    assert main(["trajectories", "export", str(tmp_path / "nothing-here"), "--format", "verl", "--out",
                 str(tmp_path / "rl2")]) == 2  # one clear error line, no traceback
    assert "no log file or folder" in capsys.readouterr().err


@pytest.mark.skipif(not os.environ.get("MEDSAM_AGENT_FULL_TRAJECTORIES") or not SHARED_DATA.exists(),
                    reason="set MEDSAM_AGENT_FULL_TRAJECTORIES=1 (and have ../shared/data) for the full run")
def test_full_shared_data_run(tmp_path):
    """medsam-agent trajectories generate --manifest ../shared/data/manifest.jsonl --paradigm both --workers 2"""
    out = tmp_path / "full"
    report = generate(SHARED_DATA / "manifest.jsonl", out, GenerateSettings(paradigms=("box-to-point",
                      "sequential-click")), workers=2, progress=False)
    assert report.count("failed") == 0, report.summary()
    assert export_llamafactory([out / "logs"], out / "sft").samples == report.episodes
    assert export_verl([out / "logs"], out / "rl").samples == len(report.results)


def test_worker_processes_give_the_same_files(tmp_path):
    """--workers N: each process builds its own tool; the files do not depend on N. (The serial run builds
    its own tool too, as the command does: the shared test tool's caches hold outputs computed at another
    torch thread count, which differ in the last bits.)"""
    cases = [CASE, "medscribble/HipXRay/image_054_axis0_midslice"]
    parallel = generate(MANIFEST, tmp_path / "parallel", CHEAP, workers=2, progress=False, cases=cases)
    assert [r.status for r in parallel.results] == ["done", "done"], parallel.summary()
    generate(MANIFEST, tmp_path / "serial", CHEAP, workers=1, progress=False, cases=cases)
    for case in cases:
        assert list(comparable_records(log_path(tmp_path / "parallel", case))) == \
            list(comparable_records(log_path(tmp_path / "serial", case)))


def test_min_iou_drops_weak_expert_episodes(generated, episodes, tmp_path):
    from MedSAMAgentLib.metrics import iou

    finals = [iou(e.final_mask, np.asarray(Image.open(log_path(generated, CASE).parent /
                                                      e.header["meta"]["mask_path"])) > 0) for e in episodes]
    threshold = (min(finals) + max(finals)) / 2 if min(finals) < max(finals) else max(finals) + 0.01
    report = export_llamafactory([generated / "logs"], tmp_path / "sft", min_iou=threshold)
    assert report.samples == sum(f >= threshold for f in finals)
    assert report.skipped == {f"episodes ending below IoU {threshold:g}": sum(f < threshold for f in finals)}

"""SAM2 / MedSAM2 memory propagation (``propagation_sam2``) with a tiny random-weight SAM2.1 built from the
real ``sam2`` classes and config (``test_sam_tools.tiny_sam2_config``), saved like the release and loaded
through the registry as users load MedSAM2, on a bundled real CT volume (TotalSegmentator, gallbladder).

Random weights say nothing about the masks; these tests pin what the session does around the network: the
key prompt seeds SAM2's memory, frames in both directions are tracked by the video predictor from the
normalised slices in memory, a correction becomes a conditioning frame and changes only onward slices, undo
restores the predictor's state exactly, propagation stops where SAM2's object score says the structure is
absent, and every slice's steps log and export as 2D episodes. The random object-score head is given a
positive bias (the structure "present" everywhere) so that propagation has something to carry.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("sam2")

from MedSAMAgentLib import registry  # noqa: E402
from MedSAMAgentLib.actions import Point  # noqa: E402
from MedSAMAgentLib.manifest import bundled_manifest  # noqa: E402
from MedSAMAgentLib.policies.oracle import gt_box  # noqa: E402
from MedSAMAgentLib.propagation import VolumeSession  # noqa: E402
from MedSAMAgentLib.propagation_sam2 import (MEMORY_POLICY, SAM2VolumeSession, uses_video_memory,  # noqa: E402
                                             video_predictor, volume_session_for)
from MedSAMAgentLib.volumes import Volume, load_volume_case  # noqa: E402
from test_sam_tools import tiny_sam2_config  # noqa: E402

CASE = "volumes/totalseg_ct_gallbladder"
IMAGE_SIZE = 256  # a small input keeps the video predictor quick on a CPU (a multiple of 32, as the tool needs)
KEEP = slice(4, 13)  # nine slices of the volume around the gallbladder's largest one


def tiny_medsam2_checkpoint(folder):
    """A tiny random SAM2.1 saved like the release ({"model": state_dict}), its object-score head biased to
    "present"; returns (checkpoint, config)."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    config = tiny_sam2_config(folder / "tiny_sam2.yaml")
    torch.manual_seed(0)
    net = instantiate(OmegaConf.load(config).model, _recursive_=True)
    torch.nn.init.constant_(net.sam_mask_decoder.pred_obj_score_head.layers[-1].bias, 5.0)
    path = folder / "tiny_sam2.pt"
    torch.save({"model": net.state_dict()}, path)
    return path, config


def tiny_medsam2(folder):
    """The tiny network as users load MedSAM2: through the registry, from the checkpoint file."""
    path, config = tiny_medsam2_checkpoint(folder)
    return registry.make_tool("medsam2", checkpoint=str(path), device="cpu", config=str(config),
                              image_size=str(IMAGE_SIZE), accept_licence="true")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return tiny_medsam2_checkpoint(tmp_path_factory.mktemp("tiny_sam2_video"))


@pytest.fixture(scope="module")
def tool(checkpoint):
    path, config = checkpoint
    return registry.make_tool("medsam2", checkpoint=str(path), device="cpu", config=str(config),
                              image_size=str(IMAGE_SIZE), accept_licence="true")


@pytest.fixture(scope="module")
def case():
    found = next(c for c in bundled_manifest() if c.id == CASE)
    volume, gt = load_volume_case(found)
    small = Volume(volume.array[KEEP].copy(), None, 0, CASE)  # already normalised once for the whole volume
    return found, small, gt[KEEP].copy()


def key_of(gt) -> int:
    return int(np.argmax(gt.sum(axis=(1, 2))))


def started(tool, volume, gt, **options) -> SAM2VolumeSession:
    session = volume_session_for(tool, volume, target="gallbladder", ground_truth=gt, **options)
    assert isinstance(session, SAM2VolumeSession)
    session.start(key_of(gt), gt_box(gt[key_of(gt)]))
    return session


def masks(session) -> dict:
    return {k: session.slice_mask(k).copy() for k in range(session.volume.slices)}


def test_sam2_tools_propagate_with_their_memory_the_others_with_the_neighbour(tool, litemedsam, case):
    _, volume, _ = case
    assert uses_video_memory(tool) and not uses_video_memory(litemedsam)
    other = volume_session_for(litemedsam, volume)
    assert type(other) is VolumeSession
    other.close()
    video = video_predictor(tool)
    assert video is video_predictor(tool) and video.image_size == IMAGE_SIZE  # built once per tool
    assert type(video).__name__ == "SAM2VideoPredictor" and video.add_all_frames_to_correct_as_cond
    # the image predictor's weights, not a second copy
    assert [p.data_ptr() for p in video.parameters()] == [p.data_ptr() for p in tool.model.parameters()]


def test_key_prompt_seeds_the_memory_and_frames_both_ways_are_tracked(tool, case):
    _, volume, gt = case
    key = key_of(gt)
    session = started(tool, volume, gt)
    state = session.state
    inputs = state["point_inputs_per_obj"][0][key]
    assert inputs["point_labels"].tolist() == [[2, 3]]  # the box, as sam2 takes it (two corners, labels 2 and 3)
    box = gt_box(gt[key])
    h, w = volume.slice_shape
    expected = torch.tensor([[box.x1 / w, box.y1 / h], [box.x2 / w, box.y2 / h]]) * IMAGE_SIZE
    assert torch.allclose(inputs["point_coords"][0].cpu(), expected, atol=1e-4)
    # frames come from the normalised volume in memory, through the 2D tool's own transform
    frame = state["images"][key]
    assert tuple(frame.shape) == (3, IMAGE_SIZE, IMAGE_SIZE)
    assert torch.equal(frame, tool.predictor._transforms(volume.slice_image(key)))

    up, down = (op.run for op in session.propagate())
    assert (up.direction, down.direction) == (1, -1)
    assert up.slices == list(range(key + 1, volume.slices)) and up.stop_reason == "volume edge"
    assert down.slices == list(range(key - 1, -1, -1)) and down.stop_reason == "volume edge"
    tracked = state["frames_tracked_per_obj"][0]
    assert set(tracked) == set(range(volume.slices))  # every frame went through the video predictor
    assert all(tracked[k]["reverse"] == (k < key) for k in tracked if k != key)
    assert set(state["output_dict_per_obj"][0]["cond_frame_outputs"]) == {key}  # the key is the prompt frame
    for k in up.slices + down.slices:
        record = session.records[k]
        assert record.origin == "propagated" and record.mask.shape == (h, w) and record.mask.any()
        first = record.session.steps[0]
        assert first.proposal.policy == MEMORY_POLICY and first.extra["from_memory"]
        assert first.extra["slice"] == k
        assert not state["point_inputs_per_obj"][0].get(k)  # no prompt on a propagated slice
    assert session.mask().shape == volume.array.shape
    session.close()


def test_a_correction_changes_only_onward_frames_and_undo_restores_sam2_exactly(tool, case):
    _, volume, gt = case
    key = key_of(gt)
    session = started(tool, volume, gt)
    session.propagate()
    before = masks(session)
    sessions = {k: r.session for k, r in session.records.items()}
    j = key + 2
    ys, xs = np.nonzero(before[j])
    click = Point(int(xs[len(xs) // 2]), int(ys[len(ys) // 2]), False)  # "not here", inside the memory's mask
    operations = session.correct(j, click)
    assert [op.kind for op in operations] == ["correct", "propagate"]
    run = operations[1].run
    assert run.start == j and run.direction == 1 and run.slices == list(range(j + 1, volume.slices))
    assert not np.array_equal(session.slice_mask(j), before[j])  # the correction reached SAM2
    assert session.records[j].origin == "corrected"
    step = session.records[j].session.steps[-1]
    assert step.decision == "override" and step.applied == click and step.extra["correction"]
    state = session.state
    assert set(state["output_dict_per_obj"][0]["cond_frame_outputs"]) == {key, j}  # kept as a prompt frame
    assert state["point_inputs_per_obj"][0][j]["point_labels"].tolist() == [[0]]
    for k in range(volume.slices):
        if k <= j - 1:  # the key, the slices between, and the other direction: untouched
            assert np.array_equal(session.slice_mask(k), before[k]) and session.records[k].session is sessions[k]
        elif k > j:
            assert session.records[k].session is not sessions[k]  # tracked again from the correction
    corrected = masks(session)
    # a new run from the key slice stops at the clinician's slice instead of overwriting it
    (again,) = session.propagate(+1)
    assert again.run.slices == [key + 1] and again.run.stop_reason == f"slice {j} is the clinician's"

    assert [session.undo().kind for _ in range(3)] == ["propagate", "propagate", "correct"]
    assert all(np.array_equal(session.slice_mask(k), before[k]) for k in before)
    assert set(session.state["output_dict_per_obj"][0]["cond_frame_outputs"]) == {key}
    assert j not in session.state["point_inputs_per_obj"][0]
    # the same correction on the restored memory gives what it gave the first time, slice for slice
    redo = session.correct(j, click)
    assert redo[1].run.slices == run.slices
    assert all(np.array_equal(session.slice_mask(k), corrected[k]) for k in corrected)
    session.close()


def test_stops_where_sam2_says_the_structure_is_absent_and_honours_until_and_cancel(tool, case, monkeypatch):
    _, volume, gt = case
    key = key_of(gt)
    session = started(tool, volume, gt)
    video = session.video
    frame = {"index": None}
    run_frame = video._run_single_frame_inference

    def tracking(*args, **kwargs):
        frame["index"] = kwargs["frame_idx"]
        return run_frame(*args, **kwargs)

    decoder_forward = video.sam_mask_decoder.forward

    def decoder(*args, **kwargs):  # the structure ends two slices from the key: SAM2's head says "absent"
        masks, ious, tokens, scores = decoder_forward(*args, **kwargs)
        if frame["index"] is not None and abs(frame["index"] - key) > 2:
            scores = torch.full_like(scores, -10.0)
        return masks, ious, tokens, scores

    monkeypatch.setattr(video, "_run_single_frame_inference", tracking)
    monkeypatch.setattr(video.sam_mask_decoder, "forward", decoder)
    (first,) = session.propagate(+1, until=key + 1)
    assert first.run.slices == [key + 1] and first.run.stop_reason == f"reached slice {key + 1}"
    calls = []
    (cancelled,) = session.propagate(-1, cancel=lambda: calls.append(1) or len(calls) > 1)
    assert cancelled.run.slices == [key - 1] and cancelled.run.stop_reason == "cancelled"
    up, down = (op.run for op in session.propagate())
    assert up.slices == [key + 1, key + 2] and up.stop_slice == key + 3
    assert down.slices == [key - 1, key - 2] and down.stop_slice == key - 3
    assert "SAM2 finds no structure here" in up.stop_reason and up.stop_reason.startswith(f"slice {key + 3}:")
    assert sorted(k for k, r in session.records.items() if r.session is not None) == list(range(key - 2, key + 3))
    session.close()


def test_a_propagated_run_with_a_correction_logs_and_exports_as_2d_episodes(tool, case, tmp_path):
    import pyarrow.parquet as pq

    from MedSAMAgentLib.trajectories.export import export
    from MedSAMAgentLib.trajectory import TrajectoryWriter, read_episodes

    _, volume, gt = case
    key = key_of(gt)
    path = tmp_path / "volume.jsonl"
    with TrajectoryWriter(path) as log:
        session = started(tool, volume, gt, log=log, meta={"source": "test"})
        session.propagate()
        lines = path.read_text().count("\n")
        j = key - 2
        session.correct(j, gt_box(gt[j]))
        assert path.read_text().count("\n") > lines  # written as it happens, not at the end
        session.finish(accepted=True)
        session.close()
    episodes = read_episodes(path)
    live = [e for e in episodes if e.accepted]
    assert sorted(e.header["meta"]["slice"] for e in live) == list(range(volume.slices))
    assert all(e.header["meta"]["propagation"] == MEMORY_POLICY and e.header["tool"]["name"] == "medsam2-video"
               for e in episodes)
    by_slice = {e.header["meta"]["slice"]: e for e in live}
    assert by_slice[key].header["meta"]["origin"] == "key" and by_slice[key].steps[0].decision == "hint"
    fix = [s for s in by_slice[j].steps if s.decision == "override"]
    assert fix and fix[0].record["extra"]["correction"] and fix[0].record["actor"] == "clinician"
    assert by_slice[j].steps[0].record["proposal"]["policy"] == MEMORY_POLICY  # the memory's mask came first
    onward = by_slice[j - 1]
    assert onward.header["meta"]["origin"] == "propagated" and onward.steps[0].record["extra"]["from_memory"]
    superseded = [e for e in episodes if not e.accepted]
    assert superseded and all(e.end["status"] == "superseded" for e in superseded)  # the slices tracked again
    assert np.array_equal(by_slice[j].final_mask, session.slice_mask(j))

    sft = export([path], "llamafactory", tmp_path / "sft")
    assert sft.episodes == len(live)
    samples = json.loads((tmp_path / "sft" / "medsam_agent_sft.json").read_text())
    assert len(samples) == len(live) and all((tmp_path / "sft" / image).is_file()
                                             for sample in samples for image in sample["images"])
    rl = export([path], "verl", tmp_path / "rl")
    infos = pq.read_table(rl.files[0]).column("extra_info").to_pylist()
    assert infos and sum(len(info["episode_ids"]) for info in infos) == len(live)
    only = export([path], "llamafactory", tmp_path / "fixes", only_corrections=True)
    assert only.episodes == 1 and only.samples == len(fix)  # the correction made in 3D, as expert data


def test_segment_propagate_with_medsam2_writes_the_volume_mask_and_the_log(checkpoint, case, tmp_path):
    import SimpleITK as sitk

    from MedSAMAgentLib.cli import main
    from MedSAMAgentLib.trajectory import read_episodes

    path, config = checkpoint
    found, _, gt = case
    image = tmp_path / "ct.nii.gz"  # the nine slices as a file with their geometry (sitk keeps it when cropping)
    sitk.WriteImage(sitk.ReadImage(str(found.image))[:, :, KEEP], str(image))
    key = key_of(gt)
    box = gt_box(gt[key])
    out, log = tmp_path / "mask.nrrd", tmp_path / "log.jsonl"
    code = main(["segment", str(image), "--slice", f"0:{key}", "--box", *map(str, box.as_list()),
                 "--point", str((box.x1 + box.x2) // 2), str((box.y1 + box.y2) // 2), "pos",
                 "--tool", "medsam2", "--checkpoint", str(path), "--device", "cpu",
                 "--tool-option", f"config={config}", "--tool-option", f"image_size={IMAGE_SIZE}",
                 "--tool-option", "accept_licence=true", "--propagate", "--out", str(out), "--log", str(log)])
    assert code == 0
    written, source = sitk.ReadImage(str(out)), sitk.ReadImage(str(image))
    assert written.GetSize() == source.GetSize() and np.allclose(written.GetSpacing(), source.GetSpacing())
    assert np.allclose(written.GetOrigin(), source.GetOrigin())
    assert np.allclose(written.GetDirection(), source.GetDirection())
    episodes = read_episodes(log)
    key_episode = next(e for e in episodes if e.header["meta"]["origin"] == "key")
    assert [s.decision for s in key_episode.steps] == ["hint", "override"]  # the box, then the click
    assert {e.header["meta"]["slice"] for e in episodes} == set(range(source.GetSize()[2]))
    assert all(e.end["status"] == "propagated" and not e.accepted for e in episodes)  # nobody reviewed them
    mask = sitk.GetArrayFromImage(written) > 0
    for episode in episodes:  # the 3D mask is the slices' final masks, slice for slice
        assert np.array_equal(mask[episode.header["meta"]["slice"]], episode.final_mask)
    assert main(["segment", str(image), "--slice", f"0:{key}", "--box", *map(str, box.as_list()), "--out",
                 str(tmp_path / "m.png"), "--log", str(log)]) == 2  # a log records a propagation only


def test_a_reviewer_override_during_the_run_becomes_a_prompt_frame_and_the_run_goes_on(tool, case):
    from MedSAMAgentLib.session import Review

    _, volume, gt = case
    key = key_of(gt)
    session = started(tool, volume, gt)
    seen = []

    class Reviewer:  # the clinician fixes slice key+1 as it comes, then lets the rest through
        def review(self, proposal, observation):
            seen.append(proposal.policy)
            if len(seen) == 1:
                return Review("override", Point(5, 5, True))
            return Review("accept")

    (operation,) = session.propagate(+1, until=key + 3, reviewer=Reviewer())
    run = operation.run
    assert run.slices == [key + 1, key + 2, key + 3] and run.stop_reason == f"reached slice {key + 3}"
    assert session.records[key + 1].origin == "corrected" and session.records[key + 2].origin == "propagated"
    fix = session.records[key + 1].session.steps[0]
    assert fix.decision == "override" and fix.applied == Point(5, 5, True) and fix.extra["correction"]
    assert set(session.state["output_dict_per_obj"][0]["cond_frame_outputs"]) == {key, key + 1}
    assert seen[0] == MEMORY_POLICY
    session.undo()  # the predictor as before the run: nothing of slice key+1's prompt or outputs is left
    state = session.state
    assert key + 1 not in state["point_inputs_per_obj"][0] and key + 1 not in state["frames_tracked_per_obj"][0]
    assert all(key + 1 not in state[table][0][kind] for table in ("output_dict_per_obj", "temp_output_dict_per_obj")
               for kind in ("cond_frame_outputs", "non_cond_frame_outputs"))
    assert sorted(session.records) == [key]
    session.close()


def test_the_volume_protocol_runs_sam2_tools_through_their_memory(tool, case, tmp_path):
    """``evaluate --protocol volume --tool medsam2``: the key box seeds SAM2's memory and the propagated slices
    come from it (their logged proposals are the memory's), then the simulated clinician's corrections apply."""
    from MedSAMAgentLib.trajectory import TrajectoryWriter, read_episodes
    from MedSAMAgentLib.volume_evaluation import run_volume

    found, _, gt = case
    log = tmp_path / "trajectories.jsonl"
    result = run_volume(found, tool, corrections=1, log=TrajectoryWriter(log))
    assert len(result.dice) == 2 and all(0.0 <= d <= 1.0 for d in result.dice)
    assert result.key_slice == int(np.argmax(gt_volume_sizes(found)))
    episodes = read_episodes(log)
    memory = [e for e in episodes
              if any((s.record.get("proposal") or {}).get("policy") == MEMORY_POLICY for s in e.steps)]
    assert memory, "propagated slices must come from SAM2's memory"
    assert len(result.corrections) == 1


def gt_volume_sizes(found):
    _, gt = load_volume_case(found)
    return gt.sum(axis=(1, 2))

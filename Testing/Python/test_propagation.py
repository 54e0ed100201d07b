"""Propagation through a bundled real volume (TotalSegmentator CT, gallbladder: slices 2-14 of 30) with the
real built-in tool: both directions, stop at the structure's ends, corrections re-propagate only onward,
exact undo, the slices' trajectories, and the command line."""

from __future__ import annotations

import numpy as np
import pytest

from MedSAMAgentLib.actions import Box
from MedSAMAgentLib.images import normalise_volume
from MedSAMAgentLib.manifest import bundled_manifest
from MedSAMAgentLib.metrics import dice
from MedSAMAgentLib.policies.oracle import corrective_click, gt_box
from MedSAMAgentLib.propagation import VolumeSession, describe_operation
from MedSAMAgentLib.volumes import load_volume_case

CASE = "volumes/totalseg_ct_gallbladder"


@pytest.fixture(scope="module")
def volume_case():
    case = next(c for c in bundled_manifest() if c.id == CASE)
    volume, gt = load_volume_case(case)
    return case, volume, gt


@pytest.fixture(scope="module")
def tool(litemedsam):
    """The shared tool, holding every slice's embedding for this module (30 small slices)."""
    before = litemedsam.cache_size
    litemedsam.cache_size = 40
    yield litemedsam
    litemedsam.cache_size = before


def _key(gt):
    return int(np.argmax(gt.sum(axis=(1, 2))))


def _propagated(tool, volume, gt, log=None):
    session = VolumeSession(tool, volume, target="gallbladder", ground_truth=gt, log=log)
    key = _key(gt)
    session.start(key, gt_box(gt[key]))
    return session, session.propagate()


@pytest.fixture(scope="module")
def propagated(tool, volume_case):
    _, volume, gt = volume_case
    session, operations = _propagated(tool, volume, gt)
    yield session, operations
    session.close()


def _masks(session):
    return {k: session.slice_mask(k).copy() for k in range(session.volume.slices)}


def test_one_intensity_mapping_for_the_whole_volume():
    volume = np.stack([np.full((4, 4), 10.0), np.full((4, 4), 20.0), np.linspace(0, 30, 16).reshape(4, 4)])
    out = normalise_volume(volume, "MRI")
    assert out.dtype == np.uint8 and out.shape == volume.shape
    assert out[0].max() < out[1].min()  # slice-by-slice min-max would make both constant slices alike
    assert np.array_equal(normalise_volume(volume, "CT"), normalise_volume(volume, window="soft_tissue"))


def test_precompute_fills_the_cache_without_changing_the_image(tool, volume_case):
    _, volume, _ = volume_case
    tool.set_image(volume.slice_image(0), key=volume.key(0))
    count = tool.encode_count
    key = tool.precompute(volume.slice_image(29), volume.key(29))
    assert tool._key == volume.key(0) and key == volume.key(29)
    tool.set_image(volume.slice_image(29), key=key)
    assert tool.encode_count <= count + 1  # encoded once, by precompute (or cached before)


def test_propagates_both_ways_and_stops_where_the_structure_ends(propagated, volume_case):
    session, operations = propagated
    _, volume, gt = volume_case
    present = np.nonzero(gt.any(axis=(1, 2)))[0]
    up, down = (op.run for op in operations)
    assert (up.direction, down.direction) == (1, -1)
    key = _key(gt)
    assert up.slices == list(range(key + 1, key + 1 + len(up.slices)))
    assert down.slices == list(range(key - 1, key - 1 - len(down.slices), -1))
    taken = sorted(k for k, r in session.records.items() if r.session is not None)
    assert taken[-1] <= present.max() + 2 and taken[0] >= present.min() - 2  # at most 2 slices past an end
    assert up.stop_slice is not None and down.stop_slice is not None, (up.stop_reason, down.stop_reason)
    assert up.stop_reason.startswith(f"slice {up.stop_slice}:") and down.stop_reason.startswith(
        f"slice {down.stop_slice}:")  # the agent proposed stop there, saying why
    assert dice(session.mask(), gt) > 0.85  # measured 0.928 (the per-slice ground-truth-box reference: 0.903)
    assert all(session.records[k].origin == "propagated" for k in up.slices + down.slices)


def test_a_correction_repropagates_only_onward_and_undo_is_exact(tool, volume_case):
    _, volume, gt = volume_case
    session, _ = _propagated(tool, volume, gt)
    key = _key(gt)
    before = _masks(session)
    sessions_before = {k: r.session for k, r in session.records.items()}
    j = key + 2
    operations = session.correct(j, gt_box(gt[j]))
    assert [op.kind for op in operations] == ["correct", "propagate"]
    assert operations[1].run.direction == 1 and operations[1].run.start == j
    for k in range(volume.slices):  # the key slice, the other direction and the slices between are untouched
        if k < j:
            assert np.array_equal(session.slice_mask(k), before[k]), k
            assert session.records.get(k, None) is None or session.records[k].session is sessions_before[k]
    assert session.records[j].origin == "corrected"
    assert min(operations[1].changed, default=j + 1) > j
    # a later run from the key slice stops at the clinician's slice instead of overwriting it
    (again,) = session.propagate(+1)
    assert again.run.slices == [key + 1] and "clinician" in again.run.stop_reason
    for _ in range(3):
        session.undo()
    assert _masks(session).keys() == before.keys()
    assert all(np.array_equal(session.slice_mask(k), before[k]) for k in before)
    session.close()


def test_clear_click_and_undo_per_slice(tool, volume_case):
    _, volume, gt = volume_case
    session, (up, down) = _propagated(tool, volume, gt)
    before = _masks(session)
    last = up.run.slices[-1]
    (cleared,) = session.clear(last - 1)
    assert cleared.changed == [last - 1, last]
    assert not session.slice_mask(last - 1).any() and not session.slice_mask(last).any()
    session.undo()
    assert all(np.array_equal(session.slice_mask(k), before[k]) for k in before)
    k = down.run.slices[0]
    click = corrective_click(session.slice_mask(k), gt[k])
    if click is not None:
        session.correct(k, click, repropagate=False)
        assert session.undo_slice(k) == 1  # the clinician's override of the agent's proposal there
        assert np.array_equal(session.slice_mask(k), before[k])
    session.close()


def test_every_slice_is_a_2d_episode_that_exports(tool, volume_case, tmp_path):
    from MedSAMAgentLib.trajectories.export import export
    from MedSAMAgentLib.trajectory import TrajectoryWriter, read_episodes

    _, volume, gt = volume_case
    log_path = tmp_path / "volume.jsonl"
    with TrajectoryWriter(log_path) as log:
        session, (up, down) = _propagated(tool, volume, gt, log=log)
        j = up.run.slices[1]
        session.correct(j, gt_box(gt[j]))
        session.finish(accepted=True)
    episodes = read_episodes(log_path)
    metas = [e.header["meta"] for e in episodes]
    assert {m["origin"] for m in metas} == {"key", "propagated"}
    assert all(m["volume"] == CASE and m["axis"] == 0 for m in metas)
    live = [e for e in episodes if e.accepted]
    assert sorted(e.header["meta"]["slice"] for e in live) == sorted(
        k for k, r in session.records.items() if r.session is not None)
    corrected = next(e for e in live if e.header["meta"]["slice"] == j)
    fixes = [s for s in corrected.steps if s.decision == "override"]  # the clinician's correction: expert data
    assert fixes and fixes[0].record["extra"] == {"slice": j, "correction": True}
    report = export([log_path], "llamafactory", tmp_path / "sft")
    assert report.episodes == len(live)


def test_segment_propagate_writes_a_3d_mask_with_the_volume_geometry(volume_case, tmp_path):
    import SimpleITK as sitk

    from MedSAMAgentLib.cli import main

    case, volume, gt = volume_case
    key = _key(gt)
    box = gt_box(gt[key])
    out = tmp_path / "mask.nii.gz"
    code = main(["segment", str(case.image), "--slice", f"0:{key}", "--box", *map(str, box.as_list()),
                 "--propagate", "--out", str(out)])
    assert code == 0
    written, source = sitk.ReadImage(str(out)), sitk.ReadImage(str(case.image))
    assert written.GetSize() == source.GetSize() and np.allclose(written.GetSpacing(), source.GetSpacing())
    assert np.allclose(written.GetOrigin(), source.GetOrigin())
    assert dice(sitk.GetArrayFromImage(written) > 0, gt) > 0.6
    assert main(["segment", str(case.image), "--slice", f"0:{key}", "--box", *map(str, box.as_list()),
                 "--out", str(tmp_path / "m.nii.gz")]) == 2  # a 3D mask needs --propagate


def test_volume_protocol_reports_dice_after_corrections_and_the_reference(tool, tmp_path):
    import json

    from MedSAMAgentLib.manifest import BUNDLED_DATA
    from MedSAMAgentLib.volume_evaluation import evaluate_volumes, format_table

    summary = evaluate_volumes(BUNDLED_DATA / "manifest.jsonl", tmp_path, tool, corrections=2, only="gallbladder",
                               progress=False)
    overall = summary["overall"]
    assert overall["n"] == 1 and set(overall["dice_at"]) == {"0", "1", "3", "5", "10"}
    assert overall["dice_at"]["3"] >= overall["dice_at"]["0"] - 0.02 and 0 < overall["reference_dice"] <= 1
    assert overall["max_past_end"] <= 2
    assert json.loads((tmp_path / "summary.json").read_text())["protocol"] == "volume"
    assert (tmp_path / "cases.csv").read_text().count("\n") == 2 and (tmp_path / "dice_vs_corrections.png").exists()
    assert "volumes" in format_table(summary)


def test_volume_protocol_can_start_off_the_largest_slice(tmp_path):
    """``evaluate --protocol volume --key-area F``: each case runs twice, from the slice on either side of its
    largest whose area is nearest F times the largest; the option belongs to the volume protocol only."""
    import csv
    import json

    from MedSAMAgentLib.cli import main
    from MedSAMAgentLib.manifest import BUNDLED_DATA
    from MedSAMAgentLib.volume_evaluation import key_slices, volume_cases

    manifest = str(BUNDLED_DATA / "manifest.jsonl")
    code = main(["evaluate", "--manifest", manifest, "--protocol", "volume", "--key-area", "0.6", "--corrections",
                 "1", "--limit", "1", "--no-progress", "--out", str(tmp_path)])
    assert code == 0
    case = volume_cases(manifest)[0][0]
    rows = list(csv.DictReader((tmp_path / "cases.csv").open()))
    keys = key_slices(load_volume_case(case)[1], 0.6)
    assert len(keys) == 2 and [int(r["key_slice"]) for r in rows] == keys and {r["id"] for r in rows} == {case.id}
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["key_area"] == 0.6 and summary["overall"]["n"] == 2
    assert all(0 < float(r["dice_0"]) <= 1 for r in rows)
    assert main(["evaluate", "--manifest", manifest, "--protocol", "clicks", "--key-area", "0.6",
                 "--out", str(tmp_path / "c")]) == 2
    with pytest.raises(SystemExit) as error:  # argparse: "expected a number in (0, 1), got 1"
        main(["evaluate", "--manifest", manifest, "--protocol", "volume", "--key-area", "1", "--out", str(tmp_path)])
    assert error.value.code == 2


def test_the_clinician_marks_the_end_on_the_first_slice_past_it():
    from MedSAMAgentLib.reviewers import volume_correction

    gt = np.zeros((12, 20, 20), bool)
    gt[2:7, 5:15, 5:15] = True
    pred = gt.copy()
    pred[7:11, 4:16, 4:16] = True  # the chain ran 4 slices past the end, the worst one furthest out
    pred[10] = True
    assert volume_correction(pred, gt, key=4) == (7, "clear")  # "stop here" where the structure ended
    assert volume_correction(pred, gt) == (7, "clear")  # without a key: seen from the nearest structure slice
    pred[7:11] = False
    pred[3] = False  # a missed slice gets the ground-truth box
    index, action = volume_correction(pred, gt, key=4)
    assert index == 3 and action == gt_box(gt[3])


def test_stop_signals_read_drift_box_filling_and_regrowth():
    from MedSAMAgentLib.propagation_rules import (Intensity, PropagationRules, box_border, slice_signal,
                                                  stop_reason)

    image = np.zeros((40, 40, 3), np.uint8)
    image[10:30, 10:30] = 200
    neighbour = np.zeros((40, 40), bool)
    neighbour[12:28, 12:28] = True
    box = Box(9, 9, 30, 30)
    filled = np.zeros((40, 40), bool)
    filled[9:31, 9:31] = True
    assert box_border(neighbour, box) == 0.0 and box_border(filled, box) == 1.0
    start = Intensity.under(image, neighbour)
    signal = slice_signal(filled, neighbour, 0.9, image, image, start=start, box=box, smallest_area=64)
    assert signal.border == 1.0 and signal.regrowth == filled.sum() / 64 and signal.start_intensity_shift > 0
    assert stop_reason(signal, PropagationRules()) is None  # every new threshold is off by default
    assert "fill the box" in stop_reason(signal, PropagationRules(stop_border=0.5))
    assert "tapered" in stop_reason(signal, PropagationRules(stop_regrowth=2.0))
    from MedSAMAgentLib.propagation_rules import neighbour_box

    assert neighbour_box(filled, 3) == Box(6, 6, 33, 33)
    assert neighbour_box(filled, 3, previous=Box(8, 9, 30, 31), max_growth=1) == Box(7, 8, 31, 32)
    # a side longer than max_size is cut to it, centred on the neighbour mask's box (9..30: centre 19.5)
    assert neighbour_box(filled, 3, max_size=(20, 30)) == Box(10, 6, 29, 33)


def test_box_size_cap_keeps_a_runs_boxes_within_its_start_box(tool, volume_case):
    """``PropagationRules.max_size`` (off by default: it relies on the run starting on the structure's largest
    slice, README): no propagated box is longer than the start box's sides, and the reason says when it cut."""
    from dataclasses import replace

    from MedSAMAgentLib.propagation_rules import DEFAULT_RULES, neighbour_box

    _, volume, gt = volume_case
    key = _key(gt)
    session = VolumeSession(tool, volume, ground_truth=gt, rules=replace(DEFAULT_RULES, max_size=1.0))
    session.start(key, gt_box(gt[key]))
    session.propagate()
    start = neighbour_box(session.slice_mask(key), DEFAULT_RULES.margin)
    cut = 0
    for k, record in session.records.items():
        if record.origin != "propagated":
            continue
        step = next(s for s in record.session.steps if isinstance(s.applied, Box))
        box = step.applied
        assert box.x2 - box.x1 <= start.x2 - start.x1 and box.y2 - box.y1 <= start.y2 - start.y1
        uncut = neighbour_box(session.slice_mask(k - (1 if k > key else -1)), DEFAULT_RULES.margin)
        assert ("cut to the size of the run's first box" in step.proposal.reason) == (box != uncut)
        cut += box != uncut
    assert cut  # the gallbladder's chain would grow past its start box on some slices: the cap cut those
    session.close()


def test_key_slices_are_the_largest_or_the_ones_near_an_area_fraction():
    from MedSAMAgentLib.volume_evaluation import key_slices

    gt = np.zeros((7, 10, 10), bool)
    for k, side in enumerate([0, 2, 4, 6, 4, 3, 1]):
        gt[k, :side, :side] = True  # areas 0, 4, 16, 36, 16, 9, 1
    assert key_slices(gt) == [3]
    assert key_slices(gt, 0.5) == [2, 4]  # 16 is the nearest to 18 on both sides
    assert key_slices(gt, 0.2) == [1, 5]  # 4 (of 4, 16) below; 9 (of 16, 9, 1) above



def test_appearance_tells_a_drifted_structure_from_its_surroundings():
    """The scale-free signal: a structure whose grey level drifts (200 to 150, beyond any one-std drift rule)
    still looks like itself against its surroundings (60); a mask filled with the surroundings does not."""
    from MedSAMAgentLib.propagation_rules import Appearance, Intensity, PropagationRules, slice_signal, stop_reason

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:96, :96]
    disk = (yy - 48) ** 2 + (xx - 48) ** 2 < 15 ** 2
    ring = ((yy - 48) ** 2 + (xx - 48) ** 2 < 22 ** 2) & ~disk

    def slice_of(inside: int) -> np.ndarray:
        grey = np.clip(np.where(disk, inside, 60) + rng.normal(0, 8, disk.shape), 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)

    start, drifted = slice_of(200), slice_of(150)
    appearance = Appearance.of(start, disk)
    assert appearance.share > 0.95
    assert appearance.resemblance(drifted, disk) > 0.9 and appearance.resemblance(start, ring) < 0.05
    rules = PropagationRules(stop_appearance=0.5, stop_start_intensity=1.0)
    same = slice_signal(disk, disk, 0.9, drifted, start, appearance=appearance)
    assert stop_reason(same, PropagationRules(stop_appearance=0.5)) is None
    drift = slice_signal(disk, disk, 0.9, drifted, start, start=Intensity.under(start, disk), appearance=appearance)
    assert "drifted" in stop_reason(drift, rules)  # the mean-intensity rule would stop here
    off = slice_signal(ring, disk, 0.9, start, start, appearance=appearance)
    assert off.appearance < 0.05
    assert "left the structure" in stop_reason(off, PropagationRules(stop_iou=0.0, stop_appearance=0.5))

def test_a_correction_beyond_a_gap_bridges_it_from_both_ends_only_over_empty_slices(tool, volume_case):
    """The gap between a corrected slice and the propagated ones has the structure at both ends: each half is
    carried from its nearer end without the stop rule; a gap that a cleared slice closes runs under the rule."""
    _, volume, gt = volume_case
    key = _key(gt)
    session = VolumeSession(tool, volume, target="gallbladder", ground_truth=gt)
    session.start(key, gt_box(gt[key]))
    session.propagate(+1)
    before = _masks(session)
    j = key - 4
    assert session.gap(j, +1) == ([key - 3, key - 2, key - 1], key)
    operations = session.correct(j, gt_box(gt[j]))
    assert [op.kind for op in operations] == ["correct", "propagate", "propagate", "propagate"]
    near, far = operations[2].run, operations[3].run
    assert (near.start, near.direction, near.slices, near.judged) == (j, +1, [key - 3, key - 2], False)
    assert (far.start, far.direction, far.slices, far.judged) == (key, -1, [key - 1], False)
    assert operations[1].run.judged and operations[1].run.direction == -1
    assert all(session.slice_mask(k).any() for k in range(j, key))
    assert all(np.array_equal(session.slice_mask(k), before[k]) for k in range(key, volume.slices))
    assert "to bridge a gap" in describe_operation(operations[2])
    for _ in operations:
        session.undo()
    assert all(np.array_equal(session.slice_mask(k), before[k]) for k in before)

    # a cleared slice closes the gap: no structure there, so the run from the correction keeps its stop rule
    session.correct(key - 1, gt_box(gt[key - 1]), repropagate=False)
    session.clear(key - 1)
    assert session.gap(j, +1) == ([key - 3, key - 2], None)
    operations = session.correct(j, gt_box(gt[j]))
    gap = operations[-1].run
    assert gap.judged and gap.direction == +1 and set(gap.slices) <= {key - 3, key - 2}
    assert not session.slice_mask(key - 1).any()
    session.close()


def test_before_stopping_the_agent_retries_the_neighbours_own_box(tool, volume_case, tmp_path):
    """Where the stop rule fires, the agent first tries the neighbour mask's own box (no margin, not
    tightened) in a new episode of that slice, and stops only if that fails too; both are logged with why."""
    from dataclasses import replace

    from MedSAMAgentLib.propagation_rules import DEFAULT_RULES, neighbour_box
    from MedSAMAgentLib.trajectory import TrajectoryWriter, read_episodes

    _, volume, gt = volume_case
    key = _key(gt)
    ends = {}
    for repair in (DEFAULT_RULES.repair_margin, None):
        log_path = tmp_path / f"repair-{repair}.jsonl"
        with TrajectoryWriter(log_path) as log:
            session = VolumeSession(tool, volume, ground_truth=gt, log=log,
                                    rules=replace(DEFAULT_RULES, repair_margin=repair))
            session.start(key, gt_box(gt[key]))
            runs = [op.run for op in session.propagate()]
            session.finish(accepted=False, status="evaluated")
        ends[repair] = [(r.slices, r.stop_slice) for r in runs]
        episodes = read_episodes(log_path)
        retried = [e for e in episodes if e.end["status"] == "propagation-retried"]
        if repair is None:
            assert not retried
            continue
        assert DEFAULT_RULES.repair_margin == 0 and all(r.stop_slice is not None for r in runs)
        assert sorted(e.header["meta"]["slice"] for e in retried) == sorted(r.stop_slice for r in runs)
        for run in runs:
            first, second = [e for e in episodes if e.header["meta"]["slice"] == run.stop_slice]
            assert first.end["status"] == "propagation-retried" and first.end["reason"]
            assert second.end["status"] == "propagation-stop"
            neighbour = session.slice_mask(run.stop_slice - run.direction)
            retry = second.steps[0]
            assert retry.applied == neighbour_box(neighbour, 0) and retry.record["actor"] == "agent"
            assert retry.record["proposal"]["reason"].startswith(first.end["reason"])
            assert f"slice {run.stop_slice}: {second.end['reason']}" == run.stop_reason
    assert ends[0] == ends[None]  # here the retry confirms both ends: the gallbladder ends there


def test_the_box_is_tightened_to_the_mask_and_never_grows(propagated):
    from MedSAMAgentLib.propagation_rules import tightened_box

    mask = np.zeros((40, 40), bool)
    mask[15:20, 12:30] = True
    assert tightened_box(mask, Box(5, 5, 35, 35), 3) == Box(9, 12, 32, 22)
    assert tightened_box(mask, Box(9, 12, 32, 22), 3) is None  # it fits: nothing more to tighten
    assert tightened_box(mask, Box(14, 5, 35, 35), 3) == Box(14, 12, 32, 22)  # never outside the last box
    assert tightened_box(np.zeros_like(mask), Box(5, 5, 35, 35), 3) is None
    # on the real chain: each propagated slice's boxes are the agent's accepted steps, each inside the one before
    session, *_ = propagated
    tightened = 0
    for record in session.records.values():
        if record.origin != "propagated":
            continue
        boxes = [s.applied for s in record.session.steps if isinstance(s.applied, Box)]
        assert all(s.actor == "agent" for s in record.session.steps) and 1 <= len(boxes) <= 4
        tightened += len(boxes) > 1
        for outer, inner in zip(boxes, boxes[1:]):
            assert outer.x1 <= inner.x1 and outer.y1 <= inner.y1 and inner.x2 <= outer.x2 and inner.y2 <= outer.y2
            assert inner != outer
    assert tightened  # the gallbladder shrinks toward its ends: some slices' boxes were tightened


def test_the_prompt_benchmark_measures_tightening_on_the_bundled_volume(tool, volume_case):
    """``bench_propagation_prompts.py`` (the README's drift-only figures) on the bundled CT: the chain cut at
    the structure's true ends is better with the tightened box than with the neighbour's box alone."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_propagation_prompts.py"
    spec = importlib.util.spec_from_file_location("bench_propagation_prompts", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    _, volume, gt = volume_case
    box, tightened = (bench.chain_dice(tool, volume, gt, variant) for variant in ("box", "tighten3"))
    assert 0.85 < box < tightened <= 1.0

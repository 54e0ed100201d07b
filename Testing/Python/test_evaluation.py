"""The evaluation runner and ``medsam-agent evaluate`` on bundled real cases (both protocols).

The whole shared set is a benchmark (Testing/benchmarks/bench_clicks.py); ``test_shared_set_targets`` runs it
on the collections the click-refinement targets were set on and checks them, only when MEDSAM_AGENT_FULL_EVAL=1
(a few minutes on 2 cores; CI sets it)."""

from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest

from MedSAMAgentLib import cli
from MedSAMAgentLib.evaluation import (
    evaluate_agent,
    evaluate_clicks,
    evaluate_manifest,
    load_cases,
    summarize,
    write_report,
)
from MedSAMAgentLib.manifest import BUNDLED_DATA, SHARED_DATA, bundled_manifest

# The collections the click-refinement targets were set on (issue 3); later additions are reported, not gated.
TARGET_COLLECTIONS = ("medscribble", "sam-med2d", "volumes")
CASES = ("medscribble/HipXRay/image_054_axis0_midslice", "sam-med2d/amos_0006_90_spleen_000")


@pytest.fixture(scope="module")
def tasks():
    loaded, skipped = load_cases([c for c in bundled_manifest() if c.id in CASES])
    assert [t.case.id for t in loaded] == list(CASES) and not skipped
    return loaded


def test_click_protocol_summary(litemedsam, tasks, tmp_path):
    results = evaluate_clicks(tasks, litemedsam, interactions=4, progress=False)
    summary = summarize(results, "clicks", litemedsam.name)
    assert set(summary) >= {"protocol", "tool", "policy", "overall", "groups"}
    assert summary["protocol"] == "clicks" and summary["tool"] == "litemedsam" and summary["policy"] is None
    assert set(summary["groups"]) == {"medscribble/HipXRay", "sam-med2d"}
    for block in [summary["overall"], *summary["groups"].values()]:
        assert set(block) >= {"n", "dice_at", "iou_at", "noc85", "noc90", "median_ms_per_prompt",
                              "median_ms_per_image"}
        assert len(block["dice_at"]) == len(block["iou_at"]) == 4
        assert all(0.0 <= v <= 1.0 for v in block["dice_at"] + block["iou_at"])
        assert 1 <= block["noc85"] <= 20 and 1 <= block["noc90"] <= 20
        assert block["median_ms_per_prompt"] > 0
    # the numbers are the cases' own: recompute one from the per-case results
    assert summary["overall"]["dice_at"][0] == pytest.approx(np.mean([r.dice[0] for r in results]), abs=1e-4)
    assert all(len(r.actions) == 4 for r in results)  # box + 3 clicks, never stopping early
    assert summary["overall"]["dice_at"][3] > summary["overall"]["dice_at"][0]  # the clicks help

    paths = write_report(tmp_path, summary, results, tasks)
    assert json.loads(paths["summary"].read_text())["overall"]["n"] == 2
    with paths["cases"].open() as handle:
        rows = list(csv.DictReader(handle))
    assert [r["id"] for r in rows] == list(CASES) and "dice_3" in rows[0] and "noc90" in rows[0]
    for name in ("curves", "worst"):
        assert paths[name].stat().st_size > 1000 and paths[name].read_bytes()[:4] == b"\x89PNG"


def test_agent_protocol_summary(litemedsam, tasks):
    from MedSAMAgentLib.registry import make_policy

    results = evaluate_agent(tasks, litemedsam, lambda task: make_policy("builtin"), max_steps=5, progress=False)
    summary = summarize(results, "agent", litemedsam.name, "builtin")
    assert summary["policy"] == "builtin"
    for block in [summary["overall"], *summary["groups"].values()]:
        assert set(block) >= {"n", "final_dice", "final_iou", "mean_agent_actions", "mean_clinician_actions",
                              "acceptance_rate"}
        assert 0.0 <= block["final_iou"] <= block["final_dice"] <= 1.0
        assert block["mean_clinician_actions"] >= 1  # the builtin policy starts from the clinician's hint
        assert block["acceptance_rate"] is None or 0.0 <= block["acceptance_rate"] <= 1.0
    for r in results:
        assert r.agent_actions + r.clinician_actions == len(r.actions) <= 5
        assert r.final_dice > 0.5  # a real mask of the target, not an empty one


def test_multi_label_rows_are_skipped_and_listed(tmp_path):
    volume = BUNDLED_DATA / "volumes"
    row = {"id": "volumes/several", "image": str(volume / "totalseg_example_ct_sm.nii.gz"),
           "mask": str(volume / "totalseg_example_seg.nii.gz"), "label": None, "dims": 3}
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text(json.dumps(row) + "\n")
    loaded, skipped = load_cases(__import__("MedSAMAgentLib.manifest", fromlist=["x"]).read_manifest(manifest))
    assert loaded == [] and [s.id for s in skipped] == ["volumes/several"]
    assert "several labels" in skipped[0].reason
    with pytest.raises(ValueError, match="no evaluable"):
        evaluate_manifest(manifest, "clicks", progress=False)


def test_evaluate_command(tmp_path, capsys):
    out = tmp_path / "report"
    code = cli.main(["evaluate", "--manifest", str(BUNDLED_DATA / "manifest.jsonl"), "--protocol", "clicks",
                     "--limit", "1", "--interactions", "3", "--no-progress", "--out", str(out)])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["overall"]["n"] == 1 and len(summary["overall"]["dice_at"]) == 3
    assert (out / "cases.csv").exists() and (out / "dice_vs_interactions.png").exists()
    assert "overall" in capsys.readouterr().out


def test_evaluate_command_rejects_a_policy_for_clicks(tmp_path, capsys):
    code = cli.main(["evaluate", "--manifest", str(BUNDLED_DATA / "manifest.jsonl"), "--protocol", "clicks",
                     "--policy", "builtin", "--out", str(tmp_path)])
    assert code == 2 and "--policy" in capsys.readouterr().err


@pytest.mark.skipif(os.environ.get("MEDSAM_AGENT_FULL_EVAL") != "1" or not (SHARED_DATA / "manifest.jsonl").exists(),
                    reason="the full shared-set run takes minutes: set MEDSAM_AGENT_FULL_EVAL=1")
def test_shared_set_targets(litemedsam, tmp_path):
    """The click-refinement targets, on the collections they were set on (the 59 original rows). The rows
    added to ../shared/data later (COVID, DRIVE, volumes3d) are not under these targets until new ones land
    for them; `medsam-agent evaluate` on the whole manifest reports them."""
    manifest = tmp_path / "targets.jsonl"
    with open(SHARED_DATA / "manifest.jsonl", encoding="utf-8") as source, open(manifest, "w") as scoped:
        for line in source:
            row = json.loads(line) if line.strip() else None
            if row and row["id"].split("/", 1)[0] in TARGET_COLLECTIONS:
                row.update(image=str(SHARED_DATA / row["image"]), mask=str(SHARED_DATA / row["mask"]))
                scoped.write(json.dumps(row) + "\n")
    summary = evaluate_manifest(manifest, "clicks", tmp_path, tool=litemedsam, progress=False)
    assert summary["overall"]["n"] >= 57
    overall = summary["overall"]
    assert overall["dice_at"][5] >= 0.80
    assert overall["noc85"] <= 8 and overall["noc90"] <= 10
    for name, block in summary["groups"].items():
        d = block["dice_at"]
        assert all(d[i + 1] >= d[i] - 0.01 for i in range(len(d) - 1)), name

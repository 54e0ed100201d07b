"""Choose the propagation rules (``propagation_rules``) by leave-datasets-out measurement on the 3D rows of
../shared/data, built-in tool.

    .venv/bin/python Testing/benchmarks/sweep_propagation.py [--embeddings runs/embeddings] [--out runs/sweep]

Per case: the ground-truth box on the largest slice makes the key mask; for each prompt rule (margin, click
depth) the chain is run in both directions to the volume's end (or the last slice with a cached embedding,
at most ``--past`` slices beyond the structure), recording each slice's overlap with the truth and the stop
rule's signals. Every stop rule then only truncates those chains, so the whole grid costs one chain per
prompt rule. Selection: for each dataset group held out, the rules with the best mean of group-mean 3D Dice
on the other groups; reported on the held-out group (held-out) beside the rules chosen on all groups
(in-sample). Writes OUT/sweep.json.
"""

from __future__ import annotations

import argparse
import itertools
import json
import pickle
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from MedSAMAgentLib.manifest import SHARED_DATA, read_manifest  # noqa: E402
from MedSAMAgentLib.policies.oracle import gt_box  # noqa: E402
from MedSAMAgentLib.propagation import VolumeSession  # noqa: E402
from MedSAMAgentLib.propagation_rules import PropagationRules, stop_reason  # noqa: E402
from MedSAMAgentLib.volumes import disk_embeddings, load_volume_case  # noqa: E402

PROMPT_RULES = {  # name -> (margin, click depth, clicks)
    "m0": (0, None, 0), "m3": (3, None, 0), "m6": (6, None, 0),
    "m3-d4": (3, 4.0, 1), "m3-d8": (3, 8.0, 1), "m3-d4x3": (3, 4.0, 3),
}
STOP_GRID = {
    "stop_iou": (0.0, 0.2, 0.3, 0.4, 0.5, 0.6),
    "stop_area_ratio": (0.0, 0.3, 0.5),
    "stop_growth": (float("inf"), 1.1, 1.25, 1.5),
    "stop_intensity": (float("inf"), 0.5, 1.0, 1.5, 2.0),
    "min_area": (0, 10, 30),
    "stop_score": (0.0, 0.5, 0.6, 0.7, 0.8),
}
OVERRUN_PENALTY = 0.05  # objective cost per slice taken more than 2 past an end (the limit), per case
NEVER_STOP = dict(stop_iou=-1.0, stop_area_ratio=-1.0, stop_growth=float("inf"), stop_intensity=float("inf"),
                  min_area=0)


def chains(tool, volume, gt, rules, past):
    """Both directions from the key slice with a stop rule that never fires, to ``past`` slices beyond the
    structure: per taken slice (|pred & gt|, |pred|, gt present, signal); plus the key slice's counts."""
    present = np.nonzero(gt.any(axis=(1, 2)))[0]
    key = int(np.argmax(gt.sum(axis=(1, 2))))
    session = VolumeSession(tool, volume, rules=replace(rules, **NEVER_STOP), prefetch=0)
    session.start(key, gt_box(gt[key]))
    out = {"key": (int((session.slice_mask(key) & gt[key]).sum()), int(session.slice_mask(key).sum())),
           "gt_total": int(gt.sum()), "seconds": []}
    for direction, bound in ((+1, min(volume.slices - 1, int(present.max()) + past)),
                             (-1, max(0, int(present.min()) - past))):
        steps = []
        if (bound - key) * direction > 0:
            (operation,) = session.propagate(direction, until=bound)
            for k in operation.run.slices:
                record = session.records[k]
                steps.append((int((record.mask & gt[k]).sum()), int(record.mask.sum()), bool(gt[k].any()),
                              record.signal))
                out["seconds"].append(record.seconds)
        out[direction] = steps
    return out


def truncate(steps, rules: PropagationRules) -> tuple[int, int, int]:
    """(|pred & gt|, |pred|, slices taken past the structure) when ``rules`` stops the chain."""
    inter = area = past = 0
    for i_, a_, present, signal in steps:
        if stop_reason(signal, rules) is not None:
            break
        inter, area, past = inter + i_, area + a_, past + (0 if present else 1)
    return inter, area, past


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--manifest", default=str(SHARED_DATA / "manifest.jsonl"))
    parser.add_argument("--embeddings", default=str(ROOT / "runs" / "embeddings"))
    parser.add_argument("--out", default=str(ROOT / "runs" / "sweep"))
    parser.add_argument("--past", type=int, default=6)
    parser.add_argument("--rules", nargs="*", default=list(PROMPT_RULES), help="prompt rules to run")
    parser.add_argument("--only", default="", help="only case ids containing this")
    parser.add_argument("--skip", default=None, help="leave out case ids containing this")
    parser.add_argument("--select-only", action="store_true", help="no new chains: select on the stored ones")
    args = parser.parse_args()
    import torch

    from MedSAMAgentLib.tools.litemedsam import LiteMedSAM

    torch.set_num_threads(1)
    out = Path(args.out)
    (out / "chains").mkdir(parents=True, exist_ok=True)
    tool = LiteMedSAM(device="cpu")
    disk_embeddings(tool, args.embeddings)
    cases = [c for c in read_manifest(args.manifest) if c.dims == 3 and c.label is not None]
    data: dict[str, dict] = {}
    groups = {c.id: c.group for c in cases}
    for case in cases:
        if args.only not in case.id or (args.skip and args.skip in case.id):
            continue
        path = out / "chains" / (case.id.replace("/", "__") + ".pkl")
        stored = pickle.loads(path.read_bytes()) if path.exists() else {}
        todo = [] if args.select_only else [name for name in args.rules if name not in stored]
        if todo:
            volume, gt = load_volume_case(case)
            for name in todo:
                margin, depth, clicks = PROMPT_RULES[name]
                began = time.perf_counter()
                stored[name] = chains(tool, volume, gt, PropagationRules(margin, depth, clicks), args.past)
                path.write_bytes(pickle.dumps(stored))
                print(f"{case.id} {name}: {time.perf_counter() - began:.0f} s", flush=True)
        data[case.id] = stored
    ids = [i for i in data if all(name in data[i] for name in args.rules)]
    names = list(STOP_GRID)
    grid = [(rule, dict(zip(names, values))) for rule in args.rules
            for values in itertools.product(*STOP_GRID.values())]
    results = np.zeros((len(ids), len(grid), 3))  # 3D Dice, slices past the end up, down
    for c, case_id in enumerate(ids):
        for g, (rule, stops) in enumerate(grid):
            chain = data[case_id][rule]
            rules = replace(PropagationRules(*PROMPT_RULES[rule]), **stops)
            (iu, au, pu), (id_, ad, pd) = truncate(chain[1], rules), truncate(chain[-1], rules)
            ki, ka = chain["key"]
            results[c, g] = (2 * (ki + iu + id_) / (ka + au + ad + chain["gt_total"]), pu, pd)

    def objective(rows):  # mean over groups of the group's mean Dice, less the overrun penalty
        members: dict[str, list[int]] = {}
        for r in rows:
            members.setdefault(groups[ids[r]], []).append(r)
        overrun = np.clip(results[:, :, 1:] - 2, 0, None).sum(axis=2)
        return np.mean([(results[m, :, 0] - OVERRUN_PENALTY * overrun[m]).mean(axis=0)
                        for m in members.values()], axis=0)

    def describe(g):
        rule, stops = grid[g]
        return {"prompt": rule, **dict(zip(("margin", "click_depth", "max_clicks"), PROMPT_RULES[rule])), **stops}

    best_all = int(np.argmax(objective(range(len(ids)))))
    report = {"cases_n": len(ids), "in_sample_rules": describe(best_all), "groups": {}, "cases": {}}
    for group in sorted({groups[i] for i in ids}):
        held = [r for r, i in enumerate(ids) if groups[i] == group]
        rest = [r for r, i in enumerate(ids) if groups[i] != group]
        best = int(np.argmax(objective(rest))) if rest else best_all
        report["groups"][group] = {"n": len(held), "held_out_rules": describe(best),
                                   "held_out_dice": round(float(results[held, best, 0].mean()), 4),
                                   "in_sample_dice": round(float(results[held, best_all, 0].mean()), 4)}
        for r in held:
            report["cases"][ids[r]] = {"held_out": [round(float(v), 4) for v in results[r, best]],
                                       "in_sample": [round(float(v), 4) for v in results[r, best_all]]}
    for key in ("held_out", "in_sample"):
        report[f"{key}_mean_dice"] = round(float(np.mean([v[key][0] for v in report["cases"].values()])), 4)
    # the best of each prompt rule (stop rule tuned on all groups), to show what clicks and margins do
    report["by_prompt_rule"] = {}
    score_all = objective(range(len(ids)))
    for rule in args.rules:
        members = [g for g, (r, _) in enumerate(grid) if r == rule]
        g = members[int(np.argmax(score_all[members]))]
        report["by_prompt_rule"][rule] = {"objective": round(float(score_all[g]), 4), "rules": describe(g),
                                          "mean_dice": round(float(results[:, g, 0].mean()), 4),
                                          "cases_past_2": int((results[:, g, 1:].max(axis=1) > 2).sum())}
    never = next(g for g, (r, stops) in enumerate(grid) if r == args.rules[0] and not any(
        v for k, v in stops.items() if k != "stop_growth" and k != "stop_intensity") and stops["stop_growth"] ==
        float("inf") and stops["stop_intensity"] == float("inf"))
    report["no_stop_rule"] = {"prompt": args.rules[0], "mean_dice": round(float(results[:, never, 0].mean()), 4),
                              "cases_past_2": int((results[:, never, 1:].max(axis=1) > 2).sum())}
    seconds = [t for i in ids for rule in args.rules for t in data[i][rule]["seconds"]]
    report["median_seconds_per_propagated_slice"] = round(float(np.median(seconds)), 3) if seconds else None
    (out / "sweep.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "cases"}, indent=1, default=str))
    for i, v in report["cases"].items():
        print(f"{i:45s} held-out {v['held_out']}  in-sample {v['in_sample']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

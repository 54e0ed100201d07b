"""Choose the stop rule (or the cap on the boxes' size) among a few candidates by the volume protocol itself,
leave-datasets-out.

    .venv/bin/python Testing/benchmarks/choose_stop_rule.py [--embeddings runs/embeddings] [--out runs/stop-rule]
        [--family stop|size] [--key-area 0.6]

``sweep_propagation.py`` scores stop rules on chains run without one, so it cannot see the repair (the retry with
the neighbour mask's own box before stopping), which changes where a chain goes next. Here every candidate runs
the whole protocol (``volume_evaluation.run_volume``: key box, propagation, 3 corrections) on the labelled 3D
rows of ../shared/data and of the bundled data (two small CT volumes, their own group: images no rule was tuned
on before). For each dataset group held out, the candidate with the best objective on the other
groups (mean 3D Dice after propagation alone, less 0.05 per slice taken more than 2 past an end) is scored on the
held-out group. Writes OUT/candidates.json (per case, per candidate) and prints the table. ``--family size``:
the candidates are the shipped rule with the prompt boxes' sides capped at 1, 1.25, 1.5 or 2 times the run's start
box's (``PropagationRules.max_size``), or not capped. ``--key-area F``: every case starts instead on the slice
on each side of the largest whose area is nearest F times the largest (two runs per case): the protocol's key
slice is the largest, and a rule that relies on that fails a clinician who starts elsewhere.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from MedSAMAgentLib.commands.options import OPEN_FRACTION  # noqa: E402
from MedSAMAgentLib.manifest import BUNDLED_DATA, SHARED_DATA  # noqa: E402
from MedSAMAgentLib.propagation_rules import DEFAULT_RULES, PropagationRules  # noqa: E402
from sweep_propagation import OVERRUN_PENALTY  # noqa: E402  (one objective for both benchmarks)

# the prompt and repair as shipped; each candidate sets its own stop thresholds (none inherited from the default)
BASE = replace(DEFAULT_RULES, stop_appearance=0.0, stop_start_intensity=float("inf"))
CANDIDATES: dict[str, PropagationRules] = {  # all with IoU 0.4 (without it small structures ran on, measured)
    "drift 1 std from the start": replace(BASE, stop_start_intensity=1.0),
    "appearance 0.5": replace(BASE, stop_appearance=0.5),
    "appearance 0.3, drift 1.5 std": replace(BASE, stop_appearance=0.3, stop_start_intensity=1.5),
    "appearance 0.5, drift 1.5 std": replace(BASE, stop_appearance=0.5, stop_start_intensity=1.5),
    "appearance 0.5, drift 1 std": replace(BASE, stop_appearance=0.5, stop_start_intensity=1.0),
}

SIZE_CANDIDATES: dict[str, PropagationRules] = {
    "no cap": replace(DEFAULT_RULES, max_size=None),
    **{f"sides at most {v:g}x the start box's": replace(DEFAULT_RULES, max_size=v) for v in (1.0, 1.25, 1.5, 2.0)},
}
FAMILIES = {"stop": CANDIDATES, "size": SIZE_CANDIDATES}


def objective(rows: list[dict]) -> float:
    return float(np.mean([r["dice"][0] - OVERRUN_PENALTY * max(max(r["past"]) - 2, 0) for r in rows]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--manifest", nargs="+", default=[str(SHARED_DATA / "manifest.jsonl"),
                                                          str(BUNDLED_DATA / "manifest.jsonl")])
    parser.add_argument("--embeddings", default=str(ROOT / "runs" / "embeddings"))
    parser.add_argument("--out", default=None, help="default: runs/stop-rule, runs/box-size")
    parser.add_argument("--family", choices=sorted(FAMILIES), default="stop")
    parser.add_argument("--key-area", type=OPEN_FRACTION, default=None,
                        help="start on the slices with about this fraction of the largest area (both sides)")
    parser.add_argument("--corrections", type=int, default=3)
    parser.add_argument("--candidates", nargs="*", type=int, help="run only these (0-based; several processes "
                        "can share the work: each candidate's results are kept in OUT and reused)")
    args = parser.parse_args()
    manifests = [m for m in args.manifest if Path(m).exists()]
    if not manifests:
        print(f"skipped: no manifest at {args.manifest}")
        return 0
    import torch

    from MedSAMAgentLib.tools.litemedsam import LiteMedSAM
    from MedSAMAgentLib.volume_evaluation import case_keys, run_volume, volume_cases
    from MedSAMAgentLib.volumes import disk_embeddings

    torch.set_num_threads(1)
    tool = LiteMedSAM(device="cpu")
    disk_embeddings(tool, args.embeddings)
    runs, groups = [], {}  # (case, key slice or None, run id)
    for manifest in manifests:
        bundled = Path(manifest).resolve().parent == BUNDLED_DATA.resolve()
        for case in volume_cases(manifest)[0]:
            for key in case_keys(case, args.key_area):
                name = case.id if key is None else f"{case.id}@{key}"
                runs.append((case, key, name))
                groups[name] = f"bundled {case.group}" if bundled else case.group
    candidates = FAMILIES[args.family]
    out = Path(args.out or ROOT / "runs" / {"stop": "stop-rule", "size": "box-size"}[args.family])
    out.mkdir(parents=True, exist_ok=True)
    suffix = "" if args.key_area is None else f"-key{args.key_area:g}"  # the off-key runs are stored apart
    results: dict[str, dict[str, dict]] = {}
    for number, (name, rules) in enumerate(candidates.items()):
        stored = out / f"candidate-{number}{suffix}.json"
        if stored.exists() and json.loads(stored.read_text())["rules"] == asdict(rules):
            results[name] = json.loads(stored.read_text())["cases"]
            continue
        if args.candidates is not None and number not in args.candidates:
            continue
        results[name] = {}
        for case, key, run in runs:
            r = run_volume(case, tool, corrections=args.corrections, rules=rules, key=key)
            results[name][run] = {"group": groups[run], "dice": r.dice, "past": list(r.past_end),
                                  "reference": r.reference_dice}
            print(f"{name}: {run} {[round(d, 3) for d in r.dice]} past {r.past_end}", flush=True)
        stored.write_text(json.dumps({"rules": asdict(rules), "cases": results[name]}) + "\n")
    if args.candidates is not None:
        return 0
    ids = [run for *_, run in runs]
    report: dict = {"candidates": {}, "held_out": {}}
    for name, rows in results.items():
        report["candidates"][name] = {
            f"dice_after_{k}": round(float(np.mean([rows[i]["dice"][k] for i in ids])), 4)
            for k in range(args.corrections + 1)}
        report["candidates"][name]["cases_past_2"] = sum(max(rows[i]["past"]) > 2 for i in ids)
    held: dict[str, dict] = {}
    for group in sorted(set(groups.values())):
        rest = [i for i in ids if groups[i] != group]
        pick = max(results, key=lambda name: objective([results[name][i] for i in rest]))
        members = [i for i in ids if groups[i] == group]
        held.update({i: results[pick][i] for i in members})
        report["held_out"][group] = {"chosen": pick, "dice_alone": round(float(np.mean(
            [results[pick][i]["dice"][0] for i in members])), 4)}
    report["held_out_dice_alone"] = round(float(np.mean([held[i]["dice"][0] for i in ids])), 4)
    report["held_out_dice_after_last"] = round(float(np.mean([held[i]["dice"][-1] for i in ids])), 4)
    report["held_out_cases_past_2"] = sum(max(held[i]["past"]) > 2 for i in ids)
    report["in_sample_choice"] = max(results, key=lambda name: objective([results[name][i] for i in ids]))
    report["reference_dice"] = round(float(np.mean([results[next(iter(results))][i]["reference"] for i in ids])), 4)
    (out / f"candidates{suffix}.json").write_text(json.dumps({"report": report, "cases": results}, indent=1) + "\n")
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

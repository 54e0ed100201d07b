"""Choose the stop rule among a few candidates by the volume protocol itself, leave-datasets-out.

    .venv/bin/python Testing/benchmarks/choose_stop_rule.py [--embeddings runs/embeddings] [--out runs/stop-rule]

``sweep_propagation.py`` scores stop rules on chains run without one, so it cannot see the repair (the retry with
the neighbour mask's own box before stopping), which changes where a chain goes next. Here every candidate runs
the whole protocol (``volume_evaluation.run_volume``: key box, propagation, 3 corrections) on the labelled 3D
rows of ../shared/data and of the bundled data (two small CT volumes, their own group: images no rule was tuned
on before). For each dataset group held out, the candidate with the best objective on the other
groups (mean 3D Dice after propagation alone, less 0.05 per slice taken more than 2 past an end) is scored on the
held-out group. Writes OUT/candidates.json (per case, per candidate) and prints the table.
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


def objective(rows: list[dict]) -> float:
    return float(np.mean([r["dice"][0] - OVERRUN_PENALTY * max(max(r["past"]) - 2, 0) for r in rows]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--manifest", nargs="+", default=[str(SHARED_DATA / "manifest.jsonl"),
                                                          str(BUNDLED_DATA / "manifest.jsonl")])
    parser.add_argument("--embeddings", default=str(ROOT / "runs" / "embeddings"))
    parser.add_argument("--out", default=str(ROOT / "runs" / "stop-rule"))
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
    from MedSAMAgentLib.volume_evaluation import run_volume, volume_cases
    from MedSAMAgentLib.volumes import disk_embeddings

    torch.set_num_threads(1)
    tool = LiteMedSAM(device="cpu")
    disk_embeddings(tool, args.embeddings)
    cases, groups = [], {}
    for manifest in manifests:
        bundled = Path(manifest).resolve().parent == BUNDLED_DATA.resolve()
        for case in volume_cases(manifest)[0]:
            cases.append(case)
            groups[case.id] = f"bundled {case.group}" if bundled else case.group
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[str, dict]] = {}
    for number, (name, rules) in enumerate(CANDIDATES.items()):
        stored = out / f"candidate-{number}.json"
        if stored.exists() and json.loads(stored.read_text())["rules"] == asdict(rules):
            results[name] = json.loads(stored.read_text())["cases"]
            continue
        if args.candidates is not None and number not in args.candidates:
            continue
        results[name] = {}
        for case in cases:
            r = run_volume(case, tool, corrections=args.corrections, rules=rules)
            results[name][case.id] = {"group": groups[case.id], "dice": r.dice, "past": list(r.past_end),
                                      "reference": r.reference_dice}
            print(f"{name}: {case.id} {[round(d, 3) for d in r.dice]} past {r.past_end}", flush=True)
        stored.write_text(json.dumps({"rules": asdict(rules), "cases": results[name]}) + "\n")
    if args.candidates is not None:
        return 0
    ids = [c.id for c in cases]
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
    (out / "candidates.json").write_text(json.dumps({"report": report, "cases": results}, indent=1) + "\n")
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

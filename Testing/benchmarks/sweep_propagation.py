"""Choose the propagation rules (``propagation_rules``) by leave-datasets-out measurement on the 3D rows of
../shared/data, built-in tool.

    .venv/bin/python Testing/benchmarks/sweep_propagation.py [--embeddings runs/emb-cache] [--out runs/sweep]

Per case: the ground-truth box on the largest slice makes the key mask; for each prompt rule (margin, click
depth) the chain is run in both directions by the engine itself (``VolumeSession`` with a stop rule that never
fires) to the volume's end or ``--past`` slices beyond the structure, recording each slice's overlap with the
truth and the stop rule's signals (``SliceSignal``). Every stop rule then only truncates those chains, so the
search costs one chain per prompt rule. The reference (the ground-truth box on every slice with the structure)
is computed once per case.

Selection: coordinate descent over the stop thresholds (``STOP_GRID``, from no stop at all, three passes) on
an objective = mean 3D Dice over the cases less ``OVERRUN_PENALTY`` per slice taken more than 2 past an end.
For each dataset group held out the rules are chosen on the other groups and scored on the held-out group
(held-out), beside the rules chosen on all groups (in-sample). Also reported: the ceiling of any stop rule
(each chain cut where the truth says is best) and the rules in ``propagation_rules.DEFAULT_RULES``. Writes
OUT/sweep.json.
"""

from __future__ import annotations

import argparse
import json
import pickle
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from MedSAMAgentLib.manifest import SHARED_DATA, read_manifest  # noqa: E402
from MedSAMAgentLib.policies.oracle import gt_box  # noqa: E402
from MedSAMAgentLib.propagation import VolumeSession  # noqa: E402
from MedSAMAgentLib.propagation_rules import DEFAULT_RULES, PropagationRules, stop_reason  # noqa: E402
from MedSAMAgentLib.volumes import disk_embeddings, load_volume_case  # noqa: E402

PROMPT_RULES = {  # name -> (margin, click depth, clicks, max growth beyond the neighbour's prompt box, tightenings)
    "m0": (0, None, 0, None, 0), "m1": (1, None, 0, None, 0), "m3": (3, None, 0, None, 0),
    "m6": (6, None, 0, None, 0), "m3-d4": (3, 4.0, 1, None, 0), "m3-d8": (3, 8.0, 1, None, 0),
    "m3-d4x3": (3, 4.0, 3, None, 0), "m3-g0": (3, None, 0, 0, 0), "m3-g1": (3, None, 0, 1, 0),
    "m3-g2": (3, None, 0, 2, 0), "m3-t1": (3, None, 0, None, 1), "m3-t3": (3, None, 0, None, 3),
}
PROMPT_FIELDS = ("margin", "click_depth", "max_clicks", "max_growth", "tighten")


def prompt_rules(name: str) -> PropagationRules:
    return PropagationRules(**dict(zip(PROMPT_FIELDS, PROMPT_RULES[name])))
INF = float("inf")
STOP_GRID = {  # threshold -> values tried (the first: never stops)
    "stop_iou": (-1.0, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7),
    "stop_area_ratio": (-1.0, 0.3, 0.5, 0.7),
    "stop_growth": (INF, 1.1, 1.25, 1.5, 2.0),
    "stop_intensity": (INF, 0.5, 0.75, 1.0, 1.5, 2.0),
    "stop_start_intensity": (INF, 0.75, 1.0, 1.5, 2.0, 3.0),
    "stop_border": (INF, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8),
    "stop_regrowth": (INF, 1.1, 1.25, 1.5, 2.0, 3.0),
    "stop_jump": (INF, 0.25, 0.5, 0.75, 1.0),
    "min_area": (0, 5, 10, 30),
    "stop_score": (0.0, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85),
    "stop_appearance": (0.0, 0.3, 0.5, 0.6, 0.7, 0.8, 0.9),
}
OVERRUN_PENALTY = 0.05  # objective cost per slice taken more than 2 past an end (the limit), per case
NEVER_STOP = {name: values[0] for name, values in STOP_GRID.items()}


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
    session.close()
    return out


def reference(tool, volume, gt) -> tuple[int, int]:
    """(|ref & gt|, |ref|) of the ground-truth box on every slice with the structure."""
    inter = area = 0
    for k in np.nonzero(gt.any(axis=(1, 2)))[0]:
        tool.set_image(volume.slice_image(int(k)), key=volume.key(int(k)))
        mask = tool.predict([gt_box(gt[k])], None).mask
        inter, area = inter + int((mask & gt[k]).sum()), area + int(mask.sum())
    return inter, area


def truncate(steps, rules: PropagationRules) -> tuple[int, int, int]:
    """(|pred & gt|, |pred|, slices taken past the structure) when ``rules`` stops the chain."""
    inter = area = past = 0
    for i_, a_, present, signal in steps:
        if stop_reason(signal, rules) is not None:
            break
        inter, area, past = inter + i_, area + a_, past + (0 if present else 1)
    return inter, area, past


SIGNALS = {  # threshold -> (signal field, stops when the signal is below (-1) or above (+1) it), as stop_reason
    "stop_iou": ("iou_with_neighbour", -1), "stop_area_ratio": ("area_ratio", -1), "stop_growth": ("area_ratio", 1),
    "stop_intensity": ("intensity_shift", 1), "stop_start_intensity": ("start_intensity_shift", 1),
    "stop_border": ("border", 1), "stop_regrowth": ("regrowth", 1), "stop_jump": ("jump", 1),
    "min_area": ("neighbour_area", -1), "stop_score": ("score", -1), "stop_appearance": ("appearance", -1),
}


def _arrays(steps):
    """A chain as arrays: signals (steps x len(SIGNALS)), cumulative |pred & gt|, |pred|, slices past the end."""
    signals = np.array([[float(getattr(s[3], field)) for field, _ in SIGNALS.values()] for s in steps]).reshape(
        len(steps), len(SIGNALS))
    counts = np.array([(s[0], s[1], 0 if s[2] else 1) for s in steps]).reshape(len(steps), 3)
    return signals, np.vstack([np.zeros((1, 3)), np.cumsum(counts, axis=0)])


_ARRAYS: dict[int, tuple] = {}


def _taken(steps, rules: PropagationRules) -> np.ndarray:
    """(|pred & gt|, |pred|, past) of the slices ``rules`` takes: the same decisions as ``stop_reason``."""
    if id(steps) not in _ARRAYS:
        _ARRAYS[id(steps)] = (steps, *_arrays(steps))
    _, signals, cumulative = _ARRAYS[id(steps)]
    if not len(signals):
        return cumulative[0]
    fire = np.zeros(len(signals), bool)
    for column, (name, (_, sign)) in enumerate(SIGNALS.items()):
        threshold = getattr(rules, name)
        if name == "min_area":
            threshold = max(threshold, 1)
        fire |= signals[:, column] < threshold if sign < 0 else signals[:, column] > threshold
    first = int(np.argmax(fire)) if fire.any() else len(signals)
    return cumulative[first]


def case_score(chain, rules) -> tuple[float, int, int]:
    (iu, au, pu), (id_, ad, pd) = _taken(chain[1], rules), _taken(chain[-1], rules)
    ki, ka = chain["key"]
    return 2 * (ki + iu + id_) / (ka + au + ad + chain["gt_total"]), int(pu), int(pd)


def exact_score(chain, rules) -> tuple[float, int, int]:
    """``case_score`` through ``stop_reason`` itself (checks the vectorised one)."""
    (iu, au, pu), (id_, ad, pd) = truncate(chain[1], rules), truncate(chain[-1], rules)
    ki, ka = chain["key"]
    return 2 * (ki + iu + id_) / (ka + au + ad + chain["gt_total"]), pu, pd


def ceiling(chain) -> float:
    """The best any stop rule could do on this chain: each direction cut where 3D Dice is highest."""
    ki, ka = chain["key"]
    best = None
    ups = [(0, 0)] + list(np.cumsum([(s[0], s[1]) for s in chain[1]], axis=0)) if chain[1] else [(0, 0)]
    downs = [(0, 0)] + list(np.cumsum([(s[0], s[1]) for s in chain[-1]], axis=0)) if chain[-1] else [(0, 0)]
    for iu, au in ups:
        for id_, ad in downs:
            d = 2 * (ki + iu + id_) / (ka + au + ad + chain["gt_total"])
            best = d if best is None else max(best, d)
    return float(best)


def objective(data, ids, rules) -> float:
    scores = [case_score(data[i], rules) for i in ids]
    return float(np.mean([d - OVERRUN_PENALTY * (max(pu - 2, 0) + max(pd - 2, 0)) for d, pu, pd in scores]))


def descend(data, ids, rules: PropagationRules, passes: int = 4) -> tuple[float, PropagationRules]:
    """Coordinate descent over ``STOP_GRID`` from ``rules``, at most ``passes`` sweeps."""
    best = objective(data, ids, rules)
    for _ in range(passes):
        changed = False
        for name, values in STOP_GRID.items():
            for value in values:
                candidate = replace(rules, **{name: value})
                score = objective(data, ids, candidate)
                if score > best + 1e-9:
                    rules, best, changed = candidate, score, True
        if not changed:
            break
    return best, rules


def select(data, ids, base: PropagationRules) -> PropagationRules:
    """The best of coordinate descents from no stop, from the stop thresholds of ``DEFAULT_RULES``, and from each
    single signal at each of its values (a greedy search from one point stalls in a local optimum)."""
    never = replace(base, **NEVER_STOP)
    starts = [never, replace(base, **{k: getattr(DEFAULT_RULES, k) for k in STOP_GRID})]
    starts += [replace(never, **{name: value}) for name, values in STOP_GRID.items() for value in values[1:]]
    return max((descend(data, ids, start) for start in starts), key=lambda found: found[0])[1]


def thresholds(rules: PropagationRules) -> dict:
    return {k: v for k, v in asdict(rules).items() if k in STOP_GRID and v != NEVER_STOP[k]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--manifest", default=str(SHARED_DATA / "manifest.jsonl"))
    parser.add_argument("--embeddings", default=str(ROOT / "runs" / "emb-cache"))
    parser.add_argument("--out", default=str(ROOT / "runs" / "sweep"))
    parser.add_argument("--past", type=int, default=8)
    parser.add_argument("--rules", nargs="*", default=["m3"], help="prompt rules to run")
    parser.add_argument("--only", default="", help="only case ids containing this")
    parser.add_argument("--select-only", action="store_true", help="no new chains: select on the stored ones")
    args = parser.parse_args()
    import torch

    from MedSAMAgentLib.tools.litemedsam import LiteMedSAM

    torch.set_num_threads(1)
    out = Path(args.out)
    (out / "chains").mkdir(parents=True, exist_ok=True)
    tool = None
    cases = [c for c in read_manifest(args.manifest) if c.dims == 3 and c.label is not None and args.only in c.id]
    data: dict[str, dict] = {}
    groups = {c.id: c.group for c in cases}
    for case in cases:
        path = out / "chains" / (case.id.replace("/", "__") + ".pkl")
        stored = pickle.loads(path.read_bytes()) if path.exists() else {}
        todo = [] if args.select_only else [name for name in args.rules + ["reference"] if name not in stored]
        if todo:
            if tool is None:
                tool = LiteMedSAM(device="cpu")
                disk_embeddings(tool, args.embeddings)
            volume, gt = load_volume_case(case)
            for name in todo:
                began = time.perf_counter()
                if name == "reference":
                    stored[name] = reference(tool, volume, gt)
                else:
                    stored[name] = chains(tool, volume, gt, prompt_rules(name), args.past)
                path.write_bytes(pickle.dumps(stored))
                print(f"{case.id} {name}: {time.perf_counter() - began:.0f} s", flush=True)
        data[case.id] = stored
    report: dict = {"cases_n": len(data), "objective": f"mean case 3D Dice - {OVERRUN_PENALTY} per slice > 2 past "
                    "an end", "prompt_rules": {}}
    ids = [i for i in data if "reference" in data[i]]
    ref = {i: 2 * data[i]["reference"][0] / (data[i]["reference"][1] + data[i][args.rules[0]]["gt_total"])
           for i in ids}
    report["reference_mean_dice"] = round(float(np.mean(list(ref.values()))), 4)
    for rule in args.rules:
        chain = {i: data[i][rule] for i in ids if rule in data[i]}
        base = prompt_rules(rule)
        entry: dict = {"ceiling_mean_dice": round(float(np.mean([ceiling(c) for c in chain.values()])), 4)}
        for name, rules in (("no_stop", replace(base, **NEVER_STOP)),
                            ("default_rules", replace(DEFAULT_RULES, **{k: getattr(base, k) for k in PROMPT_FIELDS}))):
            scores = [case_score(c, rules) for c in chain.values()]
            entry[name] = {"mean_dice": round(float(np.mean([s[0] for s in scores])), 4),
                           "cases_past_2": int(sum(max(s[1:]) > 2 for s in scores))}
        in_sample = select(chain, list(chain), base)
        for c in chain.values():
            assert np.allclose(case_score(c, in_sample), exact_score(c, in_sample)), "vectorised stop rule differs"
        entry["in_sample_rules"] = thresholds(in_sample)
        held: dict[str, float] = {}
        entry["groups"] = {}
        for group in sorted({groups[i] for i in chain}):
            rest = [i for i in chain if groups[i] != group]
            members = [i for i in chain if groups[i] == group]
            rules = select(chain, rest, base) if rest else in_sample
            for i in members:
                held[i] = case_score(chain[i], rules)
            entry["groups"][group] = {
                "n": len(members), "held_out_rules": thresholds(rules),
                "held_out_dice": round(float(np.mean([held[i][0] for i in members])), 4),
                "in_sample_dice": round(float(np.mean([case_score(chain[i], in_sample)[0] for i in members])), 4),
                "reference_dice": round(float(np.mean([ref[i] for i in members])), 4)}
        entry["cases"] = {i: {"held_out": [round(float(v), 4) for v in held[i]],
                              "in_sample": [round(float(v), 4) for v in case_score(chain[i], in_sample)],
                              "ceiling": round(ceiling(chain[i]), 4), "reference": round(ref[i], 4)}
                          for i in chain}
        for key in ("held_out", "in_sample"):
            entry[f"{key}_mean_dice"] = round(float(np.mean([v[key][0] for v in entry["cases"].values()])), 4)
            entry[f"{key}_cases_past_2"] = int(sum(max(v[key][1:]) > 2 for v in entry["cases"].values()))
        seconds = [t for c in chain.values() for t in c["seconds"]]
        entry["median_seconds_per_propagated_slice"] = round(float(np.median(seconds)), 3) if seconds else None
        report["prompt_rules"][rule] = entry
    (out / "sweep.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    for rule, entry in report["prompt_rules"].items():
        print(json.dumps({k: v for k, v in entry.items() if k != "cases"}, indent=1, default=str))
        for i, v in entry["cases"].items():
            print(f"{rule} {i:45s} held-out {v['held_out']}  in-sample {v['in_sample']}  ceiling {v['ceiling']}"
                  f"  reference {v['reference']}")
    print(f"reference mean Dice {report['reference_mean_dice']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

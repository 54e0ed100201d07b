"""``evaluate --protocol volume``: the agent carries a key-slice prompt through each 3D row of a manifest
(``propagation.VolumeSession``; SAM2 / MedSAM2: their memory propagation, ``propagation_sam2``), then the
simulated clinician corrects it, slice by slice.

Per case (a 3D row that names a label): the ground-truth box on the slice with the most foreground (the key
slice; with ``key_area``, instead each of the two slices near that fraction of its area, ``key_slices``),
propagation in both directions with nobody intervening, then up to ``corrections`` corrections, each on the slice
with the largest error (``reviewers.volume_correction``: a box, a click, or "no structure here"), re-propagating
onward from it (the clinician undoes those runs when they made the volume worse, keeping the corrected slice).
Reported: 3D Dice and NSD (2 mm) after 0, 1, 3, 5, 10 corrections; how far propagation alone ran past the
structure's ends; clinician actions (the key box counts); slices visited (the
tool ran on them); time per propagated slice; and the reference a box tool cannot beat from boxes: the
ground-truth box on every slice with the structure. summary.json, cases.csv, dice_vs_corrections.png,
trajectories.jsonl (every slice's session as a 2D episode).
"""

from __future__ import annotations

import csv
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from .manifest import Case, read_manifest
from .metrics import dice
from .policies.oracle import gt_box
from .propagation_sam2 import volume_session_for
from .propagation_rules import DEFAULT_RULES, PropagationRules
from .trajectory import TrajectoryWriter
from .volumes import Volume, load_volume_case

CORRECTIONS = 10
REPORTED = (0, 1, 3, 5, 10)  # corrections after which Dice is reported
NSD_TOLERANCE_MM = 2.0


@dataclass
class VolumeResult:
    id: str
    group: str
    shape: tuple[int, int, int]
    key_slice: int
    structure_slices: tuple[int, int]  # first and last slice with the structure
    dice: list[float]  # after 0, 1, ... corrections (the last value carried on if the clinician stopped early)
    nsd: dict[int, float]  # at REPORTED
    reference_dice: float  # ground-truth box on every slice with the structure
    past_end: tuple[int, int]  # slices propagation alone took beyond the structure (below, above)
    corrections: list[str] = field(default_factory=list)
    slices_visited: int = 0
    seconds_per_slice: list[float] = field(default_factory=list)

    @property
    def clinician_actions(self) -> int:
        return 1 + len(self.corrections)


def volume_cases(manifest: str | Path) -> tuple[list[Case], list[dict]]:
    """The manifest's 3D rows that name a label, and the other 3D rows with why they are skipped."""
    cases, skipped = [], []
    for case in read_manifest(manifest):
        if case.dims != 3:
            continue
        if case.label is None:
            skipped.append({"id": case.id, "reason": "the mask holds several labels and the row names none"})
        else:
            cases.append(case)
    return cases, skipped


def surface_dice(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float], tolerance: float) -> float:
    """Normalised surface Dice at ``tolerance`` mm; ``spacing`` in array (k, j, i) order."""
    from scipy import ndimage

    if not pred.any() and not gt.any():
        return 1.0
    if not pred.any() or not gt.any():
        return 0.0
    both = pred | gt
    lo = np.maximum(np.argwhere(both).min(axis=0) - 3, 0)
    hi = np.argwhere(both).max(axis=0) + 4
    crop = tuple(slice(a, b) for a, b in zip(lo, hi))
    p, g = np.pad(pred[crop], 1), np.pad(gt[crop], 1)
    surface_p, surface_g = p & ~ndimage.binary_erosion(p), g & ~ndimage.binary_erosion(g)
    to_g = ndimage.distance_transform_edt(~surface_g, sampling=spacing)
    to_p = ndimage.distance_transform_edt(~surface_p, sampling=spacing)
    close = (to_g[surface_p] <= tolerance).sum() + (to_p[surface_g] <= tolerance).sum()
    return float(close / (surface_p.sum() + surface_g.sum()))


def reference_mask(tool, volume: Volume, gt: np.ndarray) -> np.ndarray:
    """The ground-truth box on every slice with the structure, each slice on its own."""
    out = np.zeros(gt.shape, bool)
    for k in range(volume.slices):
        truth = volume.take(gt, k)
        if truth.any():
            tool.set_image(volume.slice_image(k), key=volume.key(k))
            volume.put(out, k, tool.predict([gt_box(truth)], None).mask)
    return out


def key_slices(gt: np.ndarray, key_area: Optional[float] = None) -> list[int]:
    """The protocol's key slice: the one with the most foreground. With ``key_area``, instead the slice on each
    side of it whose area is nearest that fraction of the largest (a clinician does not always start on the
    largest slice: a rule that relies on it is checked this way, ``choose_stop_rule.py --key-area``)."""
    area = gt.sum(axis=(1, 2))
    largest = int(np.argmax(area))
    if key_area is None:
        return [largest]
    keys = []
    for side in (-1, +1):
        candidates = [k for k in range(len(area)) if (k - largest) * side > 0 and area[k] > 0]
        if candidates:
            keys.append(min(candidates, key=lambda k: (abs(area[k] - key_area * area[largest]), abs(k - largest))))
    return keys


def case_keys(case: Case, key_area: Optional[float] = None) -> list[Optional[int]]:
    """The key slices a case runs from: [None] (the largest, which ``run_volume`` finds), or with ``key_area``
    the slices ``key_slices`` picks."""
    return [None] if key_area is None else key_slices(load_volume_case(case)[1], key_area)


def run_volume(case: Case, tool, *, corrections: int = CORRECTIONS, rules: PropagationRules = DEFAULT_RULES,
               log: Optional[TrajectoryWriter] = None, key: Optional[int] = None) -> VolumeResult:
    """One case of the protocol; ``key``: start on this slice instead of the largest (``key_slices``)."""
    from .reviewers import volume_correction

    volume, gt = load_volume_case(case)
    spacing = tuple(reversed(volume.geometry.spacing)) if volume.geometry else (1.0, 1.0, 1.0)
    present = np.nonzero(gt.any(axis=(1, 2)))[0]
    key = key_slices(gt)[0] if key is None else key
    session = volume_session_for(  # SAM2 / MedSAM2: their own memory propagation; the others: the neighbour's box
        tool, volume, target=case.target, ground_truth=gt, rules=rules, log=log,
        meta={"volume_case_id": case.id, "source": "medsam-agent evaluate --protocol volume"})
    try:
        session.start(key, gt_box(gt[key]))
        session.propagate()
        seconds = [r.seconds for r in session.records.values() if r.origin == "propagated"]  # propagation alone
        mask = session.mask()
        taken = [k for k, r in session.records.items() if r.session is not None]
        past = (max(0, int(present.min()) - min(taken)), max(0, max(taken) - int(present.max())))
        dices, nsd, done = [dice(mask, gt)], {0: surface_dice(mask, gt, spacing, NSD_TOLERANCE_MM)}, []
        boxed = {key}
        for n in range(1, corrections + 1):
            action = volume_correction(mask, gt, boxed=frozenset(boxed), key=key)
            if action is None:
                break
            index, what = action
            label = f"{index}:{'clear' if what == 'clear' else what.kind}"
            operations = session.clear(index) if what == "clear" else session.correct(index, what)
            if what != "clear" and what.kind == "box":
                boxed.add(index)
            mask = session.mask()
            score = dice(mask, gt)
            if what != "clear" and len(operations) > 1 and score < dices[-1]:
                # the clinician reviews the re-propagated slices and takes the runs back when they made the
                # volume worse (undo per operation); the correction on the slice itself stays
                for _ in operations[1:]:
                    session.undo()
                label += "(runs undone)"
                mask = session.mask()
                score = dice(mask, gt)
            done.append(label)
            dices.append(score)
            if n in REPORTED:
                nsd[n] = surface_dice(mask, gt, spacing, NSD_TOLERANCE_MM)
        missing = [n for n in REPORTED if n not in nsd]  # the clinician had nothing left to correct
        if missing:
            final = surface_dice(mask, gt, spacing, NSD_TOLERANCE_MM)
            nsd.update({n: final for n in missing})
        dices += [dices[-1]] * (corrections + 1 - len(dices))
        visited = len(session.visited)
        session.finish(accepted=False, status="evaluated")
    finally:
        session.close()
    reference = dice(reference_mask(tool, volume, gt), gt)
    return VolumeResult(case.id, case.group, gt.shape, key, (int(present.min()), int(present.max())), dices, nsd,
                        reference, past, done, visited, seconds)


def summarize_volumes(results: Sequence[VolumeResult]) -> dict[str, Any]:
    if not results:
        return {"n": 0}
    seconds = [t for r in results for t in r.seconds_per_slice]
    return {
        "n": len(results),
        "dice_at": {str(n): round(float(np.mean([r.dice[min(n, len(r.dice) - 1)] for r in results])), 4)
                    for n in REPORTED},
        "nsd_at": {str(n): round(float(np.mean([r.nsd[n] for r in results])), 4) for n in REPORTED},
        "reference_dice": round(float(np.mean([r.reference_dice for r in results])), 4),
        "max_past_end": int(max(max(r.past_end) for r in results)),
        "mean_clinician_actions": round(float(np.mean([r.clinician_actions for r in results])), 3),
        "mean_slices_visited": round(float(np.mean([r.slices_visited for r in results])), 2),
        "median_seconds_per_propagated_slice": round(float(np.median(seconds)), 3) if seconds else None,
    }


def summarize(results: Sequence[VolumeResult], tool: str, skipped: Sequence[dict] = (),
              rules: PropagationRules = DEFAULT_RULES, key_area: Optional[float] = None) -> dict[str, Any]:
    groups: dict[str, list] = {}
    for result in results:
        groups.setdefault(result.group, []).append(result)
    from dataclasses import asdict

    return {"protocol": "volume", "tool": tool, "rules": asdict(rules), "key_area": key_area,
            "overall": summarize_volumes(results),
            "groups": {name: summarize_volumes(members) for name, members in sorted(groups.items())},
            "skipped": list(skipped)}


def case_rows(results: Sequence[VolumeResult]) -> list[dict[str, Any]]:
    rows = []
    for r in results:
        row: dict[str, Any] = {"id": r.id, "group": r.group, "slices": r.shape[0], "key_slice": r.key_slice,
                               "structure_first": r.structure_slices[0], "structure_last": r.structure_slices[1],
                               "reference_dice": round(r.reference_dice, 4)}
        row.update({f"dice_{n}": round(r.dice[min(n, len(r.dice) - 1)], 4) for n in REPORTED})
        row.update({f"nsd_{n}": round(r.nsd[n], 4) for n in REPORTED})
        row.update(past_end_below=r.past_end[0], past_end_above=r.past_end[1],
                   clinician_actions=r.clinician_actions, slices_visited=r.slices_visited,
                   median_seconds_per_slice=round(float(np.median(r.seconds_per_slice)), 3)
                   if r.seconds_per_slice else None, corrections=" ".join(r.corrections))
        rows.append(row)
    return rows


def write_report(out: str | Path, summary: dict[str, Any], results: Sequence[VolumeResult]) -> dict[str, Path]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"summary": out / "summary.json", "cases": out / "cases.csv", "plot": out / "dice_vs_corrections.png"}
    paths["summary"].write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    rows = case_rows(results)
    with paths["cases"].open("w", newline="", encoding="utf-8") as handle:
        if rows:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    if results:
        plot_corrections(summary, results, paths["plot"])
    return paths


def plot_corrections(summary: dict[str, Any], results: Sequence[VolumeResult], path: Path) -> None:
    """Mean 3D Dice against corrections per group (dashed: that group's per-slice ground-truth-box reference)."""
    from .evaluation import _pyplot

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    groups: dict[str, list] = {}
    for r in results:
        groups.setdefault(r.group, []).append(r)
    for (name, members), color in zip(sorted(groups.items()), plt.cm.tab10.colors * 3):
        curve = np.mean([r.dice for r in members], axis=0)
        ax.plot(range(len(curve)), curve, marker=".", lw=1, color=color, label=f"{name} (n={len(members)})")
        ax.axhline(np.mean([r.reference_dice for r in members]), color=color, ls="--", lw=0.8)
    overall = np.mean([r.dice for r in results], axis=0)
    ax.plot(range(len(overall)), overall, color="black", lw=2.5, label="overall")
    ax.axhline(summary["overall"]["reference_dice"], color="black", ls="--", lw=1.2,
               label="ground-truth box on every slice")
    ax.set_xlabel("clinician corrections after propagation")
    ax.set_ylabel("mean 3D Dice")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.set_title(f"{summary['tool']}: key-slice box, propagation, corrections")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def format_table(summary: dict[str, Any]) -> str:
    lines = [f"{'group':28s} {'n':>3s} " + " ".join(f"{'+' + str(n):>6s}" for n in REPORTED)
             + f" {'ref':>6s} {'past':>5s} {'clin.':>6s} {'slices':>7s} {'s/slice':>8s}"]
    blocks = list(summary["groups"].items()) + [("overall", summary["overall"])]
    for name, b in blocks:
        if not b.get("n"):
            continue
        per = b["median_seconds_per_propagated_slice"]
        lines.append(f"{name[:28]:28s} {b['n']:3d} " + " ".join(f"{b['dice_at'][str(n)]:6.3f}" for n in REPORTED)
                     + f" {b['reference_dice']:6.3f} {b['max_past_end']:5d} {b['mean_clinician_actions']:6.2f}"
                     f" {b['mean_slices_visited']:7.1f} {'-' if per is None else f'{per:8.2f}'}")
    if summary.get("skipped"):
        lines.append(f"skipped {len(summary['skipped'])}: " + ", ".join(s["id"] for s in summary["skipped"]))
    return "\n".join(lines)


def evaluate_volumes(manifest: str | Path, out: Optional[str | Path], tool, *, corrections: int = CORRECTIONS,
                     limit: Optional[int] = None, progress: bool = True, only: str = "",
                     rules: PropagationRules = DEFAULT_RULES, key_area: Optional[float] = None) -> dict[str, Any]:
    """Every 3D row of ``manifest`` that names a label (at most ``limit``; ids containing ``only``); with
    ``key_area``, each from the slices near that fraction of its largest area instead (``key_slices``)."""
    cases, skipped = volume_cases(manifest)
    cases = [c for c in cases if only in c.id][:limit]
    if not cases:
        raise ValueError(f"{manifest} has no 3D row that names a label" + (f" matching {only!r}" if only else ""))
    results: list[VolumeResult] = []
    log = None
    if out is not None:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "trajectories.jsonl").unlink(missing_ok=True)
        log = TrajectoryWriter(Path(out) / "trajectories.jsonl")
    try:
        for case in cases:
            for key in case_keys(case, key_area):
                began = time.perf_counter()
                results.append(run_volume(case, tool, corrections=corrections, rules=rules, log=log, key=key))
                if progress:
                    r = results[-1]
                    print(f"{case.id} from slice {r.key_slice}: Dice {[round(d, 3) for d in r.dice]} (after 0, "
                          f"1, ... corrections), reference {r.reference_dice:.3f}, past the end {r.past_end}, "
                          f"{time.perf_counter() - began:.0f} s", file=sys.stderr, flush=True)
    finally:
        if log is not None:
            log.close()
    summary = summarize(results, getattr(tool, "name", "tool"), skipped, rules, key_area)
    if out is not None:
        write_report(out, summary, results)
    return summary

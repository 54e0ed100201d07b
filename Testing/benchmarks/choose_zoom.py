"""Chooses the built-in tool's zoom setting (tools/zoom.py) leave-datasets-out on a manifest's 2D rows.

For every 2D-evaluable row, the ground-truth box and, for each ``--jitter`` above 0, a jittered one (a
clinician's box is not exact) is segmented on the whole image and on crops ``FACTORS`` times its side; each
candidate setting (crop factor, box-fit margin; or the tool's score instead of the box fit) then picks one mask
per row and box offline. Each dataset group in turn is held out: the setting with the best mean, over the box
kinds, of the other groups' means is scored on it. Prints the in-sample ranking and the held-out figures.

    python Testing/benchmarks/choose_zoom.py --manifest ../shared/data/manifest.jsonl --jitter 0 0.1
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from MedSAMAgentLib.evaluation import load_cases  # noqa: E402
from MedSAMAgentLib.manifest import read_manifest  # noqa: E402
from MedSAMAgentLib.metrics import dice  # noqa: E402
from MedSAMAgentLib.policies.oracle import gt_box, jittered_box  # noqa: E402
from MedSAMAgentLib.tools.litemedsam import LiteMedSAM  # noqa: E402
from MedSAMAgentLib.tools.zoom import box_fit, zoom_window  # noqa: E402

FACTORS = (1.5, 2.0, 3.0)
MARGINS = (0.0, 0.02, 0.05, 0.1, 0.2)


def measure(task, tool: LiteMedSAM, box) -> dict[float, tuple[float, float, float]]:
    """factor (1.0: the whole image) -> (Dice, tool score, box fit) of ``box``'s mask."""
    tool.set_image(task.image)
    whole = tool.predict([box], None)
    out = {1.0: (dice(whole.mask, task.ground_truth), whole.score, box_fit(whole.mask, box))}
    for factor in FACTORS:
        window = zoom_window(box, task.image.shape[:2], factor)
        if window is None:
            out[factor] = out[1.0]
            continue
        tool.set_image(window.crop(task.image))
        part = tool.predict([window.into(box)], None)
        mask = window.paste(part.mask, task.ground_truth.shape, False)
        out[factor] = (dice(mask, task.ground_truth), part.score, box_fit(mask, box))
    return out


def settings() -> list[tuple[str, tuple[float, ...], float]]:
    """(signal, crop factors tried, margin): keep the crop whose signal beats the best so far by the margin.
    One factor at a time, as the tool can afford (one more embedding): in an earlier form of this analysis
    (ground-truth boxes only) all three at once held out no better on ../shared/data (box Dice 0.540 against
    0.541), at three times the cost."""
    tried = [(f,) for f in FACTORS]
    return [("off", (), 0.0)] + [(signal, factors, margin) for signal in ("fit", "score")
                                 for factors in tried for margin in MARGINS]


def pick(row: dict[float, tuple[float, float, float]], setting) -> float:
    signal, factors, margin = setting
    index = 2 if signal == "fit" else 1
    best = 1.0
    for factor in factors:
        if row[factor][index] > row[best][index] + margin:
            best = factor
    return row[best][0]


def group_mean(rows, setting, groups) -> float:
    """Mean over box kinds and ``groups`` of each group's mean Dice."""
    kinds = sorted({k for _, k, _ in rows})
    return float(np.mean([np.mean([pick(r, setting) for g, k, r in rows if g == group and k == kind])
                          for kind in kinds for group in groups]))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", required=True)
    parser.add_argument("--jitter", type=float, nargs="+", default=[0.0],
                        help="box kinds: 0 the ground-truth box, above 0 its sides moved by up to this fraction")
    parser.add_argument("--limit", type=int, default=None)
    args = parser.parse_args(argv)
    tasks, _ = load_cases(read_manifest(args.manifest), limit=args.limit)
    tool = LiteMedSAM(zoom="off")
    rng = np.random.default_rng(0)
    rows = []  # (group, jitter, factor -> (Dice, score, fit))
    for task in tasks:
        for jitter in args.jitter:
            box = jittered_box(task.ground_truth, jitter, rng) if jitter else gt_box(task.ground_truth)
            rows.append((task.case.group, jitter, measure(task, tool, box)))
    candidates = settings()
    groups = sorted({g for g, _, _ in rows})
    print(f"{len(tasks)} rows, {len(groups)} groups, box jitter {args.jitter}")
    ranked = sorted(candidates, key=lambda s: -group_mean(rows, s, groups))
    for setting in ranked[:5] + [candidates[0]]:
        print(f"  in-sample mean of group means {group_mean(rows, setting, groups):.4f}  {setting}")
    totals: dict[float, list[float]] = {j: [0.0, 0.0] for j in args.jitter}
    for group in groups:
        chosen = max(candidates, key=lambda s: group_mean(rows, s, [g for g in groups if g != group]))
        figures = []
        for jitter in args.jitter:
            held = [r for g, k, r in rows if g == group and k == jitter]
            off, score = np.mean([pick(r, candidates[0]) for r in held]), np.mean([pick(r, chosen) for r in held])
            totals[jitter][0] += off * len(held)
            totals[jitter][1] += score * len(held)
            figures.append(f"jitter {jitter:g}: off {off:.3f} held out {score:.3f}")
        print(f"{group:32s} {len(held):3d}  {'; '.join(figures)}  {chosen}")
    for jitter, (off, held) in totals.items():
        print(f"overall box Dice, jitter {jitter:g}: off {off / len(tasks):.4f}, held out {held / len(tasks):.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

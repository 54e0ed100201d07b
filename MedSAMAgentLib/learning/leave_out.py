"""Leave-datasets-out evaluation of the click decoder under ``evaluate --protocol clicks``'s harness.

Each fold's weights (``click_decoder folds``) score only the groups that fold held out; the geodesic refinement
(the tool as before) scores every group in the same run, on the same cases and cached embeddings.

    python -m MedSAMAgentLib.learning.leave_out --folds runs/click_decoder/folds --out runs/click_decoder/eval
    python -m MedSAMAgentLib.learning.leave_out --weights FILE --out DIR   # one weights file on every group
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional, Sequence

from ..evaluation import load_cases, run_clicks, summarize, write_report
from ..manifest import SHARED_DATA, read_manifest
from .embeddings import DEFAULT_FOLDER


def make_tool(clicks: str, weights: Optional[str] = None, embeddings: str | Path = DEFAULT_FOLDER):
    """The built-in tool as ``evaluate`` builds it (guarded), reading embeddings from the cache."""
    from ..tools.guard import GuardedTool
    from ..tools.litemedsam import LiteMedSAM
    from ..volumes import disk_embeddings

    tool = LiteMedSAM(clicks=clicks, click_decoder=weights)
    disk_embeddings(tool, embeddings)
    return GuardedTool(tool)


def run(tasks, tool, name: str, out: Path, progress: bool = True) -> dict:
    from tqdm import tqdm

    results = []
    for task in tqdm(tasks, desc=name, unit="case", file=sys.stderr, disable=not progress):
        results.append(run_clicks(task, tool))
    summary = summarize(results, "clicks", name)
    write_report(out / name, summary, results)
    return summary


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", default=str(SHARED_DATA / "manifest.jsonl"))
    parser.add_argument("--embeddings", default=str(DEFAULT_FOLDER))
    parser.add_argument("--out", required=True)
    parser.add_argument("--folds", help="folder of `click_decoder folds` (folds.json, fold<i>/click_decoder.pt)")
    parser.add_argument("--weights", help="one weights file scored on every group (e.g. the shipped one)")
    parser.add_argument("--geodesic", action="store_true", help="also score the geodesic refinement")
    parser.add_argument("--only-groups", nargs="*", default=None)
    parser.add_argument("--per-group", type=int, default=None,
                        help="score only the first N cases of each group (a CPU-budget subset; stated in the report)")
    parser.add_argument("--compare", metavar="DIR",
                        help="a geodesic run's folder (its cases.csv): its table on exactly the cases scored here")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    out = Path(args.out)
    tasks, _ = load_cases(read_manifest(args.manifest))
    if args.only_groups:
        tasks = [t for t in tasks if t.case.group in args.only_groups]
    if args.per_group:
        counts: dict[str, int] = {}
        kept = []
        for task in tasks:
            counts[task.case.group] = counts.get(task.case.group, 0) + 1
            if counts[task.case.group] <= args.per_group:
                kept.append(task)
        tasks = kept
    summaries = {}
    if args.geodesic:
        summaries["geodesic"] = run(tasks, make_tool("geodesic", embeddings=args.embeddings), "geodesic", out)
    if args.weights:
        summaries["decoder"] = run(tasks, make_tool("decoder", args.weights, args.embeddings), "decoder", out)
    if args.folds:
        folds = json.loads((Path(args.folds) / "folds.json").read_text())
        results = []
        for index, held in enumerate(folds):
            tool = make_tool("decoder", str(Path(args.folds) / f"fold{index}" / "click_decoder.pt"), args.embeddings)
            from tqdm import tqdm

            for task in tqdm([t for t in tasks if t.case.group in held], desc=f"fold{index}", file=sys.stderr):
                results.append(run_clicks(task, tool))
        summaries["decoder-leave-out"] = summarize(results, "clicks", "decoder-leave-out")
        write_report(out / "decoder-leave-out", summaries["decoder-leave-out"], results)
    if args.compare:
        summaries["geodesic (same cases)"] = summary_from_cases(Path(args.compare) / "cases.csv",
                                                                 {t.case.id for t in tasks})
    for name, summary in summaries.items():
        print(f"\n{name}")
        print(table(summary))
    (out / "tables.md").write_text("\n\n".join(f"### {n}\n{table(s)}" for n, s in summaries.items()) + "\n")
    return 0


def summary_from_cases(path: Path, ids: set) -> dict:
    """Group means (Dice per interaction, NoC@85/90) of a run's cases.csv, restricted to ``ids``."""
    import csv

    import numpy as np

    rows = [r for r in csv.DictReader(path.open()) if r["id"] in ids]

    def block(members):
        steps = sorted(int(k[5:]) for k in members[0] if k.startswith("dice_"))
        return {"n": len(members),
                "dice_at": [float(np.mean([float(r[f"dice_{i}"]) for r in members])) for i in steps],
                "noc85": float(np.mean([float(r["noc85"]) for r in members])),
                "noc90": float(np.mean([float(r["noc90"]) for r in members])),
                "median_ms_per_prompt": float(np.median([float(r["median_prompt_ms"]) for r in members]))}

    groups: dict[str, list] = {}
    for r in rows:
        groups.setdefault(r["group"], []).append(r)
    return {"groups": {g: block(m) for g, m in sorted(groups.items())}, "overall": block(rows)}


def table(summary: dict) -> str:
    """The issue's per-group table: box, +1, +3, +5, +19, NoC@85, NoC@90, worst step."""
    lines = ["| group | n | box | +1 | +3 | +5 | +19 | NoC@85 | NoC@90 | worst step |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, b in list(summary["groups"].items()) + [("**overall**", summary["overall"])]:
        d = b["dice_at"]
        worst = min(d[i + 1] - d[i] for i in range(len(d) - 1))
        lines.append(f"| {name} | {b['n']} | " + " | ".join(f"{d[min(i, len(d) - 1)]:.3f}" for i in (0, 1, 3, 5, 19))
                     + f" | {b['noc85']:.2f} | {b['noc90']:.2f} | {worst:+.3f} |")
    lines.append(f"median ms per prompt: {summary['overall']['median_ms_per_prompt']:.1f}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())

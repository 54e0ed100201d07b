"""Click-protocol benchmark of the built-in tool on ../shared/data: LiteMedSAM's click refinement against the
naive strategies, per group (box, then oracle clicks, 20 interactions).

    .venv/bin/python Testing/benchmarks/bench_clicks.py [--manifest FILE] [--out DIR] [--limit N] [--only-refined]

Strategies:
- ``refined``: the tool as shipped (``refinement.py``: the box's logits corrected by each click);
- ``decoder-chain``: the protocol's rule for click-trained tools (newest click + previous logits) on
  LiteMedSAM's decoder;
- ``decoder-all``: the box and all clicks since it, no mask input.
Each case's embedding is computed once and shared by the strategies. Writes DIR/<strategy>/summary.json etc.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from MedSAMAgentLib.actions import Action, Box, Point  # noqa: E402
from MedSAMAgentLib.evaluation import load_cases, run_clicks, summarize, write_report  # noqa: E402
from MedSAMAgentLib.manifest import SHARED_DATA, read_manifest  # noqa: E402
from MedSAMAgentLib.tools.base import Prediction, protocol_prompts  # noqa: E402


class _DecoderStrategy:
    """LiteMedSAM's decoder fed clicks directly (what the refinement replaces), for comparison."""

    def __init__(self, tool, name: str, chain: bool):
        self.tool, self.name, self.chain = tool, name, chain
        self.version = tool.version
        self.trained_with_clicks = False

    def set_image(self, image, key=None):
        self.tool.set_image(image, key)

    def predict(self, actions: Sequence[Action], previous: Optional[Prediction]) -> Prediction:
        if self.chain:
            p = protocol_prompts(actions, previous)
            logits, scores = self.tool.decode(box=p.box, points=p.points, labels=p.labels, mask_input=p.mask_input)
        else:
            prompts = [a for a in actions if isinstance(a, (Box, Point))]
            last = max(i for i, a in enumerate(prompts) if isinstance(a, Box))
            clicks = [a for a in prompts[last + 1 :] if isinstance(a, Point)]
            points = np.array([[c.x, c.y] for c in clicks], np.float32) if clicks else None
            labels = np.array([int(c.positive) for c in clicks]) if clicks else None
            logits, scores = self.tool.decode(box=prompts[last].as_list(), points=points, labels=labels)
        full = self.tool.upsample(logits[0])
        return Prediction(full > 0, logits[:1].astype(np.float32), float(np.clip(scores[0], 0, 1)))


def _table(summaries: dict) -> str:
    names = list(summaries)
    groups = list(next(iter(summaries.values()))["groups"]) + ["overall"]
    lines = [f"{'group':22s} {'n':>3s} {'strategy':14s} {'d[0]':>6s} {'d[1]':>6s} {'d[3]':>6s} {'d[5]':>6s} "
             f"{'d[19]':>6s} {'NoC85':>6s} {'NoC90':>6s} {'worst step':>10s}"]
    for group in groups:
        for name in names:
            s = summaries[name]
            b = s["overall"] if group == "overall" else s["groups"][group]
            d = b["dice_at"]
            worst = min(d[i + 1] - d[i] for i in range(len(d) - 1))
            lines.append(f"{group.split('/')[-1][:22]:22s} {b['n']:3d} {name:14s} {d[0]:6.3f} {d[1]:6.3f} "
                         f"{d[3]:6.3f} {d[5]:6.3f} {d[-1]:6.3f} {b['noc85']:6.2f} {b['noc90']:6.2f} {worst:+10.3f}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", default=str(SHARED_DATA / "manifest.jsonl"))
    parser.add_argument("--out", default="bench_clicks_out")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--only-refined", action="store_true", help="skip the naive strategies")
    args = parser.parse_args()
    if not Path(args.manifest).exists():
        print(f"no manifest at {args.manifest}: skipping", file=sys.stderr)
        return 0
    from tqdm import tqdm

    from MedSAMAgentLib.tools.litemedsam import LiteMedSAM

    tool = LiteMedSAM()
    strategies = {"refined": tool}
    if not args.only_refined:
        strategies["decoder-chain"] = _DecoderStrategy(tool, "decoder-chain", chain=True)
        strategies["decoder-all"] = _DecoderStrategy(tool, "decoder-all", chain=False)
    tasks, skipped = load_cases(read_manifest(args.manifest), args.limit)
    results: dict[str, list] = {name: [] for name in strategies}
    start = time.perf_counter()
    for task in tqdm(tasks, desc="cases", unit="case", file=sys.stderr):
        for name, strategy in strategies.items():
            results[name].append(run_clicks(task, strategy))
    elapsed = time.perf_counter() - start
    summaries = {}
    for name, strategy in strategies.items():
        summaries[name] = summarize(results[name], "clicks", name, None, skipped)
        write_report(Path(args.out) / name, summaries[name], results[name], tasks)
    print(_table(summaries))
    o = summaries["refined"]["overall"]
    print(f"\nrefined: median ms per prompt {o['median_ms_per_prompt']:.1f}, per image (embedding) "
          f"{o['median_ms_per_image']:.1f}; {len(tasks)} cases, {len(skipped)} skipped; {elapsed:.0f} s in all")
    big = [ms for r in results["refined"] for ms in r.prompt_ms[1:] if max(r.shape) > 256]
    if big:
        print(f"refined: median ms per click on images larger than 256 px: {np.median(big):.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

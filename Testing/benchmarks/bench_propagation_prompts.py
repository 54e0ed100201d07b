"""How good is each slice's prompt, apart from where propagation stops? Built-in tool, the labelled 3D rows
of ../shared/data.

    .venv/bin/python Testing/benchmarks/bench_propagation_prompts.py [--variants box,tighten1,tighten3,redraw1,mask]
        [--embeddings runs/emb-cache] [--only ID-PART]

Per case: the ground-truth box on the largest slice makes the key mask; each prompt variant is carried slice by
slice in both directions, cut at the structure's true ends (so the figure is the chain's drift only, no stop
rule), and scored by 3D Dice against the truth. Variants:
- ``box``: the neighbour mask's box + ``margin`` px (``propagation_rules.neighbour_box``);
- ``tightenN``: then up to N times the box of the tool's mask + margin, inside the last box (``tightened_box``);
- ``redrawN``: then up to N times the box of the tool's mask + margin, free to grow;
- ``mask``: the box with the neighbour's low-resolution logits as the decoder's mask input.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from MedSAMAgentLib.tools.runtime import quiet_threads  # noqa: E402

quiet_threads()

import numpy as np  # noqa: E402

from MedSAMAgentLib.manifest import SHARED_DATA  # noqa: E402
from MedSAMAgentLib.metrics import dice  # noqa: E402
from MedSAMAgentLib.policies.oracle import gt_box  # noqa: E402
from MedSAMAgentLib.propagation_rules import neighbour_box, tightened_box  # noqa: E402
from MedSAMAgentLib.tools.litemedsam import MASK_THRESHOLD, LiteMedSAM  # noqa: E402
from MedSAMAgentLib.volume_evaluation import volume_cases  # noqa: E402
from MedSAMAgentLib.volumes import disk_embeddings, load_volume_case  # noqa: E402

MARGIN = 3


def slice_prompt(tool, neighbour: np.ndarray, neighbour_logits: np.ndarray, variant: str):
    """(mask, low-res logits) of the variant on the tool's current slice; (empty, None) past an empty one."""
    box = neighbour_box(neighbour, MARGIN)
    if box is None:
        return np.zeros_like(neighbour), None
    if variant == "mask":
        low, _ = tool.decode(box=box.as_list(), mask_input=neighbour_logits)
        return tool.upsample(low[0]) - MASK_THRESHOLD > 0, low[:1]
    prediction = tool.predict([box], None)
    rounds = int(variant[len(variant.rstrip("0123456789")):] or 0)
    for _ in range(rounds):
        if variant.startswith("tighten"):
            new = tightened_box(prediction.mask, box, MARGIN)
        else:
            new = neighbour_box(prediction.mask, MARGIN)
            new = None if new is None or new.as_list() == box.as_list() else new
        if new is None:
            break
        box, prediction = new, tool.predict([new], None)
    return prediction.mask, prediction.logits


def chain_dice(tool, volume, gt: np.ndarray, variant: str) -> float:
    present = np.nonzero(gt.any(axis=(1, 2)))[0]
    key = int(np.argmax(gt.sum(axis=(1, 2))))
    tool.set_image(volume.slice_image(key), key=volume.key(key))
    start = tool.predict([gt_box(gt[key])], None)
    out = np.zeros_like(gt)
    out[key] = start.mask
    for direction in (+1, -1):
        mask, logits, k = start.mask, start.logits, key + direction
        while present.min() <= k <= present.max() and logits is not None:
            tool.set_image(volume.slice_image(k), key=volume.key(k))
            mask, logits = slice_prompt(tool, mask, logits, variant)
            out[k], k = mask, k + direction
    return float(dice(out, gt))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", default="box,tighten1,tighten3,redraw1,redraw3,mask")
    parser.add_argument("--embeddings", default=str(ROOT / "runs" / "emb-cache"))
    parser.add_argument("--only", default="")
    args = parser.parse_args()
    variants = args.variants.split(",")
    tool = LiteMedSAM(device="cpu")
    disk_embeddings(tool, args.embeddings)
    cases, _ = volume_cases(SHARED_DATA / "manifest.jsonl")
    scores: dict[str, list[float]] = {v: [] for v in variants}
    groups: dict[str, dict[str, list[float]]] = {}
    for case in (c for c in cases if args.only in c.id):
        volume, gt = load_volume_case(case)
        for v in variants:
            scores[v].append(chain_dice(tool, volume, gt, v))
            groups.setdefault(case.group, {}).setdefault(v, []).append(scores[v][-1])
        print(f"{case.id:45s} " + " ".join(f"{v}={scores[v][-1]:.3f}" for v in variants), flush=True)
    for group, by in sorted(groups.items()):
        print(f"{group:45s} " + " ".join(f"{v}={np.mean(by[v]):.3f}" for v in variants))
    print(f"{'mean over cases':45s} " + " ".join(f"{v}={np.mean(scores[v]):.4f}" for v in variants))
    return 0


if __name__ == "__main__":
    sys.exit(main())

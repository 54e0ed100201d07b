"""Time per propagated slice against one slice's embedding + prompt, same process, bundled CT volume.

    .venv/bin/python Testing/benchmarks/bench_propagation.py [--case ID] [--prefetch N]

Baseline: for each slice the propagation visits, ``set_image`` (a fresh embedding) + one box ``predict``.
Propagation: ``VolumeSession.propagate`` from the key slice with an empty embedding cache; each slice's
``SliceRecord.seconds`` (waiting for its embedding, the prompts, the stop rule). Target (issue 11): median
ratio <= 1.5. With prefetch the next slice is encoded in a worker thread while the current one is decoded.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from MedSAMAgentLib.manifest import bundled_manifest  # noqa: E402
from MedSAMAgentLib.policies.oracle import gt_box  # noqa: E402
from MedSAMAgentLib.propagation import VolumeSession  # noqa: E402
from MedSAMAgentLib.tools.litemedsam import LiteMedSAM  # noqa: E402
from MedSAMAgentLib.volumes import load_volume_case  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", default="volumes/totalseg_ct_gallbladder")
    parser.add_argument("--prefetch", type=int, default=1)
    args = parser.parse_args()
    case = next(c for c in bundled_manifest() if c.id == args.case)
    volume, gt = load_volume_case(case)
    tool = LiteMedSAM(device="cpu")
    key = int(np.argmax(gt.sum(axis=(1, 2))))

    tool._cache.clear()
    session = VolumeSession(tool, volume, ground_truth=gt, prefetch=args.prefetch)
    session.start(key, gt_box(gt[key]))
    session.propagate()
    session.close()
    propagated = {k: r.seconds for k, r in session.records.items() if r.origin == "propagated"}

    baseline = []
    tool._cache.clear()
    tool._boxes.clear()
    for k in sorted(propagated):
        box = gt_box(volume.take(gt, k)) if volume.take(gt, k).any() else gt_box(gt[key])
        began = time.perf_counter()
        tool.set_image(volume.slice_image(k), key=volume.key(k))
        tool.predict([box], None)
        baseline.append(time.perf_counter() - began)
    per_slice, one = float(np.median(list(propagated.values()))), float(np.median(baseline))
    print(f"{case.id}: {len(propagated)} propagated slices, prefetch {args.prefetch}")
    print(f"median s per propagated slice {per_slice:.3f}; one slice's embedding + prompt {one:.3f}; "
          f"ratio {per_slice / one:.2f} (target <= 1.5)")
    print(f"embeddings computed {tool.encode_count} for {len(propagated) + 1} slices in the volume session and "
          f"{len(baseline)} in the baseline")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``medsam-agent demo --volume``: the 3D workflow on a bundled CT volume (``propagation.VolumeSession``): the
ground-truth box on the key slice, propagation both ways until the structure ends, then up to three
corrections by the simulated clinician (``reviewers.volume_correction``), each re-propagating onward."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from ..manifest import bundled_manifest
from ..metrics import dice
from ..outputs import OutputLock
from ..policies.oracle import gt_box
from ..propagation import describe_operation
from ..propagation_sam2 import volume_session_for
from ..reviewers import volume_correction
from ..trajectory import TrajectoryWriter
from ..volumes import load_volume_case, write_mask
from . import tool_from_args

VOLUME_DEMO_CASE = "volumes/totalseg_ct_gallbladder"
DEMO_CORRECTIONS = 3


def run_volume_demo(args: argparse.Namespace) -> int:
    case_id = args.case if args.case.startswith("volumes/") else VOLUME_DEMO_CASE
    cases = {c.id: c for c in bundled_manifest() if c.dims == 3}
    if case_id not in cases:
        raise ValueError(f"no bundled volume {case_id!r}; choose one of: {', '.join(sorted(cases))}")
    case = cases[case_id]
    volume, gt = load_volume_case(case)
    out = Path(args.out)
    with OutputLock(out, "demo"):
        started = time.perf_counter()
        print(f"case   {case.id}  ({case.target}; {case.licence})")
        print(f"volume {volume.array.shape} (k, j, i); the structure is on slices "
              f"{int(np.nonzero(gt.any(axis=(1, 2)))[0].min())}-{int(np.nonzero(gt.any(axis=(1, 2)))[0].max())}")
        print("loading the tool ...", flush=True)
        tool = tool_from_args(args)
        key = int(np.argmax(gt.sum(axis=(1, 2))))
        log_path = out / "trajectory.jsonl"
        log_path.unlink(missing_ok=True)
        with TrajectoryWriter(log_path) as log:
            session = volume_session_for(tool, volume, target=case.target, ground_truth=gt, log=log,
                                         meta={"volume_case_id": case.id, "source": "demo --volume"})
            session.start(key, gt_box(gt[key]))
            print(f"key slice {key}: the clinician's box; 3D Dice so far {dice(session.mask(), gt):.3f}")
            for operation in session.propagate():
                print(describe_operation(operation))
            print(f"after propagation: 3D Dice {dice(session.mask(), gt):.3f}")
            for n in range(1, DEMO_CORRECTIONS + 1):
                boxed = frozenset(k for k, r in session.records.items() if r.origin in ("key", "corrected"))
                correction = volume_correction(session.mask(), gt, boxed=boxed)
                if correction is None:
                    break
                index, action = correction
                operations = session.clear(index) if action == "clear" else session.correct(index, action)
                what = "no structure here" if action == "clear" else action.kind
                print(f"correction {n} on slice {index} ({what}): " + "; ".join(
                    describe_operation(op) for op in operations[1:]) + f" -> 3D Dice {dice(session.mask(), gt):.3f}")
            session.finish(accepted=True)
        write_mask(session.mask(), volume.geometry, out / "mask.nii.gz")
        print(f"wrote {out}/mask.nii.gz (the volume's geometry) and {log_path} (one 2D episode per slice) in "
              f"{time.perf_counter() - started:.1f} s")
    return 0

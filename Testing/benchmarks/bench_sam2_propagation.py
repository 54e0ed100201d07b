"""Time per propagated slice of SAM2 memory propagation (``propagation_sam2``) against one slice's 2D
embedding + prompt, with a full-size SAM2.1 network of random weights (speed does not depend on the weights;
no released weights are needed or downloaded). The issue's target: median time per propagated slice
<= 1.5 x (embedding + prompt).

    python Testing/benchmarks/bench_sam2_propagation.py --config configs/sam2.1/sam2.1_hiera_t.yaml \
        --image-size 512 --slices 8
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/sam2.1/sam2.1_hiera_t.yaml")
    parser.add_argument("--image-size", type=int, default=512)
    parser.add_argument("--slices", type=int, default=8, help="slices propagated (one direction)")
    parser.add_argument("--case", default="volumes/totalseg_ct_gallbladder")
    args = parser.parse_args()

    import numpy as np
    import torch
    from hydra import compose
    from hydra.utils import instantiate

    import sam2  # noqa: F401
    from MedSAMAgentLib import registry
    from MedSAMAgentLib.manifest import bundled_manifest
    from MedSAMAgentLib.policies.oracle import gt_box
    from MedSAMAgentLib.propagation_sam2 import volume_session_for
    from MedSAMAgentLib.volumes import load_volume_case

    torch.manual_seed(0)
    net = instantiate(compose(config_name=args.config).model, _recursive_=True)
    net.sam_mask_decoder.pred_obj_score_head.layers[-1].bias.data.fill_(5.0)  # "present": propagation runs on
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "random_sam2.pt"
        torch.save({"model": net.state_dict()}, path)
        tool = registry.make_tool("sam2", checkpoint=str(path), device="cpu", config=args.config,
                                  image_size=str(args.image_size))
    case = next(c for c in bundled_manifest() if c.id == args.case)
    volume, gt = load_volume_case(case)
    key = int(np.argmax(gt.sum(axis=(1, 2))))
    box = gt_box(gt[key])
    two_d = []
    for k in range(key - 3, key):  # 2D: embedding + one box prompt, three slices
        image = volume.slice_image(k)
        began = time.perf_counter()
        tool.set_image(image, key=f"bench-{k}-{time.time()}")
        tool.predict([box], None)
        two_d.append(time.perf_counter() - began)
    session = volume_session_for(tool, volume, target=case.target)
    session.start(key, box)
    (operation,) = session.propagate(+1, until=min(key + args.slices, volume.slices - 1))
    per_slice = [session.records[k].seconds for k in operation.run.slices]
    base = statistics.median(two_d)
    median = statistics.median(per_slice)
    print(f"{args.config} @ {args.image_size}, {len(per_slice)} slices on {os.cpu_count()} CPUs")
    print(f"2D embedding + box prompt: median {base:.3f} s ({', '.join(f'{t:.2f}' for t in two_d)})")
    print(f"propagated slice: median {median:.3f} s ({', '.join(f'{t:.2f}' for t in per_slice)})")
    print(f"ratio {median / base:.2f} (target <= 1.5)")
    session.close()


if __name__ == "__main__":
    main()

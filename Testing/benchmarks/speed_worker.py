"""One timing run of LiteMedSAM for bench_speed.py, in its own process, on the MedSAMAgentLib found on
PYTHONPATH (this tree or the baseline's worktree). Uses only APIs both trees have; sets up threads the way
that tree's command line does (``quiet_threads`` where it exists), before torch is imported.

    python speed_worker.py CASES_DIR OUT.json
CASES_DIR holds NNN_image.npy / NNN_truth.npy pairs (written by bench_speed.py).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

try:
    from MedSAMAgentLib.tools.runtime import quiet_threads  # what `medsam-agent` does first (issue 17)

    quiet_threads()
except ImportError:  # the baseline tree: no thread setup
    pass

import numpy as np  # noqa: E402

CLICKS = 5
DECODES = 3


def main(cases_dir: str, out: str) -> None:
    from MedSAMAgentLib.policies.oracle import corrective_click, gt_box
    from MedSAMAgentLib.tools.litemedsam import LiteMedSAM

    start = time.perf_counter()
    tool = LiteMedSAM(device="cpu")
    records = {"load_s": time.perf_counter() - start, "cases": []}
    for image_path in sorted(Path(cases_dir).glob("*_image.npy")):
        image = np.load(image_path)
        truth = np.load(str(image_path).replace("_image.npy", "_truth.npy"))
        start = time.perf_counter()
        tool.set_image(image)
        encode_s = time.perf_counter() - start
        box = gt_box(truth)
        decode_s = []
        for _ in range(DECODES):
            start = time.perf_counter()
            tool.decode(box=box.as_list())
            decode_s.append(time.perf_counter() - start)
        actions = [box]
        prediction = tool.predict(actions, None)
        click_cpu, click_wall = [], []
        for _ in range(CLICKS):
            click = corrective_click(prediction.mask, truth)
            if click is None:
                break
            actions.append(click)
            cpu, wall = time.process_time(), time.perf_counter()
            prediction = tool.predict(actions, prediction)
            click_cpu.append(time.process_time() - cpu)
            click_wall.append(time.perf_counter() - wall)
        records["cases"].append({"name": image_path.name[: -len("_image.npy")], "side": int(max(image.shape[:2])),
                                 "encode_s": encode_s, "decode_s": float(np.median(decode_s)),
                                 "click_cpu_s": click_cpu, "click_wall_s": click_wall})
    Path(out).write_text(json.dumps(records))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])

"""The Slicer panel's inference thread: the embedding of one slice (LiteMedSAM ``set_image``) run on the
panel's persistent worker while the GUI thread waits its way (``Event.wait(0.03)`` + processing events),
against the same call made directly. Target: direct / worker >= 0.9.

    .venv/bin/python Testing/benchmarks/bench_slicer_worker.py [--repeats 5]

For contrast, the pattern the panel used before: a worker polled by a GUI thread that keeps the GIL
(a Python loop that never sleeps, as Slicer's Qt loop holds it between callbacks).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from MedSAMAgentLib.manifest import bundled_manifest, load_case  # noqa: E402
from MedSAMAgentLib.slicer.worker import Worker  # noqa: E402
from MedSAMAgentLib.tools.litemedsam import LiteMedSAM  # noqa: E402


def gui_events() -> None:
    """What an idle GUI does per event round: a little Python work."""
    sum(range(200))


def gil_holding(function) -> None:
    """Baseline pattern: a per-call thread polled by a loop that holds the GIL."""
    done = threading.Event()
    thread = threading.Thread(target=lambda: (function(), done.set()), daemon=True)
    thread.start()
    while not done.is_set():
        gui_events()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    case = load_case(next(c for c in bundled_manifest() if c.id == "volumes/totalseg_ct_liver"))
    tool = LiteMedSAM(device="cpu")
    worker = Worker()

    calls = iter(range(10**6))

    def embed():  # a fresh key each time: the tool caches embeddings by key
        tool.set_image(case.image, key=f"bench-{next(calls)}")

    embed()  # warm up (weights, allocations)
    worker.run(embed, gui_events)
    timings: dict[str, list[float]] = {"direct": [], "worker": [], "gil-holding poll": []}
    for _ in range(args.repeats):  # interleaved, so load changes hit all three alike
        for name, run in (("direct", embed), ("worker", lambda: worker.run(embed, gui_events)),
                          ("gil-holding poll", lambda: gil_holding(embed))):
            start = time.perf_counter()
            run()
            timings[name].append(time.perf_counter() - start)
    direct = statistics.median(timings["direct"])
    print(f"one slice embedding, {case.image.shape[1]}x{case.image.shape[0]}, median of {args.repeats}")
    print(f"{'way':<20}{'median s':>10}{'ratio direct/way':>18}")
    for name, values in timings.items():
        median = statistics.median(values)
        print(f"{name:<20}{median:>10.3f}{direct / median:>18.2f}")
    ratio = direct / statistics.median(timings["worker"])
    print(f"worker ratio {ratio:.2f}; target >= 0.9: {'met' if ratio >= 0.9 else 'NOT met'}")
    worker.stop()
    return 0 if ratio >= 0.9 else 1


if __name__ == "__main__":
    sys.exit(main())

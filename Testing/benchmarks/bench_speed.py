"""Interactive speed of the built-in tool (issue 17), on real images from ../shared/data, as ratios measured
side by side (the machine may be shared: absolute times move, ratios in one run hold).

    .venv/bin/python Testing/benchmarks/bench_speed.py [--baseline DIR] [--cases 12] [--repeats 2] [--demo-runs 3] [--large 6]
        [--demo-only] [--bf16]

1. In this process: LiteMedSAM's embedding and decoder call on OpenVINO against eager torch (interleaved, per
   image), and the click protocol (box + 19 oracle clicks) with each runtime: every Dice must agree within
   0.002. The OpenVINO tool is made after both exports are cached, so it is the torch-free path's (OpenVINO +
   numpy; torch is only in this process for the eager reference).
2. With ``--baseline DIR`` (a worktree of the previous commit: ``git worktree add /tmp/base17 HEAD``):
   ``speed_worker.py`` runs alternately on this tree and on DIR, each in its own process as the command line
   would run it: decoder call and per-click time (CPU and wall), median ratio baseline / this tree, and the
   CPU per click on 1024-pixel images (real 512-pixel ones resized); then ``medsam-agent demo`` end to end
   (one process each, wall), alternately, after one warm-up run of each tree (this tree's export is cached),
   and which heavy modules this tree's demo imported (``-X importtime``). ``--demo-only``: just the demo.
3. ``--roofline``: the encoder's floating-point work (torch's FLOP counter) against this CPU's fp32 matrix
   multiply speed (torch's SGEMM, the same threads): the highest embedding ratio over eager any fp32 runtime
   could reach here, next to what eager and OpenVINO reach.
4. ``--bf16`` (a CPU with bf16 instructions): the opt-in ``precision=bf16`` encoder's embedding time against
   eager and f32 (same images, in this process), then the click protocol with the f32 and the bf16 tool on
   every 2D-evaluable row of the shared manifest: overall and per-group Dice@5 change and NoC@90, against the
   issue's bar (overall Dice@5 drop <= 0.005, no group's drop >= 0.01).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from MedSAMAgentLib.tools.runtime import quiet_threads  # noqa: E402

quiet_threads()  # as the command line does, before torch is imported

import numpy as np  # noqa: E402

from MedSAMAgentLib.evaluation import load_cases, run_clicks  # noqa: E402
from MedSAMAgentLib.manifest import SHARED_DATA, read_manifest  # noqa: E402

COLLECTIONS = ("medscribble", "sam-med2d", "volumes")  # the shared set's original 2D rows
DICE_TOLERANCE = 0.002
BF16_OVERALL_DROP, BF16_GROUP_DROP = 0.005, 0.01  # issue 17's bar for a reduced-precision path
WORKER = Path(__file__).with_name("speed_worker.py")


def pick_cases(count: int):
    """``count`` cases spread over the groups (every k-th row), plus every 512-pixel one for the 1024 check."""
    rows = [c for c in read_manifest(SHARED_DATA / "manifest.jsonl") if c.id.split("/", 1)[0] in COLLECTIONS]
    tasks, _ = load_cases(rows)
    step = max(1, len(tasks) // count)
    chosen = tasks[::step][:count]
    big = [t for t in tasks if max(t.image.shape[:2]) >= 512]
    return chosen, big


def at_1024(task):
    """A real case resized to 1024 pixels on its longer side (bilinear image, nearest mask)."""
    from PIL import Image

    from MedSAMAgentLib.manifest import LoadedCase

    h, w = task.image.shape[:2]
    size = (w * 1024 // max(h, w), h * 1024 // max(h, w))
    image = np.asarray(Image.fromarray(task.image).resize(size, Image.BILINEAR))
    truth = np.asarray(Image.fromarray(task.ground_truth.astype(np.uint8)).resize(size, Image.NEAREST)) > 0
    return LoadedCase(task.case, image, truth)


def large_cases(count: int):
    """Up to ``count`` 2D cases of the whole shared manifest with sides >= 512, resized to 1024 (above the
    refinement's grid cap)."""
    rows = [c for c in read_manifest(SHARED_DATA / "manifest.jsonl") if c.dims == 2]
    tasks, _ = load_cases(rows)
    return [at_1024(t) for t in tasks if max(t.image.shape[:2]) >= 512][:count]


def embedding_and_dice(tasks) -> None:
    from MedSAMAgentLib.tools.litemedsam import LiteMedSAM

    from MedSAMAgentLib.policies.oracle import gt_box

    eager = LiteMedSAM(device="cpu", runtime="torch")
    start = time.perf_counter()
    first = LiteMedSAM(device="cpu", runtime="openvino")
    first.set_image(tasks[0].image, key="warm-up")  # the exports (first use) or the cached models' compile
    first.decode(box=[10, 10, 100, 100])
    print(f"OpenVINO encoder and decoder ready in {time.perf_counter() - start:.1f} s (backend: {first.backend})")
    start = time.perf_counter()
    fast = LiteMedSAM(device="cpu", runtime="openvino")  # both now cached: the torch-free path
    print(f"tool from the cache in {time.perf_counter() - start:.2f} s; torch network built: "
          f"{fast._net is not None}, decoder: {type(fast._decoder).__name__}")
    eager.set_image(tasks[0].image, key="warm-up")
    ratios, decode_ratios, rows = [], [], []
    for i, task in enumerate(tasks):
        times = {}
        for name, tool in (("eager", eager), ("openvino", fast)):
            start = time.perf_counter()
            tool.set_image(task.image, key=f"timing-{i}")
            times[name] = time.perf_counter() - start
        ratios.append(times["eager"] / times["openvino"])
        box = gt_box(task.ground_truth).as_list()
        decode_times = {"eager": [], "openvino": []}
        for _ in range(3):
            for name, tool in (("eager", eager), ("openvino", fast)):
                start = time.perf_counter()
                tool.decode(box=box)
                decode_times[name].append(time.perf_counter() - start)
        decode_ratios.append(np.median(decode_times["eager"]) / np.median(decode_times["openvino"]))
        a, b = run_clicks(task, eager), run_clicks(task, fast)
        worst = float(np.max(np.abs(np.array(a.dice) - np.array(b.dice))))
        rows.append((task.case.id, times["eager"], times["openvino"], ratios[-1], a.dice[5], b.dice[5], worst))
    print(f"\n{'case':44s} {'eager s':>8s} {'OV s':>7s} {'ratio':>6s} {'Dice@5 eager':>12s} {'Dice@5 OV':>9s} "
          f"{'max |dDice|':>11s}")
    for case, te, to, ratio, de, do, worst in rows:
        print(f"{case[:44]:44s} {te:8.2f} {to:7.2f} {ratio:6.2f} {de:12.4f} {do:9.4f} {worst:11.5f}")
    worst = max(r[-1] for r in rows)
    print(f"decoder call: median ratio eager / OpenVINO {np.median(decode_ratios):.2f} "
          f"({np.min(decode_ratios):.2f}-{np.max(decode_ratios):.2f}) over {len(rows)} images")
    print(f"embedding: median ratio eager / OpenVINO {np.median(ratios):.2f} over {len(rows)} images; "
          f"max |Dice difference| over all 20 steps of all cases {worst:.5f} "
          f"({'within' if worst <= DICE_TOLERANCE else 'OUTSIDE'} {DICE_TOLERANCE})")


def embedding_seconds(tools: dict, images, tag: str, rounds: int = 2) -> dict[str, np.ndarray]:
    """Seconds per embedding of each of ``tools`` (name -> tool) on each image: the best of ``rounds``, the
    tools' order alternating per round and image, each tool warmed up first (exports, compiles)."""
    for tool in tools.values():
        tool.set_image(images[0], key=f"{tag}-warm-up")
    times = {name: [] for name in tools}
    for i, image in enumerate(images):
        best = {name: [] for name in tools}
        for r in range(rounds):
            for name, tool in (tools.items() if (i + r) % 2 == 0 else reversed(tools.items())):
                start = time.perf_counter()
                tool.set_image(image, key=f"{tag}-{i}-{r}")
                best[name].append(time.perf_counter() - start)
        for name in tools:
            times[name].append(min(best[name]))
    return {name: np.array(v) for name, v in times.items()}


def roofline(tasks, repeats: int = 5) -> None:
    """GFLOP/s of the encoder on eager torch and OpenVINO against an fp32 SGEMM on the same threads: an fp32
    runtime cannot beat the matrix multiply, so peak / eager bounds its embedding ratio on this CPU."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from MedSAMAgentLib.tools.litemedsam import LiteMedSAM

    eager, fast = LiteMedSAM(device="cpu", runtime="torch"), LiteMedSAM(device="cpu", runtime="openvino")
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        eager.net.image_encoder(torch.zeros(1, 3, 256, 256))
    flops = counter.get_total_flops()
    size = 2048
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)
    gemm = []
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        gemm.append(time.perf_counter() - start)
    peak = 2 * size ** 3 / min(gemm) / 1e9
    images = [tasks[i % len(tasks)].image for i in range(repeats)]
    times = embedding_seconds({"eager": eager, "openvino": fast}, images, "roofline", rounds=1)
    rate = {name: flops / t.min() / 1e9 for name, t in times.items()}
    print(f"\nroofline ({torch.get_num_threads()} threads): encoder {flops / 1e9:.1f} GFLOP; fp32 SGEMM {size}^2 "
          f"{peak:.1f} GFLOP/s; eager {rate['eager']:.1f} GFLOP/s ({rate['eager'] / peak:.0%} of it), OpenVINO "
          f"{rate['openvino']:.1f} GFLOP/s ({rate['openvino'] / peak:.0%}); OpenVINO / eager "
          f"{rate['openvino'] / rate['eager']:.2f}x; the most any fp32 runtime could reach here: "
          f"{peak / rate['eager']:.2f}x eager")


def bf16_embedding(tasks) -> None:
    """Embedding time of the bf16 encoder against eager torch and f32 OpenVINO, per image (best of 2, order
    alternating per image)."""
    from MedSAMAgentLib.tools.litemedsam import LiteMedSAM

    tools = {"eager": LiteMedSAM(device="cpu", runtime="torch"), "f32": LiteMedSAM(device="cpu"),
             "bf16": LiteMedSAM(device="cpu", precision="bf16")}
    t = embedding_seconds(tools, [task.image for task in tasks], "bf16")
    print(f"\nbf16 encoder, {len(tasks)} images: median s eager {np.median(t['eager']):.3f}, f32 "
          f"{np.median(t['f32']):.3f}, bf16 {np.median(t['bf16']):.3f}")
    for a, b in (("eager", "f32"), ("eager", "bf16"), ("f32", "bf16")):
        r = t[a] / t[b]
        print(f"  embedding median ratio {a} / {b} {np.median(r):.2f} ({r.min():.2f}-{r.max():.2f})")


def bf16_clicks() -> None:
    """The click protocol with the f32 and the bf16 tool on every 2D-evaluable row of the shared manifest."""
    from MedSAMAgentLib.tools.litemedsam import LiteMedSAM

    rows = [c for c in read_manifest(SHARED_DATA / "manifest.jsonl") if c.dims == 2]
    tasks, skipped = load_cases(rows)
    tools = {"f32": LiteMedSAM(device="cpu"), "bf16": LiteMedSAM(device="cpu", precision="bf16")}
    results = {name: [] for name in tools}
    for task in tasks:
        for name, tool in tools.items():
            results[name].append(run_clicks(task, tool))
    print(f"\nclick protocol f32 vs bf16 on all {len(tasks)} 2D-evaluable rows ({len(skipped)} skipped)")
    print(f"{'group':34s} {'n':>3s} {'Dice@5 f32':>10s} {'bf16':>7s} {'change':>7s} {'NoC@90 f32':>10s} {'bf16':>5s}")
    groups = sorted({t.case.group for t in tasks})
    worst = 0.0
    for group in [*groups, "overall"]:
        pick = [i for i, t in enumerate(tasks) if group in ("overall", t.case.group)]
        d = {n: float(np.mean([results[n][i].dice[5] for i in pick])) for n in tools}
        noc = {n: float(np.mean([results[n][i].noc90 for i in pick])) for n in tools}
        change = d["bf16"] - d["f32"]
        if group != "overall":
            worst = min(worst, change)
        print(f"{group[:34]:34s} {len(pick):3d} {d['f32']:10.4f} {d['bf16']:7.4f} {change:+7.4f} {noc['f32']:10.2f} "
              f"{noc['bf16']:5.2f}")
    case_change = [b.dice[5] - a.dice[5] for a, b in zip(results["f32"], results["bf16"])]
    print(f"per case Dice@5 change: worst {min(case_change):+.4f}, best {max(case_change):+.4f}")
    passed = change >= -BF16_OVERALL_DROP and worst > -BF16_GROUP_DROP
    print(f"bar (overall drop <= {BF16_OVERALL_DROP}, no group's drop >= {BF16_GROUP_DROP}): overall {change:+.4f}, "
          f"worst group {worst:+.4f}: {'MET' if passed else 'MISSED'}")


def capped_refinement(large) -> None:
    """Click refinement with the geodesic on the capped grid (as shipped) against the full-resolution grid, on
    the shared set's images larger than the cap (every collection), click protocol."""
    from MedSAMAgentLib.refinement import DEFAULT_SETTINGS, ClickRefiner
    from MedSAMAgentLib.tools.litemedsam import LiteMedSAM

    tool = LiteMedSAM(device="cpu")
    variants = {"capped": DEFAULT_SETTINGS, "full grid": replace(DEFAULT_SETTINGS, grid_cap=1 << 30)}
    dices: dict[str, list] = {name: [] for name in variants}
    ms: dict[str, list] = {name: [] for name in variants}
    for task in large:
        for name, settings in variants.items():
            tool._refiner = ClickRefiner(settings)
            result = run_clicks(task, tool)
            dices[name].append(result.dice)
            ms[name] += result.prompt_ms[1:]
    print(f"\nclick refinement on {len(large)} real images resized to 1024 px (grid cap "
          f"{DEFAULT_SETTINGS.grid_cap}):")
    for name in variants:
        d = np.array(dices[name])
        print(f"  {name:10s} Dice@0 {d[:, 0].mean():.4f} @1 {d[:, 1].mean():.4f} @5 {d[:, 5].mean():.4f} "
              f"@19 {d[:, -1].mean():.4f}; median ms per click {np.median(ms[name]):.0f}")
    change = np.array(dices["capped"])[:, 5] - np.array(dices["full grid"])[:, 5]
    print(f"  Dice@5 capped - full grid: mean {change.mean():+.4f}, worst case {change.min():+.4f}")


def write_cases(tasks, big, folder: Path) -> None:
    items = [(t.image, t.ground_truth) for t in tasks]
    items += [(t.image, t.ground_truth) for t in map(at_1024, big)]  # the size the per-click budget is set at
    for i, (image, truth) in enumerate(items):
        np.save(folder / f"{i:03d}_image.npy", image)
        np.save(folder / f"{i:03d}_truth.npy", truth)


def run_tree(tree: Path, args: list[str], cwd: Path) -> float:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "MEDSAM_AGENT_RUNTIME")}
    env["PYTHONPATH"] = str(tree)
    start = time.perf_counter()
    subprocess.run([sys.executable, *args], cwd=cwd, env=env, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def demo_imports(tmp: Path) -> None:
    """Which heavy modules this tree's ``demo`` imports, and its import time (``python -X importtime``)."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "MEDSAM_AGENT_RUNTIME")}
    env["PYTHONPATH"] = str(ROOT)
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "MedSAMAgentLib.cli", "demo", "--out",
                           str(tmp / "demo_imports")], cwd=tmp, env=env, capture_output=True, text=True, check=True)
    total, seen = 0, set()
    for line in done.stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        _, cumulative, name = line.split("|")
        if not name.startswith("  "):  # top level: one space before the name
            total += int(cumulative) if cumulative.strip().isdigit() else 0
        seen.add(name.strip())
    heavy = [m for m in ("torch", "timm", "torchvision", "skimage", "matplotlib", "SimpleITK", "scipy", "PIL",
                         "openvino") if m in seen]
    print(f"this tree's demo imports {total / 1e6:.2f} s in all; heavy modules loaded: {', '.join(heavy)}")


def demo_side_by_side(baseline: Path, tmp: Path, demo_runs: int) -> None:
    trees = {"this tree": ROOT, "baseline": baseline}
    demo = {name: [] for name in trees}
    for name, tree in trees.items():  # warm-up: file caches, this tree's compiled models
        run_tree(tree, ["-m", "MedSAMAgentLib.cli", "demo", "--out", str(tmp / "demo_warm")], tmp)
    for r in range(demo_runs):
        for name, tree in (trees.items() if r % 2 == 0 else reversed(trees.items())):
            demo[name].append(run_tree(tree, ["-m", "MedSAMAgentLib.cli", "demo", "--out",
                                              str(tmp / f"demo_{r}")], tmp))
    b, t = np.median(demo["baseline"]), np.median(demo["this tree"])
    print(f"demo end to end (wall, {demo_runs} alternating runs): baseline {b:.1f} s "
          f"{np.round(demo['baseline'], 1).tolist()}, this tree {t:.1f} s {np.round(demo['this tree'], 1).tolist()}; "
          f"this tree / baseline {t / b:.2f} (per-pair ratios "
          f"{np.round(np.array(demo['this tree']) / np.array(demo['baseline']), 2).tolist()})")
    demo_imports(tmp)


def side_by_side(baseline: Path, tasks, big, repeats: int, demo_runs: int) -> None:
    trees = {"this tree": ROOT, "baseline": baseline}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cases = tmp / "cases"
        cases.mkdir()
        write_cases(tasks, big, cases)
        runs: dict[str, list[dict]] = {name: [] for name in trees}
        for r in range(repeats):
            for name, tree in trees.items():
                out = tmp / f"{name.replace(' ', '_')}_{r}.json"
                run_tree(tree, [str(WORKER), str(cases), str(out)], tmp)
                runs[name].append(json.loads(out.read_text()))
        per_case = {}
        for name, records in runs.items():
            cases_seen = {}
            for record in records:
                for c in record["cases"]:
                    entry = cases_seen.setdefault(c["name"], {"side": c["side"], "decode": [], "cpu": [], "wall": [],
                                                              "encode": []})
                    entry["decode"].append(c["decode_s"])
                    entry["cpu"] += c["click_cpu_s"]
                    entry["wall"] += c["click_wall_s"]
                    entry["encode"].append(c["encode_s"])
            per_case[name] = cases_seen
        new, old = per_case["this tree"], per_case["baseline"]
        names = sorted(new)

        def ratio(field: str, subset=None) -> float:
            return float(np.median([np.median(old[n][field]) / np.median(new[n][field]) for n in (subset or names)
                                    if old[n][field] and new[n][field]]))

        print(f"\nside by side with {baseline} ({repeats} alternating runs per tree, {len(names)} images)")
        print(f"{'':30s} {'baseline':>9s} {'this tree':>9s} {'ratio':>6s}")
        for label, field in (("embedding s", "encode"), ("decoder call s", "decode"), ("click CPU s", "cpu"),
                             ("click wall s", "wall")):
            b = np.median([np.median(old[n][field]) for n in names if old[n][field]])
            t = np.median([np.median(new[n][field]) for n in names if new[n][field]])
            print(f"{label:30s} {b:9.3f} {t:9.3f} {ratio(field):6.2f}")
        large = [n for n in names if new[n]["side"] >= 1024]
        if large:  # the median over all clicks on these images
            cpu_new = np.median([v for n in large for v in new[n]["cpu"]]) * 1000
            cpu_old = np.median([v for n in large for v in old[n]["cpu"]]) * 1000
            print(f"per click at 1024 px ({len(large)} images): CPU {cpu_old:.0f} ms baseline, {cpu_new:.0f} ms this "
                  f"tree (ratio {ratio('cpu', large):.2f}); wall {np.median([v for n in large for v in old[n]['wall']]) * 1000:.0f}"
                  f" / {np.median([v for n in large for v in new[n]['wall']]) * 1000:.0f} ms")
        demo_side_by_side(baseline, tmp, demo_runs)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, help="worktree of the code to compare with")
    parser.add_argument("--cases", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--demo-runs", type=int, default=3)
    parser.add_argument("--skip-embedding", action="store_true")
    parser.add_argument("--demo-only", action="store_true", help="only the demo side by side (needs --baseline)")
    parser.add_argument("--roofline", action="store_true",
                        help="also the encoder's GFLOP/s against this CPU's fp32 SGEMM: the ceiling of any fp32 runtime")
    parser.add_argument("--bf16", action="store_true",
                        help="also the bf16 encoder: its speed, and the click protocol on every 2D row against f32")
    parser.add_argument("--large", type=int, default=0,
                        help="also compare capped / full-grid click refinement on this many large images")
    args = parser.parse_args()
    if not (SHARED_DATA / "manifest.jsonl").exists():
        print(f"no {SHARED_DATA / 'manifest.jsonl'}: skipping", file=sys.stderr)
        return 0
    if args.demo_only:
        if not args.baseline:
            parser.error("--demo-only needs --baseline DIR")
        with tempfile.TemporaryDirectory() as tmp:
            demo_side_by_side(args.baseline.resolve(), Path(tmp), args.demo_runs)
        return 0
    tasks, big = pick_cases(args.cases)
    if not args.skip_embedding:
        embedding_and_dice(tasks)
    if args.roofline:
        roofline(tasks)
    if args.bf16:
        bf16_embedding(tasks)
        bf16_clicks()
    if args.large:
        capped_refinement(large_cases(args.large))
    if args.baseline:
        side_by_side(args.baseline.resolve(), tasks, big, args.repeats, args.demo_runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())

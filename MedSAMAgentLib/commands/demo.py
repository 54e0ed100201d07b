"""``medsam-agent demo``: a bundled real case end to end with the built-in tool, the built-in policy and the
simulated clinician. Needs no download and no GPU."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from ..actions import Box, Point, Stop, describe
from ..manifest import bundled_manifest, load_case
from ..policies.mllm import add_policy_arguments, describe_policy, policy_options_from_args
from ..registry import DEFAULT_POLICY, make_policy
from . import add_tool_arguments, tool_from_args
from .options import POSITIVE
from ..outputs import OutputLock, atomic_path
from ..render import overlay, save_mask_png
from ..reviewers import SimulatedClinician
from ..session import Session
from ..trajectory import TrajectoryWriter

DEMO_CASE = "medscribble/BTCV/0763890-Image_axis1_maxslice"


def register(subparsers) -> None:
    parser = subparsers.add_parser("demo", help="run a bundled case end to end (no download, no GPU)",
                                   description="Run a bundled real case end to end with the built-in tool, the "
                                   "built-in policy and a simulated clinician that reads the ground truth. "
                                   "Needs no download and no GPU.")
    parser.add_argument("--out", default="out/demo", help="output folder (default: out/demo)")
    parser.add_argument("--case", default=DEMO_CASE, help=f"bundled case id (default: {DEMO_CASE})")
    add_tool_arguments(parser)
    add_policy_arguments(parser, default_policy=DEFAULT_POLICY)
    parser.add_argument("--max-steps", type=POSITIVE, default=5, help="box/point actions per episode (default 5)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--volume", action="store_true",
                        help="the 3D demo instead: a bundled CT volume, a key-slice box carried through the "
                             "volume, then the simulated clinician's corrections (demo_volume)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.volume:
        from .demo_volume import run_volume_demo

        return run_volume_demo(args)
    cases = {c.id: c for c in bundled_manifest()}
    if args.case not in cases:
        raise ValueError(f"no bundled case {args.case!r}; choose one of: {', '.join(sorted(cases))}")
    loaded = load_case(cases[args.case])
    out = Path(args.out)
    with OutputLock(out, "demo"):
        return _run(args, loaded, out)


def _run(args: argparse.Namespace, loaded, out: Path) -> int:
    """The demo proper. Its log is written as trajectory.jsonl.partial and replaces an earlier run's
    trajectory.jsonl only once the episode has ended, so a failed or killed demo loses nothing."""
    log_path = out / "trajectory.jsonl"
    partial = out / "trajectory.jsonl.partial"
    partial.unlink(missing_ok=True)  # only ever an unfinished demo's

    print(f"case   {args.case}  ({loaded.case.target}; {loaded.case.licence})")
    print(f"tool   {args.tool}   policy {args.policy}   reviewer: simulated clinician (reads ground truth)")
    started = time.perf_counter()
    print("loading the tool ...", flush=True)
    tool = tool_from_args(args)
    policy = make_policy(args.policy, ground_truth=loaded.ground_truth, seed=args.seed,
                         **policy_options_from_args(args))
    if args.policy == "mllm":
        print(describe_policy(policy))
        advice = policy.tool_advice(args.tool)
        if advice:
            print(f"note: {advice}")
    clinician = SimulatedClinician(loaded.ground_truth, seed=args.seed)
    applied_so_far: list = []

    def show(step) -> None:
        proposed = describe(step.proposal.action) if step.proposal else "-"
        applied = describe(step.applied) if step.applied else "-"
        dice = f"{step.dice:.3f}" if step.dice is not None else "-"
        print(f"{step.index:>4}  {step.actor:<9} {proposed:<28} {step.decision:<9} {applied:<28} {dice:>6}",
              flush=True)
        if step.proposal:
            print(f"{'':>6}reason: {step.proposal.reason}")
        if isinstance(step.applied, (Box, Point)):
            applied_so_far.append(step.applied)
        mask = step.prediction.mask if step.prediction is not None else None
        proposal = step.proposal.action if step.proposal and not isinstance(step.proposal.action, Stop) else None
        with atomic_path(out / f"step_{step.index:02d}.png") as temporary:
            overlay(loaded.image, mask, applied_so_far, proposal).save(temporary)

    print(f"\n{'step':>4}  {'who':<9} {'proposed':<28} {'decision':<9} {'applied':<28} {'Dice':>6}")
    with TrajectoryWriter(partial) as log:
        session = Session(tool, policy, loaded.image, target=loaded.case.target,
                          ground_truth=loaded.ground_truth, log=log, max_actions=args.max_steps,
                          meta={"case": args.case, "source": "demo"}, on_step=show)
        if policy.needs_hint:
            session.place(clinician.hint(), hint=True)
        try:
            status = session.run(clinician)
        except KeyboardInterrupt:  # the partial log says how it ended; the earlier trajectory.jsonl stays
            session.finish(accepted=False, status="interrupted")
            raise
        session.finish(accepted=True, status=status)  # never accepted when paused (Session.finish)
    os.replace(partial, log_path)
    for stale in out.glob("step_*.png"):  # an earlier, longer run's overlays
        if not stale.stem[5:].isdigit() or int(stale.stem[5:]) >= len(session.steps):
            stale.unlink()

    with atomic_path(out / "final_mask.png") as temporary:
        save_mask_png(session.mask, temporary)
    final = session.steps[-1].dice if session.steps else None
    print(f"\nended: {status}; agent actions {session.agent_actions}, clinician actions "
          f"{session.clinician_actions}; final Dice {final if final is None else round(final, 3)}")
    print(f"wrote {out}/final_mask.png, {len(session.steps)} step overlays and {log_path} "
          f"in {time.perf_counter() - started:.1f} s")
    if status == "paused":
        print(f"paused: {session.pause_reason}")
        return 1
    return 0

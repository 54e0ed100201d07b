"""``medsam-agent evaluate``: a tool under the click protocol, or a policy with the simulated clinician, over
every 2D-evaluable row of a manifest; writes summary.json, cases.csv and plots (``evaluation``)."""

from __future__ import annotations

import argparse
import json
import sys

from ..evaluation import AGENT_MAX_STEPS, CLICK_INTERACTIONS, EFFORT_STEPS, evaluate_manifest, format_table
from ..policies.mllm import MLLMPolicy, add_policy_arguments, describe_policy, policy_options_from_args
from ..registry import DEFAULT_POLICY, POLICIES, make_policy
from . import add_tool_arguments, tool_from_args
from .options import OPEN_FRACTION, POSITIVE


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "evaluate", help="evaluate a tool (click protocol) or a policy (agent protocol) on a manifest",
        description="clicks: ground-truth box then oracle corrective clicks, 20 interactions in all; "
        "agent: the policy proposes and a simulated clinician reviews until stop or --max-steps. "
        "3D rows are evaluated on their largest-foreground slice; rows with several labels and no 'label' "
        "are skipped and listed.")
    parser.add_argument("--manifest", required=True, help="manifest.jsonl (e.g. ../shared/data/manifest.jsonl)")
    parser.add_argument("--protocol", required=True, choices=("clicks", "agent", "volume"),
                        help="volume: every 3D row naming a label; key-slice ground-truth box, propagation "
                             "through the volume, then the simulated clinician's corrections "
                             "(volume_evaluation)")
    parser.add_argument("--corrections", type=POSITIVE, default=10,
                        help="volume protocol: clinician corrections after propagation (default 10)")
    parser.add_argument("--key-area", type=OPEN_FRACTION, default=None, metavar="F",
                        help="volume protocol: start each case on the slice on either side of its largest whose "
                        "area is nearest F times the largest (two runs per case), not on the largest: how "
                        "propagation fares when the clinician starts elsewhere")
    parser.add_argument("--embedding-cache", metavar="DIR", default=None,
                        help="volume protocol, built-in tool: keep slice embeddings in DIR between runs")
    parser.add_argument("--policy", default=None, choices=sorted(POLICIES),
                        help=f"agent protocol: who proposes actions (default: {DEFAULT_POLICY})")
    parser.add_argument("--max-steps", type=POSITIVE, default=AGENT_MAX_STEPS,
                        help=f"agent protocol: box/point actions per case (default {AGENT_MAX_STEPS})")
    parser.add_argument("--effort-steps", type=int, default=EFFORT_STEPS,
                        help=f"agent protocol: the clinician-effort count (the clinician's actions until IoU "
                        f"0.85/0.90, beside the click protocol's NoC on the same cases) goes on to this many "
                        f"actions (default {EFFORT_STEPS}; 0: off)")
    parser.add_argument("--interactions", type=POSITIVE, default=CLICK_INTERACTIONS,
                        help=f"click protocol: interactions per case, the box included (default "
                        f"{CLICK_INTERACTIONS})")
    parser.add_argument("--limit", type=POSITIVE, default=None, help="evaluate only the first N evaluable rows")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--json", action="store_true", help="print summary.json instead of the table")
    parser.add_argument("--out", required=True, help="folder for summary.json, cases.csv, the plots and (agent "
                        "protocol) trajectories.jsonl")
    add_tool_arguments(parser)
    add_policy_arguments(parser, policy_flag=False)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.protocol in ("clicks", "volume") and (args.policy or args.model or args.endpoint):
        raise ValueError("--policy, --model and --endpoint apply to --protocol agent only")
    if args.key_area is not None and args.protocol != "volume":
        raise ValueError("--key-area applies to --protocol volume only")
    if args.effort_steps < 0 or (args.effort_steps and args.effort_steps < args.max_steps):
        raise ValueError(f"--effort-steps must be 0 (off) or at least --max-steps ({args.max_steps}), "
                         f"got {args.effort_steps}")
    tool = tool_from_args(args)
    if args.protocol == "volume":
        return _run_volume(args, tool)
    policy = None
    if args.protocol == "agent":
        args.policy = args.policy or DEFAULT_POLICY
        if args.policy != "oracle":  # the oracle reads each case's ground truth: made per case
            policy = make_policy(args.policy, **policy_options_from_args(args))
            if isinstance(policy, MLLMPolicy):
                print(describe_policy(policy), flush=True)
                advice = policy.tool_advice(args.tool)
                if advice:
                    print(f"note: {advice}", flush=True)
    summary = evaluate_manifest(
        args.manifest, args.protocol, args.out, tool=tool, policy=policy, policy_name=args.policy,
        max_steps=args.max_steps, limit=args.limit, interactions=args.interactions, progress=not args.no_progress,
        effort_steps=args.effort_steps,
    )
    print(json.dumps(summary, indent=2) if args.json else format_table(summary))
    print(f"report written to {args.out}")
    if summary["errors"]:  # an episode that did not run is a failure of the run, not a Dice of 0
        print(f"medsam-agent evaluate: error: {len(summary['errors'])} case(s) did not run; first: "
              f"{summary['errors'][0]['id']}: {summary['errors'][0]['reason']}", file=sys.stderr)
        return 1
    return 0


def _run_volume(args: argparse.Namespace, tool) -> int:
    from ..volume_evaluation import evaluate_volumes, format_table as volume_table

    if args.embedding_cache:
        if not hasattr(tool, "_encode"):
            raise ValueError(f"--embedding-cache works with the built-in tool only, not {args.tool}")
        from ..volumes import disk_embeddings

        disk_embeddings(tool, args.embedding_cache)
    summary = evaluate_volumes(args.manifest, args.out, tool, corrections=args.corrections, limit=args.limit,
                               progress=not args.no_progress, key_area=args.key_area)
    print(json.dumps(summary, indent=2) if args.json else volume_table(summary))
    print(f"report written to {args.out}")
    return 0

"""``medsam-agent evaluate``: a tool under the click protocol, or a policy with the simulated clinician, over
every 2D-evaluable row of a manifest; writes summary.json, cases.csv and plots (``evaluation``)."""

from __future__ import annotations

import argparse
import json

from ..evaluation import AGENT_MAX_STEPS, CLICK_INTERACTIONS, evaluate_manifest, format_table
from ..policies.mllm import MLLMPolicy, add_policy_arguments, describe_policy, policy_options_from_args
from ..registry import DEFAULT_POLICY, POLICIES, make_policy
from . import add_tool_arguments, tool_from_args


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected 1 or more, got {value}")
    return value


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "evaluate", help="evaluate a tool (click protocol) or a policy (agent protocol) on a manifest",
        description="clicks: ground-truth box then oracle corrective clicks, 20 interactions in all; "
        "agent: the policy proposes and a simulated clinician reviews until stop or --max-steps. "
        "3D rows are evaluated on their largest-foreground slice; rows with several labels and no 'label' "
        "are skipped and listed.")
    parser.add_argument("--manifest", required=True, help="manifest.jsonl (e.g. ../shared/data/manifest.jsonl)")
    parser.add_argument("--protocol", required=True, choices=("clicks", "agent"))
    parser.add_argument("--policy", default=None, choices=sorted(POLICIES),
                        help=f"agent protocol: who proposes actions (default: {DEFAULT_POLICY})")
    parser.add_argument("--max-steps", type=_positive, default=AGENT_MAX_STEPS,
                        help=f"agent protocol: box/point actions per case (default {AGENT_MAX_STEPS})")
    parser.add_argument("--interactions", type=_positive, default=CLICK_INTERACTIONS,
                        help=f"click protocol: interactions per case, the box included (default "
                        f"{CLICK_INTERACTIONS})")
    parser.add_argument("--limit", type=_positive, default=None, help="evaluate only the first N evaluable rows")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--json", action="store_true", help="print summary.json instead of the table")
    parser.add_argument("--out", required=True, help="folder for summary.json, cases.csv, the plots and (agent "
                        "protocol) trajectories.jsonl")
    add_tool_arguments(parser)
    add_policy_arguments(parser, policy_flag=False)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.protocol == "clicks" and (args.policy or args.model or args.endpoint):
        raise ValueError("--policy, --model and --endpoint apply to --protocol agent only")
    tool = tool_from_args(args)
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
    )
    print(json.dumps(summary, indent=2) if args.json else format_table(summary))
    print(f"report written to {args.out}")
    return 0

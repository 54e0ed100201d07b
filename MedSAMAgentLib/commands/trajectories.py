"""``medsam-agent trajectories``: expert trajectories from ground truth, training data from logs, statistics.

  generate  oracle-expert episodes for a manifest's cases, logged like interactive sessions
  export    logs (generated or from Slicer sessions) -> LLaMA-Factory JSON (SFT) or verl parquet (RL)
  stats     episodes, actions by type, IoU/Dice by step, override rate; printed and plotted
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..policies.oracle import OracleSettings
from ..registry import TOOLS
from .options import FRACTION, POSITIVE, number, output_file, whole
from ..session import DEFAULT_MAX_ACTIONS

_ORACLE = OracleSettings()


def register(subparsers) -> None:
    parser = subparsers.add_parser("trajectories", help="expert trajectories, training-data export, statistics",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="action", metavar="ACTION")
    parser.set_defaults(func=lambda args: parser.print_help() or 1)

    gen = sub.add_parser("generate", help="oracle-expert episodes for a manifest's cases",
                         description="Generate expert trajectories (hybrid prompting with the progress constraint "
                         "and a stop action) as trajectory logs OUT/logs/<case>.jsonl. Resumable: finished "
                         "cases are skipped. The same seed gives the same files except the wall-clock keys "
                         "'created' and 'timings'.")
    gen.add_argument("--manifest", required=True, help="case manifest (JSONL, the format of shared/data)")
    gen.add_argument("--out", required=True, help="output folder")
    gen.add_argument("--paradigm", choices=("box-to-point", "sequential-click", "both"), default="box-to-point",
                     help="first action: a jittered box, or a click (default: box-to-point)")
    gen.add_argument("--per-case", type=POSITIVE, default=1, help="episodes per case and paradigm (default 1)")
    gen.add_argument("--seed", type=whole(0), default=0, help="base seed (default 0)")
    gen.add_argument("--workers", type=POSITIVE, default=1, help="processes, each with its own tool (default 1)")
    gen.add_argument("--jitter", type=number(0.0, 1.0, high_open=True), default=_ORACLE.jitter,
                     help=f"box side jitter, fraction of the box size (default {_ORACLE.jitter})")
    gen.add_argument("--tau", type=FRACTION, default=_ORACLE.tau,
                     help=f"progress constraint: minimum IoU gain of a kept click (default {_ORACLE.tau})")
    gen.add_argument("--stop-iou", type=number(0.0, 1.0, low_open=True), default=_ORACLE.stop_iou,
                     help=f"stop once IoU reaches this (default {_ORACLE.stop_iou})")
    gen.add_argument("--resample", type=whole(0), default=_ORACLE.resample,
                     help=f"extra click candidates tried when one fails the constraint (default {_ORACLE.resample})")
    gen.add_argument("--max-steps", type=POSITIVE, default=DEFAULT_MAX_ACTIONS,
                     help=f"box/point actions per episode (default {DEFAULT_MAX_ACTIONS}, the protocol's limit)")
    gen.add_argument("--dims", choices=("2", "3", "all"), default="2",
                     help="manifest rows to use: 2D, 3D (largest slice) or all (default 2)")
    gen.add_argument("--include-non-expert", action="store_true",
                     help="also use rows whose label is a model output (expert_label false)")
    gen.add_argument("--case", action="append", dest="cases", help="only this case id (repeatable)")
    gen.add_argument("--tool", default="litemedsam", choices=sorted(TOOLS), help="segmentation tool (default litemedsam)")
    gen.add_argument("--checkpoint", default=None, help="tool checkpoint (default: the tool's own)")
    gen.add_argument("--no-progress", action="store_true", help="no progress bar")
    gen.set_defaults(func=run_generate)

    exp = sub.add_parser("export", help="logs -> LLaMA-Factory JSON (SFT) or verl parquet (RL)",
                         description="Export accepted episodes of trajectory logs (files or folders) as training "
                         "data. The conversation and images are exactly what the MLLM policy sees.")
    exp.add_argument("logs", nargs="+", help="trajectory log files or folders holding them")
    exp.add_argument("--format", required=True, choices=("llamafactory", "verl"))
    exp.add_argument("--out", required=True, help="output folder")
    exp.add_argument("--only-accepted", action="store_true",
                     help="keep only agent proposals the reviewer accepted (one sample per step)")
    exp.add_argument("--only-corrections", action="store_true",
                     help="keep only the clinician's overrides (one sample per step)")
    exp.add_argument("--min-iou", type=FRACTION, default=0.0,
                     help="drop episodes whose final mask is below this IoU against the ground truth (default 0)")
    exp.add_argument("--no-progress", action="store_true", help="no progress bar")
    exp.set_defaults(func=run_export)

    st = sub.add_parser("stats", help="what a set of logs holds, printed and plotted",
                        description="Episodes, actions per episode by type, IoU/Dice at each step, the override "
                        "rate and the protocol reward; plotted to a PNG.")
    st.add_argument("logs", nargs="+", help="trajectory log files or folders")
    st.add_argument("--plot", default=None, type=output_file(".png"), help="PNG path (default: <first folder>/trajectory_stats.png)")
    st.add_argument("--json", action="store_true", help="print the numbers as JSON instead of a table")
    st.set_defaults(func=run_stats)


def run_generate(args: argparse.Namespace) -> int:
    from ..trajectories.generate import PARADIGMS, GenerateSettings, generate

    paradigms = PARADIGMS if args.paradigm == "both" else (args.paradigm,)
    settings = GenerateSettings(paradigms=paradigms, per_case=args.per_case, seed=args.seed, jitter=args.jitter,
                                tau=args.tau, stop_iou=args.stop_iou, resample=args.resample,
                                max_steps=args.max_steps, tool=args.tool, checkpoint=args.checkpoint)
    report = generate(args.manifest, args.out, settings, workers=args.workers, dims=args.dims,
                      include_non_expert=args.include_non_expert, progress=not args.no_progress,
                      cases=args.cases)
    print(report.summary())
    return 1 if report.count("failed") else 0


def run_export(args: argparse.Namespace) -> int:
    from ..trajectories.export import export

    report = export(args.logs, args.format, args.out, only_accepted=args.only_accepted,
                    only_corrections=args.only_corrections, min_iou=args.min_iou, progress=not args.no_progress)
    print(report.summary())
    return 0 if report.samples else 1


def run_stats(args: argparse.Namespace) -> int:
    from ..trajectories.stats import collect, plot

    stats = collect(args.logs)
    if args.json:
        print(json.dumps(stats.as_dict(), indent=1))
    else:
        print(stats.text())
    if args.plot:
        target = Path(args.plot)
    else:
        first = Path(args.logs[0])
        target = (first if first.is_dir() else first.parent) / "trajectory_stats.png"
    print(f"plot: {plot(stats, target)}")
    return 0

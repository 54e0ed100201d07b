"""Subcommands of ``medsam-agent`` (see ``cli.COMMAND_MODULES``), and the options they share."""

from __future__ import annotations

import argparse

from ..registry import DEFAULT_TOOL, TOOLS, make_tool, parse_tool_options
from ..tools.base import SegmentationTool


def add_tool_arguments(parser: argparse.ArgumentParser) -> None:
    """``--tool``, ``--checkpoint``, ``--tool-option`` and ``--device``, the same for every command."""
    group = parser.add_argument_group("segmentation tool")
    group.add_argument("--tool", default=DEFAULT_TOOL, choices=sorted(TOOLS),
                       help=f"promptable segmentation tool (default: {DEFAULT_TOOL}, weights built in)")
    group.add_argument("--checkpoint", metavar="PATH", default=None,
                       help="weights file for the tool (required for sam, medsam, sam2, medsam2 unless the "
                            "released file is in the cache folder)")
    group.add_argument("--tool-option", metavar="KEY=VALUE", action="append", default=[],
                       help="tool option, repeatable: e.g. image_size=512 (MedSAM2), arch=vit_b, "
                            "accept_licence=true")
    group.add_argument("--device", default=None, help="cuda, cuda:1 or cpu (default: cuda when available)")


def tool_from_args(args: argparse.Namespace) -> SegmentationTool:
    return make_tool(args.tool, checkpoint=args.checkpoint, device=args.device,
                     **parse_tool_options(args.tool_option))

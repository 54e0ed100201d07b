"""``medsam-agent``: the command line. Each subcommand lives in its own module with a ``register`` function;
errors are one clear line on stderr (exit 2), never a traceback (set MEDSAM_AGENT_DEBUG=1 for one)."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Optional, Sequence

from . import __version__

# modules that define ``register(subparsers)``; each adds its subcommand(s) with ``set_defaults(func=...)``
COMMAND_MODULES = (
    "MedSAMAgentLib.commands.demo",
    "MedSAMAgentLib.commands.segment",
    "MedSAMAgentLib.commands.trajectories",
    "MedSAMAgentLib.commands.evaluate",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medsam-agent", description="Agentic interactive medical image "
                                     "segmentation (MedSAM-Agent protocol).")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("medsam-agent: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # one clear line for the user; the traceback on request
        if os.environ.get("MEDSAM_AGENT_DEBUG"):
            raise
        message = str(error) or type(error).__name__
        print(f"medsam-agent {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

"""``medsam-agent``: the command line. Each subcommand lives in its own module with a ``register`` function;
errors are one clear line on stderr (exit 2), never a traceback (set MEDSAM_AGENT_DEBUG=1 for one)."""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import threading
import warnings
from typing import Optional, Sequence

from . import __version__

# modules that define ``register(subparsers)``; each adds its subcommand(s) with ``set_defaults(func=...)``
COMMAND_MODULES = (
    "MedSAMAgentLib.commands.demo",
    "MedSAMAgentLib.commands.segment",
    "MedSAMAgentLib.commands.trajectories",
    "MedSAMAgentLib.commands.evaluate",
    "MedSAMAgentLib.commands.app",
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
    from .tools.runtime import quiet_threads

    quiet_threads()  # before any command module imports torch (OpenMP reads it once, at load)
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            with _sigterm_as_interrupt():
                _check_arguments(args)
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


def _check_arguments(args: argparse.Namespace) -> None:
    """Checks that need two options together, done before any work: --tool-option keys against --tool."""
    if getattr(args, "tool_option", None):
        from .registry import check_tool_options, parse_tool_options

        check_tool_options(args.tool, parse_tool_options(args.tool_option))


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings as one line each (e.g. repaired NaN pixels, skipped log lines), without source excerpts."""
    print(f"medsam-agent: warning: {message}", file=sys.stderr, flush=True)


class _sigterm_as_interrupt:
    """SIGTERM handled like Ctrl-C, so a stopped run cleans up (partial summary, released lock) the same way."""

    def __enter__(self):
        self.previous = None
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGTERM, self._raise)
        return self

    @staticmethod
    def _raise(signum, frame):
        raise KeyboardInterrupt

    def __exit__(self, *exc):
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)


if __name__ == "__main__":
    sys.exit(main())

"""``medsam-agent app``: the human-in-the-loop demo in the browser (see ``MedSAMAgentLib.app``).

Listens on 127.0.0.1 unless ``--host`` says otherwise; no share link, Gradio's analytics off. Needs no
download and no GPU: the bundled cases and the built-in LiteMedSAM tool. Logs and masks go to ``--out``.
"""

from __future__ import annotations

import argparse
import errno
import socket
from pathlib import Path

from . import add_tool_arguments
from .options import whole
from ..registry import parse_tool_options

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
DEFAULT_CASE = "medscribble/BTCV/0763890-Image_axis1_maxslice"


def register(subparsers) -> None:
    parser = subparsers.add_parser("app", help="the human-in-the-loop demo in the browser (Gradio, local only)",
                                   description="Start the browser demo: open a bundled case or upload an image "
                                   "or a volume, click on the target, and review the agent's proposals. Serves "
                                   f"on {DEFAULT_HOST} only unless --host is given; nothing is sent anywhere.")
    parser.add_argument("--host", default=DEFAULT_HOST,
                        help=f"address to listen on (default {DEFAULT_HOST}, this machine only; 0.0.0.0 "
                             "serves the network: anyone who can reach it can use the app)")
    parser.add_argument("--port", type=whole(1, 65535), default=DEFAULT_PORT,
                        help=f"port (default {DEFAULT_PORT})")
    parser.add_argument("--case", default=DEFAULT_CASE, help=f"bundled case shown first (default {DEFAULT_CASE})")
    parser.add_argument("--out", default="out/app",
                        help="folder for each browser session's trajectory log and masks (default out/app)")
    add_tool_arguments(parser)
    parser.set_defaults(func=run)


def check_port(host: str, port: int) -> None:
    """Fail in one line when the port is taken, before loading anything (Gradio's own message is vaguer)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                raise RuntimeError(f"port {port} on {host} is already in use (is the app already running?); "
                                   "choose another with --port") from None
            raise RuntimeError(f"cannot listen on {host}:{port}: {error.strerror or error}") from None


def run(args: argparse.Namespace) -> int:
    check_port(args.host, args.port)
    from ..app.ui import CSS, build, default_config  # imports gradio (with analytics off)
    from ..app.workspace import Engine

    engine = Engine(args.tool, checkpoint=args.checkpoint, device=args.device,
                    **parse_tool_options(args.tool_option))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    page = build(default_config(engine, out, args.case))
    print(f"MedSAM-Agent app on http://{args.host}:{args.port}  (logs and masks in {out}/; Ctrl+C stops it)",
          flush=True)
    page.queue(default_concurrency_limit=4).launch(
        server_name=args.host, server_port=args.port, share=False, inbrowser=False, show_error=False,
        ssr_mode=False, mcp_server=False, quiet=True, allowed_paths=[str(out.resolve())],
        footer_links=["gradio", "settings"], css=CSS)
    return 0

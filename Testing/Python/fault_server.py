"""A loopback OpenAI-compatible policy server that misbehaves on purpose, for the fault tests.

Binds 127.0.0.1 only, on a free port, in a daemon thread. Every fault is bounded in count and time (a stall
or a trickle ends after ``hold`` seconds at most), so a test that forgets to time out still ends.

Modes (``FaultServer(mode)``; the mode can also be chosen per request as the first path segment, e.g.
``http://127.0.0.1:PORT/error/v1``):
- ``answer``: a valid ``<tool_call>`` answer after ``delay`` seconds (alternately a box and a stop);
- ``error``: HTTP 500; ``garbage``: 200 with a non-JSON body; ``nochoices``: 200 with ``{"choices": []}``;
  ``nonsense``: 200 with a well-formed answer whose text holds no tool call;
- ``stall``: reads the request and answers nothing for ``hold`` seconds;
- ``trickle``: sends headers and then one byte every ``interval`` seconds, up to ``hold`` seconds.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MODES = ("answer", "error", "garbage", "nochoices", "nonsense", "stall", "trickle")


def free_port() -> int:
    """A loopback port nobody listens on (for the 'connection refused' case)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class FaultServer:
    def __init__(self, mode: str = "answer", *, delay: float = 0.0, hold: float = 8.0, interval: float = 0.2):
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}")
        self.mode, self.delay, self.hold, self.interval = mode, delay, hold, interval
        self.requests = 0
        self._stop = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def do_GET(self):
                self._send(200, json.dumps({"data": [{"id": "fault-model"}]}).encode())

            def do_POST(self):
                server.requests += 1
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                mode = server._mode_for(self.path)
                if mode == "error":
                    return self._send(500, b"internal error")
                if mode == "garbage":
                    return self._send(200, b"<html>not json</html>")
                if mode == "nochoices":
                    return self._send(200, b'{"choices": []}')
                if mode == "nonsense":
                    return self._send(200, _answer("I think the liver is somewhere in the middle."))
                if mode == "stall":
                    server._stop.wait(server.hold)
                    return None
                if mode == "trickle":
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", "100000")
                    self.end_headers()
                    ends = time.monotonic() + server.hold
                    try:
                        while time.monotonic() < ends and not server._stop.is_set():
                            self.wfile.write(b" ")
                            self.wfile.flush()
                            time.sleep(server.interval)
                    except OSError:
                        pass
                    return None
                time.sleep(server.delay)
                box = server.requests % 2 == 1
                text = ('<tool_call>\n{"name": "add_bbox", "arguments": {"bbox_2d": [300, 300, 700, 700]}}'
                        '\n</tool_call>') if box else '<tool_call>\n{"name": "stop_action", ' \
                        '"arguments": {}}\n</tool_call>'
                return self._send(200, _answer(text))

            def _send(self, code: int, body: bytes):
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def _mode_for(self, path: str) -> str:
        first = path.strip("/").split("/", 1)[0]
        return first if first in MODES else self.mode

    def url_for(self, mode: str) -> str:
        return f"http://127.0.0.1:{self.port}/{mode}/v1"

    def __enter__(self) -> "FaultServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def _answer(text: str) -> bytes:
    return json.dumps({"choices": [{"message": {"role": "assistant", "content": text}}]}).encode()


if __name__ == "__main__":  # a standalone server for manual checks: python fault_server.py MODE [PORT-FILE]
    import sys

    with FaultServer(sys.argv[1] if len(sys.argv) > 1 else "answer", hold=60) as running:
        if len(sys.argv) > 2:
            with open(sys.argv[2], "w") as handle:
                handle.write(str(running.port))
        print(running.url, flush=True)
        try:
            while True:
                time.sleep(1)
        except KeyboardInterrupt:
            pass

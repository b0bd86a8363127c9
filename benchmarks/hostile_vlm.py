"""A local OpenAI-compatible chat-completions server that misbehaves on purpose, for the Qwen-Image sweep's VLM cases.

    with HostileServer() as server:
        url = server.url("echo")      # http://127.0.0.1:PORT/echo/v1: what the judge's --vlm-base-url names

The path's first part picks the behaviour (`BEHAVIOURS`); the server keeps no state between requests but the
first-request bookkeeping of `trickle`. A T2I case whose prompt holds FAILME is answered 400 by `fail-one-category`.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

BEHAVIOURS = {
    "ok": "a valid T2I score (4) for every request",
    "echo": "the request's headers (Authorization included) as the reply content",
    "echo-reasoning": "a valid score whose reasoning quotes the Authorization header",
    "fail-one-category": "400 for a case whose prompt holds FAILME, a valid score otherwise",
    "html": "HTTP 200 with an HTML page instead of a chat completion",
    "unauthorized": "HTTP 401",
    "score-7": "a reply scoring 7 on a 1..5 scale",
    "huge": "a 5 MB reply content",
    "trickle": "the first request of each prompt: a valid reply sent one byte every 0.8 s (~170 s in all); later "
               "ones at once",
}


def _completion(content: str) -> bytes:
    return json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": "m",
                       "choices": [{"index": 0, "finish_reason": "stop",
                                    "message": {"role": "assistant", "content": content}}]}).encode()


def _score(score=4, reasoning: str = "fine") -> str:
    return json.dumps({"score": score, "reasoning": reasoning})


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    seen: set = set()  # trickle: prompts already answered slowly once
    lock = threading.Lock()

    def log_message(self, *args):  # quiet
        pass

    def do_POST(self):  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode("utf-8", "replace")
        behaviour = self.path.strip("/").split("/")[0]
        auth = self.headers.get("Authorization", "")
        if behaviour == "unauthorized":
            return self._send(401, json.dumps({"error": {"message": "bad key"}}).encode())
        if behaviour == "html":
            return self._send(200, b"<html><body>proxy error</body></html>", "text/html")
        if behaviour == "fail-one-category" and "FAILME" in body:
            return self._send(400, json.dumps({"error": {"message": "content policy"}}).encode())
        if behaviour == "echo":
            return self._send(200, _completion(json.dumps(dict(self.headers.items()))))
        if behaviour == "echo-reasoning":
            return self._send(200, _completion(_score(reasoning=f"your header was {auth}")))
        if behaviour == "score-7":
            return self._send(200, _completion(_score(7)))
        if behaviour == "huge":
            return self._send(200, _completion(_score(reasoning="x" * 5_000_000)))
        if behaviour == "trickle":
            with self.lock:
                first = body not in self.seen
                self.seen.add(body)
            if first:
                return self._trickle(_completion(_score()), 0.8)
        return self._send(200, _completion(_score()))

    def _send(self, status: int, data: bytes, kind: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _trickle(self, data: bytes, pause: float) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        try:
            for i in range(len(data)):
                self.wfile.write(data[i:i + 1])
                self.wfile.flush()
                time.sleep(pause)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up: what a fixed judge does
            pass


class HostileServer:
    """The server on 127.0.0.1 at a free port, served from a daemon thread while the `with` block runs."""

    def __init__(self):
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]

    def url(self, behaviour: str) -> str:
        if behaviour not in BEHAVIOURS:
            raise ValueError(f"unknown behaviour {behaviour!r}")
        return f"http://127.0.0.1:{self.port}/{behaviour}/v1"

    def __enter__(self) -> HostileServer:
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

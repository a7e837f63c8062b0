"""A real OpenAI-compatible chat-completions server on loopback, for tests and benchmarks.

``http.server`` in a daemon thread on ``127.0.0.1`` (a free port); every POST goes to a
``respond(body, headers)`` callback that returns the assistant text (a 200 reply) or a full
``(status, headers, json_body)`` triple (errors, rate limits). The server records what a test
asserts on: requests received, ``Authorization`` headers seen, payloads, and the largest number
of requests it was serving at once::

    with LoopbackChatServer(lambda body, headers: "42") as server:
        client = ChatClient(server.endpoint, cache)
        ...
        assert server.max_in_flight <= 4

Used by tests/test_synth_openai.py, tests/test_eval_openai.py and scripts/bench_synth.py.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

Reply = str | tuple[int, dict, dict]


def chat_completion(text: str, model: str | None = None, usage: dict | None = None) -> dict:
    """The JSON body of a chat-completions reply whose message is ``text``."""
    body = {"id": "chatcmpl-loopback", "object": "chat.completion", "model": model,
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": text}}]}
    if usage is not None:
        body["usage"] = usage
    return body


class LoopbackChatServer:
    """Serves ``POST .../chat/completions`` with ``respond(body, headers) -> str | (status, headers, body)``."""

    def __init__(self, respond: Callable[[dict, dict], Reply], path: str = "/v1/chat/completions"):
        self.respond = respond
        self.path = path
        self.calls = 0
        self.auth: set[str | None] = set()
        self.payloads: list[dict] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.calls += 1
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                    server.auth.add(self.headers.get("Authorization"))
                    server.payloads.append(body)
                try:
                    if self.path != server.path:
                        status, headers, reply = 404, {}, {"error": {"message": f"no route {self.path}"}}
                    else:
                        answer = server.respond(body, dict(self.headers))
                        status, headers, reply = ((200, {}, chat_completion(answer, body.get("model")))
                                                  if isinstance(answer, str) else answer)
                    data = json.dumps(reply).encode()
                    self.send_response(status)
                    for key, value in headers.items():
                        self.send_header(key, value)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout)
                finally:
                    with server.lock:
                        server.in_flight -= 1

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> LoopbackChatServer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

"""A teacher large tier for the distillation tests: an OpenAI-compatible streaming chat server that
answers each known question in one fixed form. The bundled model is no teacher, and a test of
distillation needs answers whose form the small model does not already use."""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

_QUESTION = re.compile(r"Question:\s*(.+?)\s*$", re.S)
UNKNOWN = "The documents do not say."


class TeacherServer:
    """Streams ``answer(question, user_message)`` as chat-completion chunks; counts requests."""

    def __init__(self, answer: Callable[[str, str], str]) -> None:
        self.answer = answer
        self.requests = 0
        teacher = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                self._send_json({"object": "list", "data": [{"id": "teacher", "object": "model"}]})

            def do_POST(self) -> None:
                teacher.requests += 1
                body = json.loads(self.rfile.read(int(self.headers.get("content-length", "0"))))
                user = next(m["content"] for m in reversed(body["messages"]) if m["role"] == "user")
                match = _QUESTION.search(user)
                answer = teacher.answer(match.group(1) if match else "", user)
                self.send_response(200)
                self.send_header("content-type", "text/event-stream")
                self.send_header("connection", "close")
                self.end_headers()
                words = answer.split(" ")
                for i, word in enumerate(words):
                    self._event({"choices": [{"index": 0, "delta": {"content": word if i == 0 else " " + word}}]})
                self._event({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
                             "usage": {"prompt_tokens": len(user.split()), "completion_tokens": len(words)}})
                self.wfile.write(b"data: [DONE]\n\n")

            def _event(self, value: dict[str, Any]) -> None:
                self.wfile.write(b"data: " + json.dumps(value).encode() + b"\n\n")

            def _send_json(self, value: dict[str, Any]) -> None:
                data = json.dumps(value).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def __enter__(self) -> "TeacherServer":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

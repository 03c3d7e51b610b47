"""Real HTTP servers for the HTTP verifier tests: a scriptable jwks_uri (``http.server`` on a free
port, optionally over TLS) and an ASGI app served by uvicorn in a thread."""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import uvicorn

JWKS_PATH = "/.well-known/jwks.json"


@dataclass
class Reply:
    """What the jwks_uri answers: status, headers and body (a Content-Length is added unless
    ``close_delimited``, where the body ends when the connection closes)."""

    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=lambda: {"Content-Type": "application/json"})
    close_delimited: bool = False


Answer = Callable[[str, Mapping[str, str]], Reply]


class JwksServer:
    """``http.server`` on 127.0.0.1:0 in a thread. ``answer(path, request_headers)`` decides each
    reply (it may be replaced at any time); every request's path and headers are recorded."""

    def __init__(self, answer: Answer, *, tls: ssl.SSLContext | None = None) -> None:
        self.answer = answer
        self.requests: list[tuple[str, dict[str, str]]] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                headers = {k.lower(): v for k, v in self.headers.items()}
                owner.requests.append((self.path, headers))
                reply = owner.answer(self.path, headers)
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                if not reply.close_delimited and reply.status not in (204, 304):
                    self.send_header("Content-Length", str(len(reply.body)))
                self.end_headers()
                if reply.status not in (204, 304):
                    self.wfile.write(reply.body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.scheme = "http"
        if tls is not None:
            self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
            self.scheme = "https"
        self.port = int(self.httpd.server_address[1])
        # shutdown() waits for serve_forever's next poll: keep it short, or every test pays 0.5 s
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, name="jwks-http", daemon=True
        )

    def url(self, path: str = JWKS_PATH, host: str = "127.0.0.1") -> str:
        return f"{self.scheme}://{host}:{self.port}{path}"

    def __enter__(self) -> JwksServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(timeout=10)


def serving(document: str, **headers: str) -> Answer:
    """An answer that always serves ``document`` as JSON with the given extra headers."""
    reply_headers = {
        "Content-Type": "application/json",
        **{k.replace("_", "-"): v for k, v in headers.items()},
    }
    return lambda path, request: Reply(200, document.encode(), dict(reply_headers))


@contextmanager
def serve_asgi(app: Any) -> Iterator[str]:
    """``app`` behind uvicorn on a free port in a thread; yields its base URL. The socket listens
    before uvicorn starts, so requests may be sent at once (they queue in the backlog)."""
    sock = socket.create_server(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="uvicorn", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
        assert not thread.is_alive(), "uvicorn did not stop"

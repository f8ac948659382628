"""What every fake API server in tests/fakes shares: a real HTTP server on a free loopback
port in a daemon thread, a queue of scripted faults served one per request, and a count of
requests in flight (to check a client's concurrency). Each fake adds its wire format."""

from __future__ import annotations

import threading
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self


class LoopbackServer:
    NAME = "fake"  # names the serving thread
    FAULTS: tuple[str, ...] = ()  # the fault kinds ``script`` accepts

    def __init__(self) -> None:
        self.max_inflight = 0
        self._inflight = 0
        self._faults: deque[Any] = deque()
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        raise NotImplementedError

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> Self:
        handler = type("Handler", (self._handler_class(),), {"fake": self})
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self._httpd.block_on_close = False  # never wait for a handler sleeping in a fault
        self._thread = threading.Thread(target=self._httpd.serve_forever, name=self.NAME,
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._httpd is not None, "server not started"
        return int(self._httpd.server_address[1])

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- scripting ---------------------------------------------------------------------------

    def script(self, *faults: Any) -> None:
        """Queue behaviours for the next requests, one each; then normal service resumes.
        A fault is a kind, or ``(kind, seconds)``; ``slow`` always takes its seconds."""
        for fault in faults:
            kind = fault[0] if isinstance(fault, tuple) else fault
            if kind not in self.FAULTS or (kind == "slow" and not isinstance(fault, tuple)):
                raise ValueError(f"unknown fault {fault!r}; use one of {self.FAULTS}")
        with self._lock:
            self._faults.extend(faults)

    def _next_fault(self) -> Any:
        with self._lock:
            return self._faults.popleft() if self._faults else None

    def _enter(self) -> None:
        with self._lock:
            self._inflight += 1
            self.max_inflight = max(self.max_inflight, self._inflight)

    def _leave(self) -> None:
        with self._lock:
            self._inflight -= 1


class QuietHandler(BaseHTTPRequestHandler):
    """HTTP/1.1, no access log, GET and POST both to ``_handle(method)``: what every fake's
    handler starts from."""

    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
        pass

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def _handle(self, method: str) -> None:
        raise NotImplementedError


class JsonHandler(QuietHandler):
    """Reads a JSON body, records the request through the fake (``_begin``/``_end``), plays
    the transport faults (``drop``: close the connection; ``("slow", s)``: wait first) and
    leaves the answer to the subclass's ``_serve(method, headers, body, kind, arg)``."""

    fake: Any

    def _handle(self, method: str) -> None:
        import json
        import socket
        import time

        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        headers = {k.lower(): v for k, v in self.headers.items()}
        fault = self.fake._begin(method, self.path, headers, body)
        kind, arg = (fault if isinstance(fault, tuple) else (fault, None))
        try:
            if kind == "drop":
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            if kind == "slow":
                time.sleep(float(arg or 0))
            self._serve(method, headers, body, kind, arg)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (e.g. timeout)
            self.close_connection = True
        finally:
            self.fake._end()

    def _serve(self, method: str, headers: dict[str, str], body: Any, kind: Any,
               arg: Any) -> None:
        raise NotImplementedError

    def _send(self, status: int, payload: dict[str, Any] | bytes,
              headers: dict[str, str] | None = None) -> None:
        import json

        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

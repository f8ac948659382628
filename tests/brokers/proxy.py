"""A TCP proxy on loopback that can cut every connection and refuse new ones for a while:
a broker outage (or a restart) as the consumer sees it, the same way for every broker,
without stopping the machine's shared broker."""

from __future__ import annotations

import contextlib
import socket
import threading
import time


class OutageProxy:
    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self._target = (target_host, target_port)
        self._lock = threading.Lock()
        self._conns: list[socket.socket] = []
        self._listener = self._listen(0)
        self.port = self._listener.getsockname()[1]
        self._closed = False
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _listen(self, port: int) -> socket.socket:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        s.listen(64)
        s.settimeout(0.2)
        return s

    def _accept(self) -> None:
        while not self._closed:
            with self._lock:
                listener = self._listener
            try:
                client, _ = listener.accept()
            except (TimeoutError, OSError):
                continue
            try:
                upstream = socket.create_connection(self._target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            src.settimeout(None)
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()

    def outage(self, seconds: float) -> None:
        """Drop every connection and refuse new ones for ``seconds``, then accept again on
        the same port."""
        with self._lock:
            self._listener.close()
            conns, self._conns = self._conns, []
        for s in conns:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()
        time.sleep(seconds)
        with self._lock:
            self._listener = self._listen(self.port)

    def close(self) -> None:
        self._closed = True
        with self._lock:
            self._listener.close()
            for s in self._conns:
                s.close()

"""A TCP relay on 127.0.0.1 in front of a server, that a test can cut as if the server had stopped.

    with CuttableRelay(upstream_port) as relay:
        relay.cut_when(lambda head: head.startswith(b"PUT ") and b".safetensors" in head, outage_s=30)
        ... clients use f"http://127.0.0.1:{relay.port}" ...

Cut, it closes every open connection (a request in flight is reset) and stops listening, so a new one is refused,
as with a stopped server; after the outage it listens on the same port again. A trigger looks at the first bytes a
client sends on a connection (an HTTP request line and headers) and cuts before any of them are relayed.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable

HEAD_BYTES = 4096


class CuttableRelay:
    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = 0
        self.cuts: list[tuple[float, float]] = []  # (monotonic start, monotonic end) of each outage
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self._trigger: tuple[Callable[[bytes], bool], float] | None = None
        self._closed = False

    def __enter__(self) -> CuttableRelay:
        self._listen()
        return self

    def __exit__(self, *exc: object) -> None:
        self._closed = True
        self._close_all()

    def cut_when(self, matches: Callable[[bytes], bool], outage_s: float) -> None:
        """Cut once, for `outage_s`, at the first connection whose first bytes `matches`."""
        self._trigger = (matches, outage_s)

    def cut(self, outage_s: float) -> None:
        """Close everything now and refuse connections for `outage_s`, then listen again."""
        started = time.monotonic()
        self._close_all()

        def restore() -> None:
            time.sleep(outage_s)
            if not self._closed:
                self.cuts.append((started, time.monotonic()))
                self._listen()

        threading.Thread(target=restore, daemon=True).start()

    def _listen(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.port = listener.getsockname()[1]
        with self._lock:
            self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # closed by a cut or at the end
            threading.Thread(target=self._relay, args=(client,), daemon=True).start()

    def _relay(self, client: socket.socket) -> None:
        try:
            head = client.recv(HEAD_BYTES)
        except OSError:
            client.close()
            return
        trigger = self._trigger
        if trigger is not None and head and trigger[0](head):
            self._trigger = None
            client.close()
            self.cut(trigger[1])
            return
        try:
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
        except OSError:
            client.close()
            return
        with self._lock:
            self._open |= {client, upstream}
        upstream.sendall(head)
        threading.Thread(target=self._pipe, args=(upstream, client), daemon=True).start()
        self._pipe(client, upstream)

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                with self._lock:
                    self._open.discard(end)
                try:
                    end.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                end.close()

    def _close_all(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
            open_sockets, self._open = set(self._open), set()
        if listener is not None:
            # A close alone leaves a thread blocked in accept() listening: shutdown() wakes it and stops listening.
            try:
                listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            listener.close()
        for sock in open_sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

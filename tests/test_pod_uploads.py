"""The pod agent's uploads through a store outage: waited out within the job's patience, sent whole, never twice
once answered; a refused URL is not tried again. A PUT server on 127.0.0.1 behind a relay that a test cuts."""

from __future__ import annotations

import threading
import time
import urllib.error
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from likeness.training.pod import upload
from tests.tcp_cut import CuttableRelay


class PutServer(ThreadingHTTPServer):
    """Keeps the body of every whole PUT by path; answers 403 under /expired/."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _PutHandler)
        self.stored: dict[str, list[bytes]] = {}


class _PutHandler(BaseHTTPRequestHandler):
    server: PutServer

    def do_PUT(self) -> None:  # noqa: N802  (the name http.server calls)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.path.startswith("/expired/"):
            self.send_response(403)
        else:
            self.server.stored.setdefault(self.path, []).append(body)
            self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def store() -> Iterator[tuple[PutServer, CuttableRelay]]:
    server = PutServer()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    with CuttableRelay(server.server_address[1]) as relay:
        yield server, relay
    server.shutdown()
    server.server_close()


def test_a_checkpoint_upload_cut_by_an_outage_goes_up_whole_once_the_store_is_back(store, tmp_path: Path):
    server, relay = store
    checkpoint = tmp_path / "Ada_000000003.safetensors"
    checkpoint.write_bytes(bytes(range(256)) * 4096)
    relay.cut_when(lambda head: head.startswith(b"PUT /out/Ada_000000003"), outage_s=5)

    upload(f"http://127.0.0.1:{relay.port}/out/Ada_000000003.safetensors", path=checkpoint, patience_s=30)

    ((started, ended),) = relay.cuts
    assert ended - started >= 5
    assert server.stored == {"/out/Ada_000000003.safetensors": [checkpoint.read_bytes()]}


def test_an_outage_longer_than_the_patience_ends_the_upload_with_its_error(store):
    _, relay = store
    relay.cut(outage_s=30)
    started = time.monotonic()
    with pytest.raises(urllib.error.URLError):
        upload(f"http://127.0.0.1:{relay.port}/progress-0.json", data=b"{}", patience_s=2.5)
    assert time.monotonic() - started < 10


def test_a_refused_url_is_not_tried_again(store):
    server, relay = store
    started = time.monotonic()
    with pytest.raises(urllib.error.HTTPError, match="403"):
        upload(f"http://127.0.0.1:{relay.port}/expired/log-0.txt", data=b"log", patience_s=30)
    assert time.monotonic() - started < 5 and server.stored == {}  # no wait: the patience is 30 s

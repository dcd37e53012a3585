"""One run per character at a time: a lease in the artifact store, renewed while the run works.

A run of a character takes `leases/<key>.json` before its first stage, where the key is a digest of all that
decides the work (the character, its photo's bytes, the profile and settings, the flow). A second run with the
same key, on this machine or another that shares the store, stops at once and names the run that holds it. The
holder renews the lease every quarter of `ttl_s` and removes it when it ends; a holder that died (SIGKILL, a lost
machine) leaves a lease that expires after `ttl_s`, so it never blocks for longer, and on the holder's own machine
a lease whose process is gone is taken over at once.

S3 has no create-if-absent the store can rely on, so taking is write, wait, read back: of two runs that write
within the wait, both read the later write, and only its writer goes on (a second on S3, where writes from
other machines take a while to land; a tenth on a local store, whose writes are renames).

    with held(store, lease_key({"character": "Ada", ...}), "flow run brave-fox", "Ada"):
        ...  # the stages
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from likeness.inputs import InvalidInput
from likeness.storage.local import LocalStore
from likeness.storage.store import ArtifactStore, MissingObject, StoreError

LEASES_PREFIX = "leases/"
LEASE_TTL_S = 120.0
SETTLE_S = {"local": 0.1, "s3": 1.0}


class CharacterBusy(InvalidInput):
    """Another run is making this character with the same inputs; this one stops before any work."""


def lease_key(work: dict[str, Any]) -> str:
    """The store key of the lease on this work: a digest of what decides it (JSON-able)."""
    digest = hashlib.sha256(json.dumps(work, sort_keys=True, default=str).encode()).hexdigest()[:32]
    return f"{LEASES_PREFIX}{digest}.json"


def _read(store: ArtifactStore, key: str) -> dict[str, Any] | None:
    try:
        return json.loads(store.get_bytes(key))
    except (MissingObject, ValueError):
        return None


def _write(store: ArtifactStore, key: str, token: str, holder: str, since: float, ttl_s: float) -> None:
    record = {
        "token": token,
        "holder": holder,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "since": since,
        "expires": time.time() + ttl_s,
    }
    store.put_bytes(key, json.dumps(record).encode(), "application/json")


def _is_live(lease: dict[str, Any]) -> bool:
    """Not expired, and, when it was taken on this machine, its process still running."""
    if lease["expires"] <= time.time():
        return False
    if lease.get("host") != socket.gethostname():
        return True
    try:
        os.kill(lease["pid"], 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process, running
    return True


def _busy(lease: dict[str, Any], what: str) -> CharacterBusy:
    since = datetime.fromtimestamp(lease["since"], UTC).strftime("%H:%M:%S UTC")
    left = max(0, round(lease["expires"] - time.time()))
    where = f" on {lease['host']} (pid {lease['pid']})" if "host" in lease else ""
    return CharacterBusy(
        f"{what} is being made by {lease['holder']}{where} since {since}, with the same inputs: this run stops; "
        f"run it again when that one has ended (its lease expires in {left} s unless it is still working)"
    )


@contextmanager
def held(store: ArtifactStore, key: str, holder: str, what: str, ttl_s: float = LEASE_TTL_S) -> Iterator[None]:
    """Hold the lease `key` for the block; CharacterBusy (naming `what` and the holder) if another run holds it."""
    lease = _read(store, key)
    if lease is not None and _is_live(lease):
        raise _busy(lease, what)
    token, since = uuid.uuid4().hex, time.time()
    _write(store, key, token, holder, since, ttl_s)
    time.sleep(SETTLE_S["local" if isinstance(store, LocalStore) else "s3"])
    lease = _read(store, key)
    if lease is None or lease["token"] != token:
        raise _busy(lease or {"holder": "another run", "since": since, "expires": since + ttl_s}, what)
    ended = threading.Event()

    def renew() -> None:
        while not ended.wait(ttl_s / 4):
            try:
                _write(store, key, token, holder, since, ttl_s)
            except StoreError:
                pass  # a store down for a moment: the next renewal, a quarter of the lease later, tries again

    renewer = threading.Thread(target=renew, name=f"lease {key}", daemon=True)
    renewer.start()
    try:
        yield
    finally:
        ended.set()
        renewer.join()
        lease = _read(store, key)
        if lease is not None and lease["token"] == token:
            store.delete(key)

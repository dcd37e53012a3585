"""A store that heals: corrupt copies are caught, moved aside and made again, on LocalStore and S3Store."""

from __future__ import annotations

import hashlib
import io
import logging
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from likeness.storage import artifacts
from likeness.storage.artifacts import ArtifactRef, get_bytes, put_bytes, put_file
from likeness.storage.caching import artifact_refs, stage_cache, stale_artifact
from likeness.storage.local import LocalStore, _Sidecar
from likeness.storage.s3 import S3Store
from likeness.storage.store import ArtifactStore, CorruptObject, MissingObject, StoreError
from tests.test_store import _s3_store

GOOD = b"the bytes a stage made" * 50


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ArtifactStore:
    if request.param == "local":
        return LocalStore(tmp_path / "store")
    return _s3_store(request.getfixturevalue("s3_server"))


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def corrupt(store: ArtifactStore, key: str, data: bytes, keep_hash: bool) -> None:
    """Replace the bytes under `key` behind the store's back.

    keep_hash=False: the store can tell (a stale sidecar locally, no sha256 metadata on S3), so info() hashes
    the new bytes. keep_hash=True: the store still vouches for the old sha256, as after bit rot.
    """
    old = store.info(key).sha256
    if isinstance(store, LocalStore):
        path = store.root / "objects" / key
        path.write_bytes(data)
        if keep_hash:
            st = path.stat()
            sidecar = _Sidecar(sha256=old, size=st.st_size, mtime_ns=st.st_mtime_ns, inode=st.st_ino)
            (store.root / "meta" / key).write_text(sidecar.model_dump_json())
    else:
        assert isinstance(store, S3Store)
        metadata = {"sha256": old} if keep_hash else None
        store._client.put_object(store.bucket, store._name(key), io.BytesIO(data), len(data), metadata=metadata)


def flip_a_byte(data: bytes) -> bytes:
    return data[:10] + bytes([data[10] ^ 1]) + data[11:]


def count_calls(monkeypatch: pytest.MonkeyPatch, store: ArtifactStore, method: str) -> list[Any]:
    """Record each call of `store.<method>` (still made) in the returned list."""
    calls: list[Any] = []
    real: Callable[..., Any] = getattr(store, method)

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(store, method, counted)
    return calls


class WarningList(logging.Handler):
    """Keeps the messages of WARNING and worse records sent to the logger it is added to."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def warnings_of() -> Iterator[Callable[[str], list[str]]]:
    """The warnings a named logger sends during the test.

    The handler sits on that logger, not on the root: a Prefect run replaces the root's handlers, caplog's among them.
    """
    added: list[tuple[logging.Logger, WarningList]] = []

    def collect(name: str) -> list[str]:
        handler = WarningList()
        logger = logging.getLogger(name)
        logger.addHandler(handler)
        added.append((logger, handler))
        return handler.messages

    yield collect
    for logger, handler in added:
        logger.removeHandler(handler)


# --- reads: detect, move aside, say so ------------------------------------------------------------


@pytest.mark.parametrize("keep_hash", [False, True], ids=["stale-hash", "store-vouches"])
def test_get_bytes_moves_a_corrupt_copy_aside(store: ArtifactStore, keep_hash: bool) -> None:
    ref = put_bytes(GOOD, "front.png", store)
    bad = b"garbage"
    corrupt(store, ref.key, bad, keep_hash)

    with pytest.raises(CorruptObject) as caught:
        get_bytes(ref, store)

    error = caught.value
    assert isinstance(error, StoreError)
    assert (error.key, error.uri, error.expected_sha256, error.actual_sha256) == (
        ref.key,
        store.uri,
        ref.sha256,
        sha(bad),
    )
    assert error.moved_to is not None and error.moved_to.startswith("corrupt/")
    message = str(error)
    assert "\n" not in message
    for part in (repr(ref.key), store.uri, repr(error.moved_to), ref.sha256[:12], sha(bad)[:12], "will run again"):
        assert part in message
    assert not store.exists(ref.key)
    assert store.get_bytes(error.moved_to) == bad
    with pytest.raises(MissingObject):
        get_bytes(ref, store)

    assert put_bytes(GOOD, "front.png", store) == ref  # what the stage does when it runs again
    assert get_bytes(ref, store) == GOOD


def test_get_bytes_hashes_the_bytes_even_when_the_store_vouches_for_them(store: ArtifactStore) -> None:
    ref = put_bytes(GOOD, "lora.safetensors", store)
    rotten = flip_a_byte(GOOD)
    corrupt(store, ref.key, rotten, keep_hash=True)
    assert (store.info(ref.key).sha256, store.info(ref.key).size) == (ref.sha256, ref.size)
    assert store.get_bytes(ref.key) == rotten  # the store itself does not check; artifacts.get_bytes must

    with pytest.raises(CorruptObject) as caught:
        get_bytes(ref, store)
    assert caught.value.actual_sha256 == sha(rotten)


def test_corrupt_object_message_when_another_reader_moved_it() -> None:
    error = CorruptObject("sha256/ab/front.png", "file:///s", "ab" * 32, "9f" * 32, None)
    assert str(error) == (
        "object 'sha256/ab/front.png' in file:///s does not match its sha256 (expected abababababab..., found "
        "9f9f9f9f9f9f...): another reader already moved it aside; the stage that made it will run again"
    )


def test_concurrent_readers_of_a_corrupt_object(store: ArtifactStore) -> None:
    ref = put_bytes(GOOD, "side.png", store)
    corrupt(store, ref.key, b"garbage", keep_hash=False)
    readers = 8
    barrier = threading.Barrier(readers)

    def read() -> Exception | None:
        barrier.wait()
        try:
            get_bytes(ref, store)
        except (CorruptObject, MissingObject) as error:
            return error
        return None

    with ThreadPoolExecutor(readers) as pool:
        outcomes = list(pool.map(lambda _: read(), range(readers)))

    assert all(isinstance(outcome, CorruptObject | MissingObject) for outcome in outcomes)
    moved = [o.moved_to for o in outcomes if isinstance(o, CorruptObject) and o.moved_to]
    assert moved
    assert not store.exists(ref.key)
    assert set(moved) <= set(store.list("corrupt/"))
    assert all(store.get_bytes(key) == b"garbage" for key in moved)


# --- puts: replace what is bad, leave what is good --------------------------------------------------


def test_put_replaces_a_corrupt_copy(
    store: ArtifactStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, warnings_of: Callable[[str], list[str]]
) -> None:
    source = tmp_path / "lora.safetensors"
    source.write_bytes(GOOD)
    ref = put_file(source, store=store)
    assert put_bytes(GOOD, "lora.safetensors", store) == ref
    puts = count_calls(monkeypatch, store, "put_bytes")
    file_puts = count_calls(monkeypatch, store, "put_file")
    warnings = warnings_of("likeness.storage.artifacts")

    for put in (lambda: put_bytes(GOOD, "lora.safetensors", store), lambda: put_file(source, store=store)):
        corrupt(store, ref.key, flip_a_byte(GOOD), keep_hash=False)
        assert put() == ref
        assert get_bytes(ref, store) == GOOD
        assert repr(ref.key) in warnings[-1] and "moved it aside to 'corrupt/" in warnings[-1]

    assert (len(puts), len(file_puts), len(warnings)) == (1, 1, 2)
    aside = store.list("corrupt/")
    assert len(aside) == 2 and all(store.get_bytes(key) == flip_a_byte(GOOD) for key in aside)


def test_put_leaves_an_intact_copy_alone(store: ArtifactStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = tmp_path / "front.png"
    source.write_bytes(GOOD)
    ref = put_file(source, store=store)
    puts = count_calls(monkeypatch, store, "put_bytes")
    file_puts = count_calls(monkeypatch, store, "put_file")
    moves = count_calls(monkeypatch, store, "move_aside")
    before = os.stat(store.root / "objects" / ref.key) if isinstance(store, LocalStore) else None

    assert put_bytes(GOOD, "front.png", store) == ref
    assert put_file(source, store=store) == ref

    assert (puts, file_puts, moves) == ([], [], [])
    if before is not None:
        after = os.stat(store.root / "objects" / ref.key)
        assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert store.list() == [ref.key]


# --- cache records: trusted only as far as their artifacts hold ------------------------------------


def test_artifact_refs_finds_every_reference_once() -> None:
    a = ArtifactRef(key="sha256/a/x.png", sha256="a" * 64, size=1)
    b = ArtifactRef(key="sha256/b/y.png", sha256="b" * 64, size=2)
    value = {
        "reference": a,
        "items": ({"image": b, "caption": "x"}, {"image": a.model_dump(), "extra": 1}),
        "look_alike": {"key": 1, "sha256": None, "size": "big"},
        "opaque": object(),
    }
    assert artifact_refs(value) == [a, b]
    assert artifact_refs("a caption") == []


def test_stale_artifact_asks_info_and_never_downloads(store: ArtifactStore, monkeypatch: pytest.MonkeyPatch) -> None:
    refs = [put_bytes(GOOD, "a.png", store), put_bytes(b"second", "b.png", store)]
    infos = count_calls(monkeypatch, store, "info")
    downloads = count_calls(monkeypatch, store, "get_bytes") + count_calls(monkeypatch, store, "get_file")
    assert stale_artifact(refs, store) is None
    assert len(infos) == 2

    corrupt(store, refs[1].key, b"garbage", keep_hash=False)
    assert stale_artifact(refs, store) == (
        f"object {refs[1].key!r} in {store.uri} hashes to {sha(b'garbage')[:12]}..., not {refs[1].sha256[:12]}..."
    )
    store.delete(refs[0].key)
    assert stale_artifact(refs, store) == f"object {refs[0].key!r} is missing from {store.uri}"
    assert downloads == []


@pytest.mark.parametrize("damage", ["deleted", "corrupted"])
def test_a_cached_stage_runs_again_when_its_artifact_is_gone(
    damage: str,
    likeness_env: Path,
    prefect_api: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    warnings_of: Callable[[str], list[str]],
) -> None:
    from prefect import flow, task
    from prefect.settings import PREFECT_API_URL, PREFECT_RESULTS_LOCAL_STORAGE_PATH, temporary_settings

    calls: list[str] = []

    @task(name="heal-probe", cache_policy=stage_cache(1), persist_result=True, result_serializer="json")
    def make_artifact(text: str) -> ArtifactRef:
        calls.append(text)
        return put_bytes(text.encode(), "probe.txt")

    @flow
    def probe_flow():
        return make_artifact("hello", return_state=True)

    store = artifacts.get_store()
    warnings = warnings_of("likeness.storage.caching")
    settings = {PREFECT_API_URL: prefect_api, PREFECT_RESULTS_LOCAL_STORAGE_PATH: tmp_path / "results"}
    with temporary_settings(settings):
        first = probe_flow()
        infos = count_calls(monkeypatch, store, "info")
        downloads = count_calls(monkeypatch, store, "get_bytes") + count_calls(monkeypatch, store, "get_file")
        second = probe_flow()
        assert (second.name, len(calls), len(infos), downloads) == ("Cached", 1, 1, [])

        ref = first.result()
        if damage == "deleted":
            store.delete(ref.key)
        else:
            corrupt(store, ref.key, b"garbage", keep_hash=False)
        third = probe_flow()
        fourth = probe_flow()

    assert first.name == "Completed"
    assert third.is_completed() and third.name == "Completed"
    assert calls == ["hello", "hello"]
    assert third.result() == ref and get_bytes(ref) == b"hello"
    assert fourth.name == "Cached"  # the fresh record is trusted again
    [warning] = warnings
    assert "'heal-probe'" in warning and repr(ref.key) in warning and "running the stage again" in warning
    if damage == "corrupted":  # put_bytes found the bad copy when the stage ran again, and kept it
        assert [store.get_bytes(key) for key in store.list("corrupt/")] == [b"garbage"]

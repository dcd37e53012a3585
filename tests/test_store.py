"""The artifact store: one behaviour suite run over LocalStore and S3Store (a real SeaweedFS)."""

from __future__ import annotations

import hashlib
import os
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from urllib.request import url2pathname

import pytest

import likeness.storage.local as store_module
from likeness.storage.artifacts import open_store
from likeness.storage.local import LocalStore
from likeness.storage.s3 import S3Store
from likeness.storage.store import ArtifactStore, InvalidKey, MissingObject, ObjectInfo, StoreError, validate_key
from tests.s3server import S3ServerInfo  # the `s3_server` fixture comes from conftest.py

BAD_KEYS = ["", "/abs", "a//b", "..", "a/../b", "./a", "a/.", "a\\b", "a\x00b", "a\nb", "a/", "x" * 1025]


def _s3_store(server: S3ServerInfo, prefix: str = "") -> S3Store:
    bucket = f"t-{uuid.uuid4().hex[:16]}"  # a fresh bucket per test
    return S3Store(server.endpoint, server.access_key, server.secret_key, bucket=bucket, prefix=prefix)


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ArtifactStore:
    if request.param == "local":
        return LocalStore(tmp_path / "store")
    # Looked up lazily so `-k local` never starts the server.
    return _s3_store(request.getfixturevalue("s3_server"))


@pytest.fixture
def s3(s3_server: S3ServerInfo) -> S3Store:
    return _s3_store(s3_server, prefix="runs/7")


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- behaviour shared by both stores ------------------------------------------------------------


def test_put_get_bytes(store: ArtifactStore) -> None:
    data = os.urandom(1000)
    put = store.put_bytes("images/a.png", data, content_type="image/png")
    assert put == ObjectInfo(key="images/a.png", size=1000, sha256=sha(data))
    assert store.get_bytes("images/a.png") == data
    assert store.info("images/a.png") == put
    assert store.put_bytes("empty", b"").sha256 == sha(b"")
    assert store.get_bytes("empty") == b""


def test_put_get_file(store: ArtifactStore, tmp_path: Path) -> None:
    data = os.urandom(6 * 1024 * 1024 + 123)  # over minio's 5 MiB part size: a multipart upload on S3
    src = tmp_path / "lora.safetensors"
    src.write_bytes(data)
    put = store.put_file("loras/x/lora.safetensors", src)
    assert put == ObjectInfo(key="loras/x/lora.safetensors", size=len(data), sha256=sha(data))
    assert store.info("loras/x/lora.safetensors").sha256 == sha(data)
    dest = tmp_path / "out" / "deep" / "copy.safetensors"
    assert store.get_file("loras/x/lora.safetensors", dest) == dest
    assert dest.read_bytes() == data
    assert sorted(p.name for p in dest.parent.iterdir()) == ["copy.safetensors"]  # no temp litter


def test_exists_and_list(store: ArtifactStore) -> None:
    assert store.list() == []
    for key in ["b/2", "a/1", "a/sub/3", "ab", "c"]:
        store.put_bytes(key, key.encode())
    assert store.exists("a/1")
    assert not store.exists("a")  # a prefix is not an object
    assert not store.exists("nope")
    assert store.list() == ["a/1", "a/sub/3", "ab", "b/2", "c"]  # sorted; no sidecars
    assert store.list("a/") == ["a/1", "a/sub/3"]
    assert store.list("a") == ["a/1", "a/sub/3", "ab"]  # a plain string prefix, as in S3
    assert store.list("a/s") == ["a/sub/3"]
    assert store.list("zzz/") == []


def test_overwrite_replaces_bytes_and_hash(store: ArtifactStore) -> None:
    store.put_bytes("k", b"old")
    info = store.put_bytes("k", b"newer")
    assert info == ObjectInfo(key="k", size=5, sha256=sha(b"newer"))
    assert store.get_bytes("k") == b"newer"
    assert store.info("k") == info
    assert store.list() == ["k"]


def test_delete(store: ArtifactStore) -> None:
    store.put_bytes("d/x", b"1")
    store.delete("d/x")
    assert not store.exists("d/x")
    assert store.list() == []
    store.delete("d/x")  # deleting a missing key is fine, as in S3


def test_move_aside(store: ArtifactStore) -> None:
    store.put_bytes("img/a.png", b"bad bytes")
    store.put_bytes("img/b.png", b"other")
    moved_to = store.move_aside("img/a.png")
    assert moved_to.startswith("corrupt/") and moved_to.endswith("/img/a.png")
    assert not store.exists("img/a.png")
    assert store.list("img/") == ["img/b.png"]
    assert store.list("corrupt/") == [moved_to]
    assert store.get_bytes(moved_to) == b"bad bytes"  # kept for inspection
    assert store.info(moved_to).sha256 == sha(b"bad bytes")  # the hash of what is there, not a stored one
    with pytest.raises(MissingObject):
        store.move_aside("img/a.png")
    with pytest.raises(MissingObject):
        store.move_aside("img")  # a prefix is not an object
    assert store.list("img/") == ["img/b.png"]
    assert store.put_bytes("img/a.png", b"good").sha256 == sha(b"good")  # the key is free again
    assert store.move_aside("img/a.png") != moved_to


def test_missing_key(store: ArtifactStore, tmp_path: Path) -> None:
    dest = tmp_path / "dl" / "f.bin"
    calls = [store.get_bytes, store.info, store.move_aside, lambda key: store.get_file(key, dest)]
    for call in calls:
        with pytest.raises(MissingObject) as caught:
            call("no/such.png")
        assert "'no/such.png'" in str(caught.value)
        assert store.uri in str(caught.value)
    assert not dest.exists()
    assert not dest.parent.exists() or list(dest.parent.iterdir()) == []


def test_presigned_get(store: ArtifactStore) -> None:
    store.put_bytes("v/clip.mp4", b"video bytes")
    url = store.presigned_url("v/clip.mp4", expires=timedelta(minutes=5))
    with urllib.request.urlopen(url) as response:  # file:// for LocalStore, http:// for S3
        assert response.read() == b"video bytes"


# --- key validation: InvalidKey before any I/O -------------------------------------------------


@pytest.mark.parametrize("key", ["a", "a/b.png", "objects/ab12/x y.safetensors", ".hidden/é", "a..b/c"])
def test_validate_key_accepts(key: str) -> None:
    assert validate_key(key) == key


@pytest.mark.parametrize("key", BAD_KEYS)
def test_validate_key_rejects(key: str) -> None:
    with pytest.raises(InvalidKey) as caught:
        validate_key(key)
    assert repr(key)[:40] in str(caught.value)
    assert isinstance(caught.value, ValueError)


class _Tripwire:
    """Stands in for the minio client: any use of it means I/O happened."""

    def __getattr__(self, name: str) -> object:
        raise AssertionError(f"I/O attempted: client.{name}")


@pytest.mark.parametrize("kind", ["local", "s3"])
@pytest.mark.parametrize("key", BAD_KEYS)
def test_bad_keys_rejected_before_io(kind: str, key: str, tmp_path: Path) -> None:
    if kind == "local":
        store: ArtifactStore = LocalStore(tmp_path / "store")
    else:
        store = S3Store("127.0.0.1:9", "ak", "sk", bucket="never-used", create_bucket=False)
        store._client = _Tripwire()  # type: ignore[assignment]
    src = tmp_path / "src.bin"
    src.write_bytes(b"x")
    calls = [
        lambda: store.put_bytes(key, b"x"),
        lambda: store.put_file(key, src),
        lambda: store.get_bytes(key),
        lambda: store.get_file(key, tmp_path / "dest"),
        lambda: store.exists(key),
        lambda: store.info(key),
        lambda: store.presigned_url(key),
        lambda: store.delete(key),
        lambda: store.move_aside(key),
    ]
    for call in calls:
        with pytest.raises(InvalidKey):
            call()
    if key not in ("", "a/"):  # as list prefixes, '' and 'a/' are fine
        with pytest.raises(InvalidKey):
            store.list(key)
    assert not (tmp_path / "dest").exists()
    if isinstance(store, LocalStore):
        assert [p for p in (tmp_path / "store").rglob("*") if p.is_file()] == []


# --- LocalStore specifics ------------------------------------------------------------------------


def test_local_failed_write_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = LocalStore(tmp_path / "store")
    store.put_bytes("img.png", b"version 1")

    def broken_reader(path: Path) -> Iterator[bytes]:
        yield b"half of the "
        raise OSError("disk on fire")

    monkeypatch.setattr(store_module, "_read_chunks", broken_reader)
    src = tmp_path / "src.png"
    src.write_bytes(b"whatever")
    for key in ["img.png", "other.png"]:
        with pytest.raises(OSError, match="disk on fire"):
            store.put_file(key, src)
    monkeypatch.undo()
    assert store.list() == ["img.png"]
    assert not store.exists("other.png")
    assert store.get_bytes("img.png") == b"version 1"
    assert store.info("img.png").sha256 == sha(b"version 1")
    assert list((tmp_path / "store" / "tmp").iterdir()) == []  # no temp litter
    assert not (tmp_path / "store" / "meta" / "other.png").exists()


def test_local_layout_and_sidecar(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    store.put_bytes("a/b.txt", b"hello")
    assert (tmp_path / "store" / "objects" / "a" / "b.txt").read_bytes() == b"hello"
    assert sha(b"hello") in (tmp_path / "store" / "meta" / "a" / "b.txt").read_text()
    assert store.uri == (tmp_path / "store").resolve().as_uri()


def test_local_info_rehashes_bytes_written_behind_its_back(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    store.put_bytes("x.bin", b"original")
    url = store.presigned_url("x.bin", method="PUT")
    assert url.startswith("file://")
    Path(url2pathname(url.removeprefix("file://"))).write_bytes(b"replaced through the URL")
    assert store.info("x.bin").sha256 == sha(b"replaced through the URL")


def test_local_move_aside_drops_the_sidecar(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    store.put_bytes("a/b.txt", b"hello")
    moved_to = store.move_aside("a/b.txt")
    assert (tmp_path / "store" / "objects" / moved_to).read_bytes() == b"hello"
    assert not (tmp_path / "store" / "meta" / "a" / "b.txt").exists()
    assert not (tmp_path / "store" / "meta" / moved_to).exists()


def test_local_key_and_prefix_conflict(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    store.put_bytes("a/b", b"1")
    with pytest.raises(StoreError, match="prefix of existing keys"):
        store.put_bytes("a", b"2")
    store.put_bytes("c", b"3")
    with pytest.raises(StoreError, match="parent is an existing object"):
        store.put_bytes("c/d", b"4")
    assert store.list() == ["a/b", "c"]


# --- S3Store specifics ---------------------------------------------------------------------------


def test_s3_prefix_is_hidden_from_keys(s3: S3Store, s3_server: S3ServerInfo) -> None:
    s3.put_bytes("img/1.png", b"1")
    assert s3.uri == f"s3://{s3.bucket}/runs/7"
    assert s3.list() == ["img/1.png"]
    whole_bucket = S3Store(s3_server.endpoint, s3_server.access_key, s3_server.secret_key, bucket=s3.bucket)
    assert whole_bucket.list() == ["runs/7/img/1.png"]
    assert whole_bucket.info("runs/7/img/1.png").sha256 == sha(b"1")


def test_s3_presigned_put(s3: S3Store) -> None:
    url = s3.presigned_url("up/load.bin", method="PUT", expires=timedelta(minutes=5))
    request = urllib.request.Request(url, data=b"uploaded by a pod", method="PUT")
    with urllib.request.urlopen(request) as response:
        assert response.status == 200
    assert s3.get_bytes("up/load.bin") == b"uploaded by a pod"
    # No sha256 metadata came with the upload: info() hashes the object itself.
    assert s3.info("up/load.bin").sha256 == sha(b"uploaded by a pod")


def test_s3_presigned_expiry_bounds(s3: S3Store) -> None:
    with pytest.raises(StoreError, match="between 1 s and 7 days"):
        s3.presigned_url("k", expires=timedelta(days=8))


def test_s3_secret_never_shown(s3_server: S3ServerInfo) -> None:
    secret = s3_server.secret_key
    good = _s3_store(s3_server)
    with pytest.raises(MissingObject) as missing:
        good.get_bytes("nope")
    wrong_secret = "WRONG-" + secret
    with pytest.raises(StoreError) as denied:
        S3Store(s3_server.endpoint, s3_server.access_key, wrong_secret, bucket="t-denied")
    assert "SignatureDoesNotMatch" in str(denied.value)
    bad = S3Store(s3_server.endpoint, s3_server.access_key, wrong_secret, bucket="t-denied", create_bucket=False)
    shown = [repr(good), good.uri, str(missing.value), str(denied.value), repr(bad), bad.uri, repr(s3_server)]
    for text in shown:
        assert secret not in text


# --- open_store ----------------------------------------------------------------------------------


def test_open_store_local(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    by_uri = open_store((tmp_path / "s1").as_uri())
    assert isinstance(by_uri, LocalStore) and by_uri.root == tmp_path / "s1"
    by_path = open_store(str(tmp_path / "s2"))
    assert isinstance(by_path, LocalStore) and by_path.uri == (tmp_path / "s2").as_uri()
    monkeypatch.chdir(tmp_path)
    assert open_store("rel/store").uri == (tmp_path / "rel" / "store").as_uri()


def test_open_store_s3(s3_server: S3ServerInfo) -> None:
    keys = {"access_key": s3_server.access_key, "secret_key": s3_server.secret_key}
    opened = open_store("s3://t-opened/some/prefix/", endpoint=s3_server.endpoint, **keys)
    assert isinstance(opened, S3Store)
    assert (opened.bucket, opened.prefix, opened.uri) == ("t-opened", "some/prefix", "s3://t-opened/some/prefix")
    opened.put_bytes("k", b"v")
    assert opened.list() == ["k"]


def test_s3_endpoint_scheme_decides_tls() -> None:
    keys = {"access_key": "ak", "secret_key": "sk"}
    https = S3Store("https://127.0.0.1:9", bucket="b-x", create_bucket=False, **keys)
    plain = S3Store("127.0.0.1:9", bucket="b-x", create_bucket=False, **keys)
    assert (https.endpoint, plain.endpoint) == ("https://127.0.0.1:9", "http://127.0.0.1:9")


@pytest.mark.parametrize(
    ("uri", "kwargs", "message"),
    [
        ("s3://bucket/p", {}, "needs endpoint, access_key, secret_key"),
        ("s3://bucket", {"endpoint": "http://127.0.0.1:9", "access_key": "ak"}, "needs secret_key"),
        ("s3:///p", {}, "names no bucket"),
        ("s3://ak:TOPSECRET@bucket/p", {}, "credentials inside an s3:// URI"),
        ("gs://bucket/p", {}, "unsupported store URI"),
        ("file://otherhost/x", {}, "names a host"),
    ],
)
def test_open_store_errors(uri: str, kwargs: dict[str, str], message: str) -> None:
    with pytest.raises(StoreError, match=message) as caught:
        open_store(uri, **kwargs)
    assert "TOPSECRET" not in str(caught.value)

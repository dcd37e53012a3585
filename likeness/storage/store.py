"""The artifact store: big bytes (images, LoRAs, videos) live here, everything else passes keys.

One interface, `ArtifactStore`, with two implementations: `LocalStore` (a folder, `likeness.storage.local`)
and `S3Store` (any S3-compatible server through the minio SDK, `likeness.storage.s3`). Every object carries
the sha256 of its bytes, computed on put and returned by `info()`. Keys are '/'-separated relative paths,
checked by `validate_key` before any I/O. `open_store` (`likeness.storage.artifacts`) builds either from a
URI. Keys under `corrupt/` are reserved: `move_aside` keeps bad copies there for inspection.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import unicodedata
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Literal

from pydantic import BaseModel

if TYPE_CHECKING:
    import urllib3

CHUNK_SIZE = 1024 * 1024
MAX_KEY_BYTES = 1024  # the S3 limit; LocalStore keeps it too so keys move between stores
CORRUPT_PREFIX = "corrupt/"


class StoreError(Exception):
    """Anything the artifact store cannot do, with a message naming the key and the store."""


class InvalidKey(StoreError, ValueError):
    """A key that is not a clean '/'-separated relative path."""


class MissingObject(StoreError, KeyError):
    """No object under this key."""

    def __init__(self, key: str, uri: str) -> None:
        super().__init__(key, uri)
        self.key = key
        self.uri = uri

    def __str__(self) -> str:
        return f"no object {self.key!r} in {self.uri}"


class CorruptObject(StoreError):
    """An object whose bytes do not hash to the sha256 it was stored under, found on read and moved aside.

    `moved_to` is the key it went to, or None when a concurrent reader moved it first.
    """

    def __init__(self, key: str, uri: str, expected_sha256: str, actual_sha256: str, moved_to: str | None) -> None:
        super().__init__(key, uri, expected_sha256, actual_sha256, moved_to)
        self.key = key
        self.uri = uri
        self.expected_sha256 = expected_sha256
        self.actual_sha256 = actual_sha256
        self.moved_to = moved_to

    def __str__(self) -> str:
        done = f"moved it aside to {self.moved_to!r}" if self.moved_to else "another reader already moved it aside"
        return (
            f"object {self.key!r} in {self.uri} does not match its sha256 (expected {self.expected_sha256[:12]}..., "
            f"found {self.actual_sha256[:12]}...): {done}; the stage that made it will run again"
        )


def validate_key(key: str) -> str:
    """Return `key` unchanged if it is a clean relative path, else raise InvalidKey saying why."""
    if not isinstance(key, str):
        raise InvalidKey(f"invalid key {key!r}: not a string")
    problem = _key_problem(key)
    if problem:
        raise InvalidKey(f"invalid key {key!r}: {problem}")
    return key


def _key_problem(key: str) -> str | None:
    if not key:
        return "empty"
    if len(key.encode()) > MAX_KEY_BYTES:
        return f"longer than {MAX_KEY_BYTES} bytes"
    if "\\" in key:
        return "contains a backslash"
    if any(unicodedata.category(char) == "Cc" for char in key):
        return "contains a control character"
    if key.startswith("/"):
        return "absolute (starts with '/')"
    if key.endswith("/"):
        return "ends with '/'"
    segments = key.split("/")
    if "" in segments:
        return "has an empty segment ('//')"
    if "." in segments or ".." in segments:
        return "has a '.' or '..' segment"
    return None


def _validate_prefix(prefix: str) -> str:
    """A list prefix is '' or a key, optionally ending with '/'."""
    if prefix:
        validate_key(prefix.removesuffix("/"))
    return prefix


class ObjectInfo(BaseModel):
    key: str
    size: int
    sha256: str


class ArtifactStore(ABC):
    """Where big bytes live. `uri` names the store and never contains secrets."""

    uri: str

    @abstractmethod
    def put_bytes(self, key: str, data: bytes, content_type: str | None = None) -> ObjectInfo: ...

    @abstractmethod
    def put_file(self, key: str, path: Path, content_type: str | None = None) -> ObjectInfo:
        """Upload a local file, streaming it (it is never read whole into memory)."""

    @abstractmethod
    def get_bytes(self, key: str) -> bytes: ...

    @abstractmethod
    def get_head(self, key: str, size: int) -> bytes:
        """The object's first `size` bytes (all of them when it is shorter), streamed: no more is read, so a
        caller that refuses objects over a limit asks for one byte more and never holds a huge one."""

    @abstractmethod
    def get_file(self, key: str, dest: Path) -> Path:
        """Download to `dest` atomically: a reader of `dest` sees the old file or the whole new one."""

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def info(self, key: str) -> ObjectInfo:
        """Size and sha256 of the stored bytes; authoritative even for objects written behind the store's back."""

    @abstractmethod
    def list(self, prefix: str = "") -> list[str]:
        """Sorted keys starting with `prefix` (a plain string prefix, as in S3)."""

    @abstractmethod
    def presigned_url(
        self, key: str, expires: timedelta = timedelta(hours=1), method: Literal["GET", "PUT"] = "GET"
    ) -> str: ...

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove the object; deleting a missing key is not an error (as in S3)."""

    @abstractmethod
    def move_aside(self, key: str) -> str:
        """Move the object to the key `corrupt/<UTC time>/<key>`, kept for inspection, and return that key.

        The moved copy carries no stored hash, so `info()` on it reports what its bytes really hash to.
        Raises MissingObject if there is no object under `key` (say another process moved it first).
        """

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.uri!r})"


def _aside_key(key: str) -> str:
    """Where `move_aside` puts `key` now; microseconds keep two moves of one key apart."""
    return validate_key(f"{CORRUPT_PREFIX}{datetime.now(UTC):%Y%m%dT%H%M%S.%fZ}/{key}")


def _check_method(method: str) -> None:
    if method not in ("GET", "PUT"):
        raise StoreError(f"presigned URLs support GET and PUT, not {method!r}")


def _read_chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as src:
        while chunk := src.read(CHUNK_SIZE):
            yield chunk


def _hash_chunks(chunks: Iterable[bytes]) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    for chunk in chunks:
        digest.update(chunk)
        size += len(chunk)
    return digest.hexdigest(), size


def _open_temp(folder: Path, prefix: str, suffix: str) -> tuple[int, str]:
    """A new file for writing, with the umask's permissions: mkstemp's are 0600, and a trainer or ComfyUI
    container running as another user must be able to read what the store holds."""
    while True:
        name = str(folder / f"{prefix}{secrets.token_hex(6)}{suffix}")
        try:
            return os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), name
        except FileExistsError:
            continue


def _atomic_copy(src: BinaryIO | urllib3.BaseHTTPResponse, dest: Path) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, name = _open_temp(dest.parent, f".{dest.name}.", ".part")
    try:
        with os.fdopen(fd, "wb") as out:
            shutil.copyfileobj(src, out, CHUNK_SIZE)
        os.replace(name, dest)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise
    return dest

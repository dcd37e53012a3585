"""The artifact store: big bytes (images, LoRAs, videos) live here, everything else passes keys.

Two implementations behind one interface: `LocalStore` (a folder) and `S3Store` (any
S3-compatible server, through the minio SDK). Every object carries the sha256 of its bytes,
computed on put and returned by `info()`. Keys are '/'-separated relative paths, checked by
`validate_key` before any I/O. `open_store` builds either from a URI. Keys under `corrupt/` are
reserved: `move_aside` keeps bad copies there for inspection.
"""

from __future__ import annotations

import hashlib
import io
import os
import secrets
import shutil
import stat
import unicodedata
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import BinaryIO, Literal, NoReturn
from urllib.parse import urlsplit
from urllib.request import url2pathname

import urllib3
from minio import Minio
from minio.commonconfig import REPLACE, CopySource
from minio.datatypes import Object
from minio.error import S3Error
from pydantic import BaseModel, ValidationError

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


class _Sidecar(BaseModel):
    """What LocalStore records next to each object.

    The stat fields tie the hash to one exact file: if the object was replaced behind the store's
    back (say through its file:// URL), they no longer match and `info()` hashes the file again.
    """

    sha256: str
    size: int
    mtime_ns: int
    inode: int

    def matches(self, st: os.stat_result) -> bool:
        return (self.size, self.mtime_ns, self.inode) == (st.st_size, st.st_mtime_ns, st.st_ino)


class LocalStore(ArtifactStore):
    """A store in a local folder.

    Layout: `objects/<key>` holds the bytes, `meta/<key>` their sidecar (sha256), `tmp/` writes in
    flight (on the same filesystem, so publishing is one atomic `os.replace`). `list()` only walks
    `objects/`; as on S3, only the `corrupt/` prefix of `move_aside` is reserved. The sidecar is
    published before the object, so an object is never visible without its hash. Unlike S3, a key
    cannot also be a prefix of another key ('a' and 'a/b'): the second put raises StoreError.
    `content_type` is accepted and ignored.
    """

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root).expanduser().resolve()
        self.uri = self.root.as_uri()
        self._objects = self.root / "objects"
        self._meta = self.root / "meta"
        self._tmp = self.root / "tmp"
        for folder in (self._objects, self._meta, self._tmp):
            folder.mkdir(parents=True, exist_ok=True)

    def put_bytes(self, key: str, data: bytes, content_type: str | None = None) -> ObjectInfo:
        return self._put(validate_key(key), [data])

    def put_file(self, key: str, path: Path, content_type: str | None = None) -> ObjectInfo:
        return self._put(validate_key(key), _read_chunks(Path(path)))

    def get_bytes(self, key: str) -> bytes:
        with self._open(key) as src:
            return src.read()

    def get_file(self, key: str, dest: Path) -> Path:
        with self._open(key) as src:
            return _atomic_copy(src, Path(dest))

    def exists(self, key: str) -> bool:
        return self._object_path(key).is_file()

    def info(self, key: str) -> ObjectInfo:
        path = self._object_path(key)
        try:
            st = path.stat()
        except (FileNotFoundError, NotADirectoryError):
            raise MissingObject(key, self.uri) from None
        if not stat.S_ISREG(st.st_mode):
            raise MissingObject(key, self.uri)
        sidecar = self._read_sidecar(key)
        if sidecar is not None and sidecar.matches(st):
            return ObjectInfo(key=key, size=st.st_size, sha256=sidecar.sha256)
        sha256, size = _hash_chunks(_read_chunks(path))
        return ObjectInfo(key=key, size=size, sha256=sha256)

    def list(self, prefix: str = "") -> list[str]:
        _validate_prefix(prefix)
        # Walk only the deepest folder the prefix names, then filter on the string prefix.
        start = self._objects / prefix.rpartition("/")[0]
        if not start.is_dir():
            return []
        keys = (path.relative_to(self._objects).as_posix() for path in start.rglob("*") if path.is_file())
        return sorted(key for key in keys if key.startswith(prefix))

    def presigned_url(
        self, key: str, expires: timedelta = timedelta(hours=1), method: Literal["GET", "PUT"] = "GET"
    ) -> str:
        """The object's file:// URL. Nothing can be signed locally: `expires` is ignored and the URL
        is valid for whoever can read (or, for PUT, write) the path. A write through it bypasses
        the sidecar; `info()` notices and hashes the new bytes."""
        _check_method(method)
        return self._object_path(key).as_uri()

    def delete(self, key: str) -> None:
        # Object first: exists() must never see an object whose sidecar is gone.
        for path in (self._object_path(key), self._meta / key):
            try:
                path.unlink(missing_ok=True)
            except (IsADirectoryError, NotADirectoryError):
                pass  # a prefix of other keys, or below an object: no object under this key

    def move_aside(self, key: str) -> str:
        """Rename `objects/<key>` to `objects/corrupt/<UTC time>/<key>` (atomic: of two processes moving
        one object, one wins and the other gets MissingObject) and drop its sidecar."""
        source = self._object_path(key)
        try:
            is_object = stat.S_ISREG(source.stat().st_mode)
        except (FileNotFoundError, NotADirectoryError):
            is_object = False
        if not is_object:  # renaming a folder would move every key below it
            raise MissingObject(key, self.uri)
        aside = _aside_key(key)
        target = self._objects / aside
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(source, target)
        except FileNotFoundError:
            raise MissingObject(key, self.uri) from None
        # If a put repairs the key between the rename and this unlink, its object loses its sidecar:
        # info() then hashes the file, still right, only slower.
        (self._meta / key).unlink(missing_ok=True)
        return aside

    def _object_path(self, key: str) -> Path:
        return self._objects / validate_key(key)

    @contextmanager
    def _open(self, key: str) -> Iterator[BinaryIO]:
        try:
            src = self._object_path(key).open("rb")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise MissingObject(key, self.uri) from None
        with src:
            yield src

    def _put(self, key: str, chunks: Iterable[bytes]) -> ObjectInfo:
        target, sidecar_path = self._objects / key, self._meta / key
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            sidecar_path.parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError) as error:
            raise StoreError(f"cannot put {key!r} in {self.uri}: a parent is an existing object") from error
        tmp = self._temp_path()
        try:
            with tmp.open("wb") as out:
                digest, size = hashlib.sha256(), 0
                for chunk in chunks:
                    out.write(chunk)
                    digest.update(chunk)
                    size += len(chunk)
                out.flush()
                os.fsync(out.fileno())
            st = tmp.stat()  # os.replace keeps mtime and inode, so the sidecar will match the object
            sidecar = _Sidecar(sha256=digest.hexdigest(), size=size, mtime_ns=st.st_mtime_ns, inode=st.st_ino)
            self._write_sidecar(sidecar_path, sidecar)
            os.replace(tmp, target)
        except BaseException as error:
            tmp.unlink(missing_ok=True)
            if isinstance(error, IsADirectoryError):
                raise StoreError(f"cannot put {key!r} in {self.uri}: it is a prefix of existing keys") from error
            if isinstance(error, OSError) and error.strerror and not error.filename:
                # A failed write (a full disk, a file too large) names no file; the person needs to know where.
                raise OSError(error.errno, error.strerror, str(target)) from error
            raise
        return ObjectInfo(key=key, size=size, sha256=sidecar.sha256)

    def _write_sidecar(self, path: Path, sidecar: _Sidecar) -> None:
        tmp = self._temp_path()
        try:
            tmp.write_text(sidecar.model_dump_json())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def _read_sidecar(self, key: str) -> _Sidecar | None:
        try:
            return _Sidecar.model_validate_json((self._meta / key).read_bytes())
        except (OSError, ValidationError):
            return None

    def _temp_path(self) -> Path:
        fd, name = _open_temp(self._tmp, "put-", "")
        os.close(fd)
        return Path(name)


_MISSING_CODES = {"NoSuchKey", "NoSuchObject", "ResourceNotFound"}
_MAX_PRESIGN = timedelta(days=7)  # the S3 (SigV4) limit


class S3Store(ArtifactStore):
    """A store in an S3 bucket, under an optional key prefix.

    `endpoint` is 'host:port' (with `secure` choosing https) or a URL whose scheme decides it.
    The sha256 travels as user metadata (`x-amz-meta-sha256`). Objects uploaded through a
    presigned PUT URL have none: `info()` then hashes them by streaming the object. `info()` is a
    HEAD, so it trusts that metadata: bytes replaced with the metadata kept are only caught on read.
    """

    def __init__(
        self,
        endpoint: str,
        access_key: str,
        secret_key: str,
        bucket: str,
        prefix: str = "",
        secure: bool = False,
        region: str | None = None,
        create_bucket: bool = True,
    ) -> None:
        host, secure = _split_endpoint(endpoint, secure)
        self.endpoint = f"{'https' if secure else 'http'}://{host}"
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        if self.prefix:
            validate_key(self.prefix)
        self.uri = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        self._client = Minio(host, access_key=access_key, secret_key=secret_key, secure=secure, region=region)
        if create_bucket:
            self._ensure_bucket()

    def put_bytes(self, key: str, data: bytes, content_type: str | None = None) -> ObjectInfo:
        name = self._name(key)
        sha256 = hashlib.sha256(data).hexdigest()
        with self._errors("put", key):
            self._client.put_object(
                self.bucket,
                name,
                io.BytesIO(data),  # shares `data`'s buffer, no copy
                len(data),
                content_type=content_type or "application/octet-stream",
                metadata={"sha256": sha256},
            )
        return ObjectInfo(key=key, size=len(data), sha256=sha256)

    def put_file(self, key: str, path: Path, content_type: str | None = None) -> ObjectInfo:
        name = self._name(key)
        # The hash goes in the request headers, so it takes a first pass over the file.
        sha256, size = _hash_chunks(_read_chunks(Path(path)))
        with self._errors("put", key):
            self._client.fput_object(
                self.bucket,
                name,
                str(path),
                content_type=content_type or "application/octet-stream",
                metadata={"sha256": sha256},
            )
        return ObjectInfo(key=key, size=size, sha256=sha256)

    def get_bytes(self, key: str) -> bytes:
        with self._download(key) as response:
            return response.read()

    def get_file(self, key: str, dest: Path) -> Path:
        with self._download(key) as response:
            return _atomic_copy(response, Path(dest))

    def exists(self, key: str) -> bool:
        try:
            self._stat(key)
        except MissingObject:
            return False
        return True

    def info(self, key: str) -> ObjectInfo:
        found = self._stat(key)
        sha256 = found.metadata.get("x-amz-meta-sha256")  # HTTPHeaderDict: case-insensitive
        if not sha256:
            with self._download(key) as response:
                sha256, _ = _hash_chunks(response.stream(CHUNK_SIZE))
        return ObjectInfo(key=key, size=found.size or 0, sha256=sha256)

    def list(self, prefix: str = "") -> list[str]:
        _validate_prefix(prefix)
        base = f"{self.prefix}/" if self.prefix else ""
        with self._errors("list", prefix or None):
            names = [
                obj.object_name
                for obj in self._client.list_objects(self.bucket, prefix=base + prefix, recursive=True)
                if obj.object_name and not obj.is_dir
            ]
        return sorted(name.removeprefix(base) for name in names)

    def presigned_url(
        self, key: str, expires: timedelta = timedelta(hours=1), method: Literal["GET", "PUT"] = "GET"
    ) -> str:
        name = self._name(key)
        _check_method(method)
        if not timedelta(seconds=1) <= expires <= _MAX_PRESIGN:
            raise StoreError(f"presigned URL for {key!r}: expires must be between 1 s and 7 days, got {expires}")
        sign = self._client.presigned_get_object if method == "GET" else self._client.presigned_put_object
        with self._errors("presign", key):
            return sign(self.bucket, name, expires=expires)

    def delete(self, key: str) -> None:
        name = self._name(key)
        with self._errors("delete", key):
            self._client.remove_object(self.bucket, name)

    def move_aside(self, key: str) -> str:
        """A server-side copy to `corrupt/<UTC time>/<key>` without the sha256 metadata, then a delete.

        Two steps, not atomic: two processes moving one object may both copy it (two copies aside,
        both return), and a put that lands between the copy and the delete is deleted too, which
        only makes the key missing, so the stage that made it runs again.
        """
        name = self._name(key)
        aside = _aside_key(key)
        with self._errors("move aside", key):
            self._client.copy_object(
                self.bucket, self._name(aside), CopySource(self.bucket, name), metadata_directive=REPLACE
            )
            self._client.remove_object(self.bucket, name)
        return aside

    def __repr__(self) -> str:
        return f"S3Store({self.uri!r}, endpoint={self.endpoint!r})"

    def _name(self, key: str) -> str:
        validate_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _stat(self, key: str) -> Object:
        name = self._name(key)
        with self._errors("stat", key):
            return self._client.stat_object(self.bucket, name)

    def _ensure_bucket(self) -> None:
        with self._errors("create bucket", None):
            try:
                if not self._client.bucket_exists(self.bucket):
                    self._client.make_bucket(self.bucket)
            except S3Error as error:
                # Another process may create it between our check and our make_bucket.
                if error.code != "BucketAlreadyOwnedByYou":
                    raise

    @contextmanager
    def _download(self, key: str) -> Iterator[urllib3.BaseHTTPResponse]:
        name = self._name(key)
        with self._errors("get", key):
            response = self._client.get_object(self.bucket, name)
        try:
            yield response
        finally:
            response.close()
            response.release_conn()

    @contextmanager
    def _errors(self, action: str, key: str | None) -> Iterator[None]:
        """Turn SDK errors into StoreErrors. Their messages come from the server or the
        connection, never from our credentials, so they are safe to show."""
        try:
            yield
        except S3Error as error:
            if key is not None and error.code in _MISSING_CODES:
                raise MissingObject(key, self.uri) from error
            self._fail(action, key, f"{error.code}: {error.message}", error)
        except urllib3.exceptions.HTTPError as error:
            self._fail(action, key, f"cannot reach {self.endpoint}: {type(error).__name__}", error)

    def _fail(self, action: str, key: str | None, reason: str, error: Exception) -> NoReturn:
        target = f"{key!r} in {self.uri}" if key is not None else self.uri
        raise StoreError(f"{action} {target} failed: {reason}") from error


def open_store(
    uri: str, *, access_key: str | None = None, secret_key: str | None = None, endpoint: str | None = None
) -> ArtifactStore:
    """`file:///path` or a plain path: LocalStore; `s3://bucket[/prefix]`: S3Store on `endpoint`
    (e.g. 'http://127.0.0.1:9000'; its scheme decides TLS) with the given keys."""
    if "://" not in uri:
        return LocalStore(Path(uri))
    parts = urlsplit(uri)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise StoreError(f"file URI {uri!r} names a host; only local paths are supported")
        return LocalStore(Path(url2pathname(parts.path)))
    if parts.scheme == "s3":
        if "@" in parts.netloc:
            # Not echoing the URI: what precedes '@' is probably a secret.
            raise StoreError("credentials inside an s3:// URI are not supported: pass access_key and secret_key")
        if not parts.netloc:
            raise StoreError(f"s3 URI {uri!r} names no bucket (expected s3://bucket/prefix)")
        needed = {"endpoint": endpoint, "access_key": access_key, "secret_key": secret_key}
        missing = [name for name, value in needed.items() if not value]
        if missing:
            raise StoreError(f"opening {uri} needs {', '.join(missing)}")
        assert endpoint and access_key and secret_key  # narrowed by the check above
        return S3Store(endpoint, access_key, secret_key, bucket=parts.netloc, prefix=parts.path)
    raise StoreError(f"unsupported store URI {uri!r}: expected file://, s3:// or a path")


def _split_endpoint(endpoint: str, secure: bool) -> tuple[str, bool]:
    if "://" not in endpoint:
        return endpoint, secure
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.path.strip("/"):
        raise StoreError(f"bad S3 endpoint {endpoint!r}: expected http(s)://host[:port]")
    return parts.netloc, parts.scheme == "https"


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

"""`LocalStore`: the artifact store in a local folder, each object's sha256 in a sidecar beside it."""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import BinaryIO, Literal

from pydantic import BaseModel, ValidationError

from likeness.storage.store import (
    ArtifactStore,
    MissingObject,
    ObjectInfo,
    StoreError,
    _aside_key,
    _atomic_copy,
    _check_method,
    _hash_chunks,
    _open_temp,
    _read_chunks,
    _validate_prefix,
    validate_key,
)


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

    def get_head(self, key: str, size: int) -> bytes:
        with self._open(key) as src:
            return src.read(size)

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

"""`S3Store`: the artifact store in an S3 bucket (any S3-compatible server, through the minio SDK)."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Literal, NoReturn
from urllib.parse import urlsplit

import urllib3
from minio import Minio
from minio.commonconfig import REPLACE, CopySource
from minio.datatypes import Object
from minio.error import S3Error

from likeness.storage.store import (
    CHUNK_SIZE,
    ArtifactStore,
    MissingObject,
    ObjectInfo,
    StoreError,
    _aside_key,
    _atomic_copy,
    _check_method,
    _hash_chunks,
    _read_chunks,
    _validate_prefix,
    validate_key,
)

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

    def get_head(self, key: str, size: int) -> bytes:
        with self._download(key) as response, self._errors("get", key):
            return response.read(size)

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


def _split_endpoint(endpoint: str, secure: bool) -> tuple[str, bool]:
    if "://" not in endpoint:
        return endpoint, secure
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.path.strip("/"):
        raise StoreError(f"bad S3 endpoint {endpoint!r}: expected http(s)://host[:port]")
    return parts.netloc, parts.scheme == "https"

"""Small typed references to big bytes in the artifact store, helpers to move images through it, and the
opening of a store by its URI (`open_store`) or the settings.

Objects are content-addressed (`sha256/<hex digest>/<filename>`), so two runs never write different
bytes under one key and a reference stays valid for as long as the store keeps the object. A copy
whose bytes no longer match its address is moved aside (`ArtifactStore.move_aside`) when a read or a
put finds it: a read then raises CorruptObject, a put stores the right bytes again.
"""

from __future__ import annotations

import hashlib
import io
import logging
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlsplit
from urllib.request import url2pathname

from PIL import Image
from pydantic import BaseModel, ConfigDict

from likeness.settings import Settings, get_settings
from likeness.storage.local import LocalStore
from likeness.storage.s3 import S3Store
from likeness.storage.store import ArtifactStore, CorruptObject, MissingObject, StoreError

logger = logging.getLogger(__name__)


class ArtifactRef(BaseModel):
    """Where an artifact lives and what its bytes hash to."""

    model_config = ConfigDict(frozen=True)

    key: str
    sha256: str
    size: int

    @property
    def filename(self) -> str:
        return self.key.rsplit("/", 1)[-1]


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


def store_from_settings(settings: Settings) -> ArtifactStore:
    uri = settings.store_uri or str((settings.data_dir / "store").resolve())
    return open_store(
        uri,
        endpoint=settings.s3_endpoint,
        access_key=settings.s3_access_key.get_secret_value() if settings.s3_access_key else None,
        secret_key=settings.s3_secret_key.get_secret_value() if settings.s3_secret_key else None,
    )


@lru_cache
def get_store() -> ArtifactStore:
    """The process-wide store named by the settings."""
    return store_from_settings(get_settings())


def content_key(sha256: str, filename: str) -> str:
    """The store key of bytes with this digest; the file name is kept for people reading the store."""
    return f"sha256/{sha256}/{filename}"


def put_bytes(data: bytes, filename: str, store: ArtifactStore | None = None) -> ArtifactRef:
    """Store `data` under its content address; storing the same bytes again costs one `info()`."""
    store = store or get_store()
    sha = hashlib.sha256(data).hexdigest()
    key = content_key(sha, filename)
    if _needs_upload(store, key, sha):
        store.put_bytes(key, data)
    return ArtifactRef(key=key, sha256=sha, size=len(data))


def put_file(path: Path, filename: str | None = None, store: ArtifactStore | None = None) -> ArtifactRef:
    """Store a file under its content address, streaming it (LoRAs and videos can be large)."""
    store = store or get_store()
    with path.open("rb") as handle:
        sha = hashlib.file_digest(handle, "sha256").hexdigest()
    key = content_key(sha, filename or path.name)
    if _needs_upload(store, key, sha):
        store.put_file(key, path)
    return ArtifactRef(key=key, sha256=sha, size=path.stat().st_size)


def get_bytes(ref: ArtifactRef, store: ArtifactStore | None = None) -> bytes:
    """The artifact's bytes, hashed on arrival: a copy that does not match is moved aside and CorruptObject raised."""
    store = store or get_store()
    data = store.get_bytes(ref.key)
    found = hashlib.sha256(data).hexdigest()
    if found != ref.sha256:
        raise CorruptObject(ref.key, store.uri, ref.sha256, found, _move_aside(store, ref.key))
    return data


def _needs_upload(store: ArtifactStore, key: str, sha256: str) -> bool:
    """False when `key` already holds these bytes; a copy that hashes otherwise is moved aside first."""
    try:
        found = store.info(key).sha256
    except MissingObject:
        return True
    if found == sha256:
        return False
    moved_to = _move_aside(store, key)
    done = f"moved it aside to {moved_to!r}" if moved_to else "another process already moved it aside"
    logger.warning(
        "object %r in %s does not match its sha256 (found %s...): %s; storing the right bytes",
        key,
        store.uri,
        found[:12],
        done,
    )
    return True


def _move_aside(store: ArtifactStore, key: str) -> str | None:
    """Where the bad copy went, or None when a concurrent reader or writer moved it first."""
    try:
        return store.move_aside(key)
    except MissingObject:
        return None


def put_image(image: Image.Image, filename: str, store: ArtifactStore | None = None) -> ArtifactRef:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return put_bytes(buffer.getvalue(), filename, store)


def load_image(ref: ArtifactRef, store: ArtifactStore | None = None) -> Image.Image:
    return Image.open(io.BytesIO(get_bytes(ref, store))).convert("RGB")

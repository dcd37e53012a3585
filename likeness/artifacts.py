"""Small typed references to big bytes in the artifact store, and helpers to move images through it.

Objects are content-addressed (`sha256/<hex digest>/<filename>`), so two runs never write different
bytes under one key and a reference stays valid for as long as the store keeps the object.
"""

from __future__ import annotations

import hashlib
import io
from functools import lru_cache
from pathlib import Path

from PIL import Image
from pydantic import BaseModel, ConfigDict

from likeness.settings import Settings, get_settings
from likeness.store import ArtifactStore, open_store


class ArtifactRef(BaseModel):
    """Where an artifact lives and what its bytes hash to."""

    model_config = ConfigDict(frozen=True)

    key: str
    sha256: str
    size: int

    @property
    def filename(self) -> str:
        return self.key.rsplit("/", 1)[-1]


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
    """Store `data` under its content address; storing the same bytes again is free."""
    store = store or get_store()
    sha = hashlib.sha256(data).hexdigest()
    key = content_key(sha, filename)
    if not store.exists(key):
        store.put_bytes(key, data)
    return ArtifactRef(key=key, sha256=sha, size=len(data))


def put_file(path: Path, filename: str | None = None, store: ArtifactStore | None = None) -> ArtifactRef:
    """Store a file under its content address, streaming it (LoRAs and videos can be large)."""
    store = store or get_store()
    with path.open("rb") as handle:
        sha = hashlib.file_digest(handle, "sha256").hexdigest()
    key = content_key(sha, filename or path.name)
    if not store.exists(key):
        store.put_file(key, path)
    return ArtifactRef(key=key, sha256=sha, size=path.stat().st_size)


def get_bytes(ref: ArtifactRef, store: ArtifactStore | None = None) -> bytes:
    data = (store or get_store()).get_bytes(ref.key)
    if hashlib.sha256(data).hexdigest() != ref.sha256:
        raise ValueError(f"artifact {ref.key} does not match its sha256 {ref.sha256}: the store copy is corrupt")
    return data


def put_image(image: Image.Image, filename: str, store: ArtifactStore | None = None) -> ArtifactRef:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return put_bytes(buffer.getvalue(), filename, store)


def load_image(ref: ArtifactRef, store: ArtifactStore | None = None) -> Image.Image:
    return Image.open(io.BytesIO(get_bytes(ref, store))).convert("RGB")

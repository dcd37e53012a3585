"""Input files named the way a person names them: a path on this machine, an s3:// or https:// URL, a store key.

Deployment runs start on a worker that is not the machine of the person who started them, so a
reference photo can be given as any of these; each is read here, with a message naming the
location when it cannot be.

    data = read_location("s3://characters/inbox/ada.jpg")
    manifest = read_location("inbox/spring.yaml", "manifest", max_bytes=2**20)   # TooBig past 1 MiB, unread
"""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

from likeness.inputs import MAX_REFERENCE_FILE_BYTES, InvalidInput, read_at_most, too_many_bytes
from likeness.settings import get_settings
from likeness.storage.artifacts import get_store, open_store
from likeness.storage.store import MissingObject, StoreError

FETCH_TIMEOUT_S = 60


def read_location(location: str, label: str = "reference", max_bytes: int | None = None) -> bytes:
    """The bytes at `location`; InvalidInput naming it when they cannot be read. With `max_bytes`, `TooBig`
    ("a <label> may be at most ...") when there are more, having read no more than one byte past it."""
    scheme = urlsplit(location).scheme
    if scheme in ("http", "https"):
        data = _fetch_url(location, label, MAX_REFERENCE_FILE_BYTES if max_bytes is None else max_bytes)
        return _at_most(data, location, label, max_bytes)
    if scheme == "s3":
        return _at_most(_read_s3(location, label, max_bytes), location, label, max_bytes)
    if scheme:
        raise InvalidInput(f"{label} {location!r}: use a path, an s3:// or https:// URL, or a key in the store")
    path = Path(location).expanduser()
    if path.is_file():
        if max_bytes is None:
            return path.read_bytes()
        try:
            return read_at_most(path, max_bytes, f"{label} {location}", f"a {label}")
        except OSError as exc:
            raise InvalidInput(f"{label} {location} cannot be read: {exc.strerror or exc}") from None
    try:
        store = get_store()
        data = store.get_bytes(location) if max_bytes is None else store.get_head(location, max_bytes + 1)
        return _at_most(data, location, label, max_bytes)
    except MissingObject:
        raise InvalidInput(
            f"{label} {location!r} is neither a file on this machine nor a key in the store {get_store().uri}"
        ) from None
    except StoreError as exc:
        raise InvalidInput(f"{label} {location!r}: {exc}") from None


def _at_most(data: bytes, location: str, label: str, max_bytes: int | None) -> bytes:
    if max_bytes is not None and len(data) > max_bytes:
        raise too_many_bytes(f"{label} {location}", None, max_bytes, f"a {label}")
    return data


def _fetch_url(url: str, label: str, limit: int) -> bytes:
    request = urllib.request.Request(url, headers={"User-Agent": "likeness"})
    try:
        with urllib.request.urlopen(request, timeout=FETCH_TIMEOUT_S) as response:
            data = response.read(limit + 1)
    except urllib.error.HTTPError as exc:
        raise InvalidInput(f"{label} {url} could not be fetched: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise InvalidInput(f"{label} {url} could not be fetched: {reason}") from None
    return data


def _read_s3(url: str, label: str, max_bytes: int | None) -> bytes:
    """An object in a bucket of the store's S3 server, read with the store's credentials."""
    parts = urlsplit(url)
    settings = get_settings()
    if not settings.s3_endpoint:
        raise InvalidInput(f"{label} {url}: no S3 server is configured (LIKENESS_S3_ENDPOINT)")
    try:
        bucket = open_store(
            f"s3://{parts.netloc}",
            endpoint=settings.s3_endpoint,
            access_key=settings.s3_access_key.get_secret_value() if settings.s3_access_key else None,
            secret_key=settings.s3_secret_key.get_secret_value() if settings.s3_secret_key else None,
        )
        key = parts.path.lstrip("/")
        return bucket.get_bytes(key) if max_bytes is None else bucket.get_head(key, max_bytes + 1)
    except MissingObject:
        raise InvalidInput(f"{label} {url}: no such object on {settings.s3_endpoint}") from None
    except StoreError as exc:
        raise InvalidInput(f"{label} {url}: {exc}") from None

"""The first task of a run: an input image read from where the person put it, checked, and stored."""

from __future__ import annotations

from prefect import task

from likeness.inputs import normalise_reference
from likeness.storage.artifacts import ArtifactRef, put_bytes
from likeness.storage.locations import read_location


@task(name="fetch-input-image")
def fetch_input_image(location: str, label: str, filename: str) -> ArtifactRef:
    """The image at `location` (a path, an s3:// or https:// URL, a store key) as an oriented 8-bit RGB PNG."""
    image = normalise_reference(read_location(location, label), f"{label} {location}", kind=label)
    return put_bytes(image.png, filename)

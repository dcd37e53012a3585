"""`likeness put`: images into the artifact store, for a run started from the browser.

A deployment runs on a worker, not on the machine the photo is on. The key this prints (one a line, on stdout) names
the image in the store every worker reads, and goes into the Prefect UI's form (`reference`, `garments`, `poses`)
as it is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from likeness.cli.console import fail, refusing, say
from likeness.inputs import read_reference_image
from likeness.storage.artifacts import get_store, put_file

# What an image is for, and the form field that takes its key.
FIELDS = {"reference": "reference", "garment": "garments", "pose": "poses"}


def put(
    images: Annotated[list[Path], typer.Argument(help="Image files: each is checked as a run would, then stored.")],
    kind: Annotated[
        str, typer.Option("--as", help="What the images are for: reference, garment or pose (each has its minimum).")
    ] = "reference",
) -> None:
    """Put images into the artifact store and print the key of each, to paste into a deployment's form."""
    if kind not in FIELDS:
        fail(f"--as {kind!r} is not one of {', '.join(FIELDS)}")
    with refusing():
        for image in images:
            read_reference_image(image, f"{kind} image")  # refused here, before a worker reads it
        store = get_store()
        keys = [put_file(image, store=store).key for image in images]
    for key in keys:
        print(key)
    field = FIELDS[kind]
    say(f"in {store.uri}: paste into the form's `{field}` field, or give -p {field}=<key> to `likeness run`")

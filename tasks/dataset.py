"""Dataset: the captioned images as one unit, with `manifest.jsonl` and a contact sheet for people.

The layout follows AI Toolkit and kohya: `<trigger>_<variation>.png` beside a `.txt` caption.
"""

from __future__ import annotations

import json

from likeness.artifacts import ArtifactRef, load_image, put_bytes, put_image
from likeness.imaging import contact_sheet
from likeness.records import DatasetItem, DatasetRef
from likeness.stages import stage_task

STAGE_VERSION = 1


@stage_task("assemble-dataset", STAGE_VERSION, retry_delay_seconds=5, gpu=False)
def assemble_dataset(trigger: str, reference: ArtifactRef, items: list[DatasetItem]) -> DatasetRef:
    """Write the manifest and the contact sheet of a finished dataset."""
    lines = [
        json.dumps(
            {
                "file": item.filename(trigger),
                "caption": item.caption,
                "variation": item.variation,
                "sha256": item.image.sha256,
                "edit_prompt": item.edit_prompt,
                "seed": item.seed,
            }
        )
        for item in items
    ]
    manifest = put_bytes(("\n".join(lines) + "\n").encode(), "manifest.jsonl")
    sheet = contact_sheet(
        [load_image(reference), *(load_image(item.image) for item in items)],
        ["reference", *(item.variation for item in items)],
    )
    return DatasetRef(
        trigger=trigger,
        reference=reference,
        items=tuple(items),
        manifest=manifest,
        contact_sheet=put_image(sheet, "contact_sheet.png"),
    )

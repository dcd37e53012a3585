"""Dataset: the curated, captioned images as one unit, with `manifest.jsonl` and a contact sheet for people.

The layout follows AI Toolkit and kohya: `<trigger>_<shot>.png` beside a `.txt` caption, and a mask of
the same name in a folder of its own. The manifest carries every image's lineage and figures, and every
try curation refused with its reasons; the contact sheet shows the kept images and, marked, the refused ones.
"""

from __future__ import annotations

import json
from typing import Any

from prefect.artifacts import create_table_artifact
from prefect.context import FlowRunContext, TaskRunContext

from likeness.media.imaging import contact_sheet
from likeness.records import DatasetItem, DatasetRef, Rejection
from likeness.run.pictures import publish_dataset
from likeness.run.progress import prefect_artifact_key
from likeness.stages import stage_task
from likeness.storage.artifacts import ArtifactRef, load_image, put_bytes, put_image

STAGE_VERSION = 2


def _figures(rejection_or_item: Rejection | DatasetItem) -> dict[str, Any]:
    figures = rejection_or_item.figures
    return {
        "identity_distance": _rounded(figures.identity_distance),
        "faces": figures.faces,
        "sharpness": round(figures.sharpness, 2),
        "exposure": round(figures.exposure_mean, 3),
        "dark_fraction": round(figures.dark_fraction, 4),
        "bright_fraction": round(figures.bright_fraction, 4),
        "phash": figures.phash,
    }


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def _rejected(rejection: Rejection) -> dict[str, Any]:
    return {
        "attempt": rejection.attempt,
        "seed": rejection.seed,
        "image": rejection.image.key,
        "reasons": list(rejection.reasons),
        **_figures(rejection),
    }


def manifest_lines(
    trigger: str, reference: ArtifactRef, items: list[DatasetItem], dropped: list[tuple[Rejection, ...]], models: dict
) -> list[dict[str, Any]]:
    """One JSON object per shot (paths relative to the output folder): the kept images with their lineage, then
    the shots every try of which was refused."""
    lines = [
        {
            "file": f"dataset/{item.filename(trigger)}",
            "kept": True,
            "caption": item.caption,
            "shot": item.shot,
            "entry": item.entry,
            "group": item.group,
            "intensity": item.intensity,
            "source": reference.sha256,
            "seed": item.seed,
            "attempt": item.attempt,
            "edit_prompt": item.edit_prompt,
            **models,  # the models behind each role, and the precision
            "edited": item.edited.key,
            **_figures(item),
            "refine_start_step": item.upscale.start_step,
            "refine_tries": [list(tried) for tried in item.upscale.tries],
            "pre_refine_identity_distance": _rounded(item.upscale.pre_refine_distance),
            "final_identity_distance": _rounded(item.upscale.identity_distance),
            "refine_uso_subject": item.upscale.uso_subject.key if item.upscale.uso_subject else None,
            "sha256": item.image.sha256,
            "mask": f"masks/{item.filename(trigger)}",
            "rejected": [_rejected(rejection) for rejection in item.rejected],
        }
        for item in items
    ]
    lines += [
        {"shot": tries[0].shot, "kept": False, "source": reference.sha256, "rejected": [_rejected(r) for r in tries]}
        for tries in dropped
    ]
    return lines


@stage_task("assemble-dataset", STAGE_VERSION, retry_delay_seconds=5, gpu=False)
def assemble_dataset(
    trigger: str,
    reference: ArtifactRef,
    items: list[DatasetItem],
    dropped: list[tuple[Rejection, ...]],
    identity_checked: bool,
    repeated_phrases: list[str],
    models: dict[str, Any],
) -> DatasetRef:
    """Write the manifest and the contact sheet of a finished dataset, and its table and pictures in the Prefect UI."""
    lines = manifest_lines(trigger, reference, items, dropped, models)
    manifest = put_bytes("".join(json.dumps(line) + "\n" for line in lines).encode(), "manifest.jsonl")
    rejections = [r for item in items for r in item.rejected] + [r for tries in dropped for r in tries]
    sheet = contact_sheet(
        [
            load_image(reference),
            *(load_image(item.image) for item in items),
            *(load_image(r.image) for r in rejections),
        ],
        ["reference", *(item.shot for item in items), *(f"{r.shot}: {'; '.join(r.reasons)}" for r in rejections)],
        refused=[False] * (1 + len(items)) + [True] * len(rejections),
    )
    _publish_table(trigger, items, rejections, identity_checked)
    dataset = DatasetRef(
        trigger=trigger,
        reference=reference,
        items=tuple(items),
        dropped=tuple(dropped),
        identity_checked=identity_checked,
        repeated_phrases=tuple(repeated_phrases),
        manifest=manifest,
        contact_sheet=put_image(sheet, "contact_sheet.png"),
    )
    publish_dataset(dataset)  # the contact sheet and the refused tries as pictures in the Prefect UI
    return dataset


def _publish_table(trigger: str, items: list[DatasetItem], rejections: list[Rejection], identity: bool) -> None:
    """The dataset as a table artifact in the Prefect UI: one row per kept image and per refused try."""
    rows = [
        {
            "shot": item.shot,
            "kept": "yes",
            "identity distance": _shown(item.upscale.identity_distance if identity else None, identity),
            "sharpness": round(item.figures.sharpness, 1),
            "refine start step": item.upscale.start_step,
            "caption": item.caption,
        }
        for item in items
    ]
    rows += [
        {
            "shot": r.shot,
            "kept": f"no (try {r.attempt + 1})",
            "identity distance": _shown(r.figures.identity_distance, identity),
            "sharpness": round(r.figures.sharpness, 1),
            "refine start step": "",
            "caption": "; ".join(r.reasons),
        }
        for r in rejections
    ]
    if FlowRunContext.get() is None and TaskRunContext.get() is None:
        return
    create_table_artifact(
        key=prefect_artifact_key(f"{trigger}-dataset-table"),
        table=rows,
        description=f"{trigger}: {len(items)} kept images, {len(rejections)} refused tries"
        + ("" if identity else " (identity not checked: --no-identity)"),
    )


def _shown(distance: float | None, identity: bool) -> str:
    if not identity:
        return "skipped"
    return "no face" if distance is None else f"{distance:.3f}"

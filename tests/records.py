"""Dataset records for tests of the stages after the dataset (training), built from real images in the store."""

from __future__ import annotations

from likeness.dataset.curation import Figures
from likeness.records import DatasetItem, DatasetRef, UpscaleResult
from likeness.storage.artifacts import ArtifactRef

FIGURES = Figures(
    faces=1,
    identity_distance=0.2,
    sharpness=100.0,
    exposure_mean=0.5,
    dark_fraction=0.0,
    bright_fraction=0.0,
    exposure_region="face",
    phash="0" * 16,
    face_box=(0, 0, 8, 8),
    face_score=1.0,
)


def dataset_item(shot: str, image: ArtifactRef, caption: str) -> DatasetItem:
    """A kept dataset image whose edit, 2K image and mask are all `image`."""
    return DatasetItem(
        shot=shot,
        entry=shot,
        group="pose",
        intensity=None,
        edit_prompt="",
        seed=0,
        attempt=0,
        edited=image,
        figures=FIGURES,
        upscale=UpscaleResult(image=image, start_step=2, pre_refine_distance=0.2, identity_distance=0.2, tries=()),
        mask=image,
        caption=caption,
    )


def dataset_ref(reference: ArtifactRef, items: tuple[DatasetItem, ...]) -> DatasetRef:
    return DatasetRef(
        trigger="Ada",
        reference=reference,
        items=items,
        identity_checked=True,
        manifest=reference,
        contact_sheet=reference,
    )

"""The dataset flow: variations of the reference, upscaled and refined, captioned, assembled.

Stage by stage rather than image by image, so each model is busy for one block of work: with
model offload on a GPU, one model at a time holds the GPU memory.
"""

from __future__ import annotations

from prefect import flow, unmapped

from likeness.artifacts import ArtifactRef
from likeness.catalogue import get_variation
from likeness.config import DatasetConfig, ModelProfile
from likeness.progress import StageProgress
from likeness.records import DatasetItem, DatasetRef
from tasks.caption import caption_image
from tasks.dataset import assemble_dataset
from tasks.upscale import upscale_image
from tasks.variations import edit_variation, variation_seed


def refine_prompt(trigger: str, variation_id: str) -> str:
    variation = get_variation(variation_id)
    return f"photo of {trigger}, {variation.view}, {variation.framing}, natural skin texture, sharp eyes"


@flow(name="build-dataset", log_prints=True)
def build_dataset(trigger: str, reference: ArtifactRef, config: DatasetConfig, profile: ModelProfile) -> DatasetRef:
    """Turn one reference photo into a captioned LoRA training dataset."""
    variations = list(config.variations)
    seeds = [variation_seed(config.seed, variation_id) for variation_id in variations]
    progress = StageProgress("dataset", 3 * len(variations), artifact_key=f"{trigger}-dataset")

    edited = edit_variation.map(unmapped(reference), variations, unmapped(config.edit), seeds, unmapped(profile))
    progress.wait(edited, "edit")
    prompts = [refine_prompt(trigger, variation_id) for variation_id in variations]
    refined = upscale_image.map(edited, unmapped(config.upscale), prompts, seeds, unmapped(profile))
    progress.wait(refined, "upscale")
    captions = caption_image.map(refined, unmapped(trigger), variations, unmapped(config.caption), unmapped(profile))
    progress.wait(captions, "caption")

    items = [
        DatasetItem(
            variation=variation_id,
            image=image.result(),
            caption=caption.result(),
            edit_prompt=get_variation(variation_id).prompt,
            seed=seed,
        )
        for variation_id, image, caption, seed in zip(variations, refined, captions, seeds, strict=True)
    ]
    return assemble_dataset(trigger, reference, items)

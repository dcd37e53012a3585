"""The dataset flow: variations of the reference, upscaled and refined, captioned, assembled."""

from __future__ import annotations

from prefect import flow

from likeness.artifacts import ArtifactRef
from likeness.catalogue import get_variation
from likeness.config import DatasetConfig, ModelProfile
from likeness.progress import StageProgress
from likeness.records import DatasetItem, DatasetRef
from tasks.caption import caption_image
from tasks.dataset import assemble_dataset
from tasks.upscale import upscale_image
from tasks.variations import edit_variation, variation_seed


@flow(name="build-dataset", log_prints=True)
def build_dataset(trigger: str, reference: ArtifactRef, config: DatasetConfig, profile: ModelProfile) -> DatasetRef:
    """Turn one reference photo into a captioned LoRA training dataset."""
    progress = StageProgress("dataset", len(config.variations), artifact_key=f"{trigger}-dataset")
    items = []
    for variation_id in config.variations:
        variation = get_variation(variation_id)
        seed = variation_seed(config.seed, variation_id)
        edited = edit_variation(reference, variation_id, config.edit, seed, profile)
        refine_prompt = f"photo of {trigger}, {variation.view}, {variation.framing}, natural skin texture, sharp eyes"
        refined = upscale_image(edited, config.upscale, refine_prompt, seed, profile)
        caption = caption_image(refined, trigger, variation_id, config.caption, profile)
        items.append(DatasetItem(variation=variation_id, image=refined, caption=caption,
                                 edit_prompt=variation.prompt, seed=seed))
        progress.advance(variation_id)
    return assemble_dataset(trigger, reference, items)

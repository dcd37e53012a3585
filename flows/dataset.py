"""The dataset flow: the catalogue's shots edited from the reference, curated, upscaled to 2K, masked, captioned.

Stage by stage rather than image by image, so each model is busy for one block of work and is released
when the flow moves on: with the production models (the editor alone is about 40 GB), peak memory is the
largest stage's, not the sum.

Curation measures every edit and refuses the ones that fail the profile's thresholds (no face where the
shot shows one, another person, blurred, badly exposed, a near-duplicate); a refused shot is edited again
with a new seed, up to `curation.max_tries` tries, and every refused try is kept with its reasons.
"""

from __future__ import annotations

import hashlib
from typing import NamedTuple

from prefect import flow, unmapped
from prefect.task_runners import ThreadPoolTaskRunner

from likeness.config import DatasetConfig, ModelProfile
from likeness.dataset.captions import phrases_in_every_caption
from likeness.dataset.catalogue import Catalogue, Shot, shot_size
from likeness.dataset.curation import Figures, Kept, judge
from likeness.models import pipelines
from likeness.records import DatasetItem, DatasetRef, Rejection
from likeness.run.interrupts import stop_flag_on_signals
from likeness.run.memory import memory_for_dataset
from likeness.run.progress import StageProgress, announce
from likeness.storage.artifacts import ArtifactRef
from tasks.caption import caption_image
from tasks.curation import make_mask, measure_image, measure_reference
from tasks.dataset import assemble_dataset
from tasks.upscale import upscale_image, uso_subject
from tasks.variations import edit_variation

# Qwen-Image's VAE downsamples 8x and its transformer packs 2x2 latent patches.
EDIT_MULTIPLE = 16


def shot_seed(seed: int, shot_id: str, attempt: int) -> int:
    """A seed per shot and try, stable across runs and independent of the catalogue's order."""
    text = f"{seed}:{shot_id}" if attempt == 0 else f"{seed}:{shot_id}:{attempt}"
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big")


def refine_prompt(trigger: str, shot: Shot) -> str:
    return f"photo of {trigger}, {', '.join(shot.tags)}, natural skin texture, sharp eyes"


class Chosen(NamedTuple):
    """The try of a shot that curation kept."""

    attempt: int
    seed: int
    image: ArtifactRef
    figures: Figures


# Model calls queue for one lock, so more workers than two only hold more decoded 2K images and intermediate
# tensors while they wait: with Prefect's default (no limit) a tiny 2K build peaked at 4.4 GB RSS, with two at
# 1.5 GB in the same time (bench/dataset_build.py). Two let one task prepare while another runs a model.
DATASET_WORKERS = 2


@flow(name="build-dataset", log_prints=True, task_runner=ThreadPoolTaskRunner(max_workers=DATASET_WORKERS))
def build_dataset(
    trigger: str,
    reference: ArtifactRef,
    config: DatasetConfig,
    profile: ModelProfile,
    catalogue: Catalogue,
    garments: list[ArtifactRef] | None = None,
    poses: list[ArtifactRef] | None = None,
) -> DatasetRef:
    """Turn one reference photo (and optional garment and pose images) into a captioned, curated LoRA dataset."""
    # A deployment's run cancelled from the UI ends with SIGTERM: its edits, refines and captions stop at their
    # next step, not at the end of their image.
    with stop_flag_on_signals():
        garments, poses = list(garments or []), list(poses or [])
        shots = catalogue.shots(config.variations, garments=len(garments), poses=len(poses))
        profile = memory_for_dataset(profile.for_upscale(config.upscale), config, shots, say=print)
        face = measure_reference(reference) if config.curation.identity else None
        # Four steps a shot: edited, upscaled, masked, captioned.
        progress = StageProgress("dataset", 4 * len(shots), f"{trigger}-dataset", unit="shots", items=len(shots))

        chosen, tries = edit_and_curate(
            reference, shots, {"garment": garments, "pose": poses}, config, profile, face, progress
        )
        pipelines.release("editor")
        kept_shots = [shot for shot in shots if shot.id in chosen]
        picks = [chosen[shot.id] for shot in kept_shots]

        subject = uso_subject(reference, config.upscale.uso_subject_size) if config.upscale.uso else None
        upscaled = upscale_image.map(
            [pick.image for pick in picks],
            unmapped(config.upscale),
            [refine_prompt(trigger, shot) for shot in kept_shots],
            [pick.seed for pick in picks],
            unmapped(profile),
            unmapped(face),
            unmapped(subject),
        )
        progress.wait(upscaled, "upscale")
        pipelines.release("upscaler", "refiner")
        finals = [future.result() for future in upscaled]
        masks = make_mask.map([final.image for final in finals])
        progress.wait(masks, "mask")
        captions = caption_image.map(
            [final.image for final in finals],
            unmapped(trigger),
            [list(shot.tags) for shot in kept_shots],
            unmapped(config.caption),
            unmapped(profile),
        )
        progress.wait(captions, "caption")
        pipelines.release("captioner")

        items = [
            DatasetItem(
                shot=shot.id,
                entry=shot.entry,
                group=shot.group,
                intensity=shot.intensity,
                edit_prompt=shot.prompt,
                seed=pick.seed,
                attempt=pick.attempt,
                edited=pick.image,
                figures=pick.figures,
                upscale=final,
                mask=mask.result(),
                caption=caption.result(),
                rejected=tuple(tries[shot.id]),
            )
            for shot, pick, final, mask, caption in zip(kept_shots, picks, finals, masks, captions, strict=True)
        ]
        dropped = [tuple(tries[shot.id]) for shot in shots if shot.id not in chosen]
        tags = {tag for shot in kept_shots for tag in shot.tags}
        repeated = phrases_in_every_caption([item.caption for item in items], ignore=[trigger, *tags])
        if repeated:
            announce(
                f"every caption says {', '.join(map(repr, repeated))}: the LoRA will bake it in with the trigger word"
            )
        return assemble_dataset(
            trigger, reference, items, dropped, config.curation.identity, repeated, profile.output_identity()
        )


def edit_and_curate(
    reference: ArtifactRef,
    shots: list[Shot],
    second_inputs: dict[str, list[ArtifactRef]],
    config: DatasetConfig,
    profile: ModelProfile,
    face: tuple[float, ...] | None,
    progress: StageProgress,
) -> tuple[dict[str, Chosen], dict[str, list[Rejection]]]:
    """Edit every shot, keep what passes curation, and edit the rest again with new seeds."""
    curation = config.curation
    chosen: dict[str, Chosen] = {}
    tries: dict[str, list[Rejection]] = {shot.id: [] for shot in shots}
    kept: list[Kept] = []
    pending = shots
    for attempt in range(curation.max_tries):
        seeds = [shot_seed(config.seed, shot.id, attempt) for shot in pending]
        sizes = [shot_size(shot.aspect, config.edit.size, EDIT_MULTIPLE) for shot in pending]
        edited = edit_variation.map(
            [[reference, *_second_input(shot, second_inputs)] for shot in pending],
            [shot.prompt for shot in pending],
            [width for width, _ in sizes],
            [height for _, height in sizes],
            unmapped(config.edit),
            seeds,
            unmapped(profile),
            [f"{shot.id}.png" for shot in pending],
        )
        figures = measure_image.map(edited, unmapped(face))
        progress.wait(figures, "edit" if attempt == 0 else f"edit (try {attempt + 1})")
        refused = []
        for shot, seed, image, measured in zip(pending, seeds, edited, figures, strict=True):
            verdict = judge(measured.result(), face=shot.face, closeup=shot.closeup, config=curation, kept=kept)
            if verdict.keep:
                kept.append(Kept(shot.id, measured.result(), shot.closeup))
                chosen[shot.id] = Chosen(attempt, seed, image.result(), measured.result())
                continue
            tries[shot.id].append(
                Rejection(
                    shot=shot.id,
                    attempt=attempt,
                    seed=seed,
                    image=image.result(),
                    figures=measured.result(),
                    reasons=verdict.reasons,
                )
            )
            print(f"refused {shot.id} (try {attempt + 1} of {curation.max_tries}): {'; '.join(verdict.reasons)}")
            refused.append(shot)
        pending = refused
        if not pending:
            break
        if attempt + 1 < curation.max_tries:
            progress.total += len(pending)
    return chosen, tries


def _second_input(shot: Shot, second_inputs: dict[str, list[ArtifactRef]]) -> list[ArtifactRef]:
    """The garment or pose image a shot takes beside the reference."""
    if shot.needs is None or shot.input_index is None:
        return []
    return [second_inputs[shot.needs][shot.input_index]]

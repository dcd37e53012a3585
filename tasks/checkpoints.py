"""Pick checkpoint: score each checkpoint's samples against the reference face and choose the best, not the last.

The scores go into the LoRA's record, a table artifact and a plot of identity distance by step (a PNG in the
store, shown in the Prefect UI and exported beside the LoRA).

    lora = pick_checkpoint.fn(fitted, training.reference, identity=True)
"""

from __future__ import annotations

from prefect.artifacts import create_table_artifact

from likeness.identity import get_identity_model, reference_face
from likeness.records import LoraRef
from likeness.run.pictures import publish_checkpoints
from likeness.run.progress import prefect_artifact_key
from likeness.stages import stage_task
from likeness.storage.artifacts import ArtifactRef, load_image, put_bytes
from likeness.training.checkpoints import (
    best_checkpoint,
    score_checkpoint,
    score_plot_png,
    scores_table,
)

STAGE_VERSION = 1


@stage_task("pick-checkpoint", STAGE_VERSION, gpu=False)
def pick_checkpoint(lora: LoraRef, reference: ArtifactRef | None, identity: bool) -> LoraRef:
    """The LoRA with each sampled checkpoint's identity score and the best one chosen."""
    sampled = [c for c in lora.checkpoints if c.samples]
    if not identity or reference is None or not sampled:
        why = "--no-identity" if not identity else "no reference photo" if reference is None else "no samples"
        print(f"{lora.trigger}: checkpoints not scored ({why}); the last is the LoRA")
        return lora.model_copy(update={"best_step": lora.final.step})
    model = get_identity_model()
    face, _ = reference_face(load_image(reference), "the reference photo", model)
    scores = [score_checkpoint(c.step, [load_image(s) for s in c.samples], face, model) for c in sampled]
    best = best_checkpoint(scores)
    plot_png = score_plot_png(scores, best.step, f"{lora.trigger}: identity distance of samples by step")
    plot = put_bytes(plot_png, f"{lora.trigger}_identity_by_step.png")
    by_step = {score.step: score for score in scores}
    checkpoints = tuple(
        c.model_copy(update={"identity_distance": by_step[c.step].distance, "faces_found": by_step[c.step].faces_found})
        if c.step in by_step
        else c
        for c in lora.checkpoints
    )
    create_table_artifact(
        key=prefect_artifact_key(f"{lora.trigger}-checkpoint-scores"),
        table=scores_table(scores, best.step),
        description=f"{lora.trigger}: identity distance of each checkpoint's samples (lower is closer)",
    )
    scored = lora.model_copy(update={"checkpoints": checkpoints, "best_step": best.step, "scores_plot": plot})
    # The plot, the scores and the samples as pictures a browser loads from the store (likeness.run.pictures).
    publish_checkpoints(scored)
    print(f"{lora.trigger}: best checkpoint step {best.step} (identity distance {best.distance})")
    return scored

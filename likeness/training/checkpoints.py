"""Choosing a LoRA checkpoint by identity: how close each checkpoint's sample images come to the reference face.

Every checkpoint renders the same prompts with the same seeds, so its samples differ from another checkpoint's only
by what the LoRA learnt. Each sample's main face (the largest clear one, as curation picks it) is compared with the
reference face by dlib's identity distance. A checkpoint's score is the median over all its samples, a sample
without a face counting as a miss, worse than any distance: a checkpoint that loses the face in some samples is
worse than one that draws it every time, and one without a face in more than half its samples has no score (None).
While our trainer runs, `flat_since` reads the scores so far to stop it once they are flat (`train.stop_when_flat`).
No Prefect and no artifact store here: pure functions on PIL images, so this also runs inside a RunPod pod.

    reference, _ = reference_face(photo, "ref.png", model)
    scores = [score_checkpoint(step, samples, reference, model) for step, samples in sampled.items()]
    best = best_checkpoint(scores)
    rows = scores_table(scores, best.step)
    png = score_plot_png(scores, best.step, "Ada Lovelace: identity by checkpoint")
    stop = flat_since(scores, StopWhenFlat(min_step=1000, patience=2))  # None: train on
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Any, NamedTuple

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, computed_field, model_validator

from likeness.config import StopWhenFlat
from likeness.identity import (
    IDENTITY_THRESHOLD,
    Face,
    FaceIdentityModel,
    get_identity_model,
    main_face_distance,
    median_distance,
)

PLOT_SIZE = (8.0, 4.5)  # inches at PLOT_DPI: 800x450 px
PLOT_DPI = 100
# Beyond this many checkpoints a tick at every step crowds the axis.
MAX_STEP_TICKS = 12
# A checkpoint is better than the best so far only by more than this distance, so that a plateau whose scores
# drift down by thousandths still counts as flat.
MIN_IMPROVEMENT = 0.01


class SampleScore(BaseModel):
    """One sample image of a checkpoint: its main face's identity distance to the reference, and faces found."""

    model_config = ConfigDict(frozen=True)

    prompt_index: int = Field(ge=0)
    distance: float | None = Field(ge=0.0)  # None: no face found in the sample
    faces: int = Field(ge=0)

    @model_validator(mode="after")
    def _face_for_distance(self) -> SampleScore:
        """A distance needs a face to be measured on."""
        if self.distance is not None and self.faces == 0:
            raise ValueError(f"sample {self.prompt_index} has a distance but no face")
        return self


class CheckpointScore(BaseModel):
    """One checkpoint's samples and its score: the median distance, a sample without a face counting as a miss."""

    model_config = ConfigDict(frozen=True)

    step: int = Field(ge=0)
    samples: tuple[SampleScore, ...] = Field(min_length=1)

    @computed_field
    @property
    def faces_found(self) -> int:
        """Samples in which a face was found."""
        return sum(sample.distance is not None for sample in self.samples)

    @computed_field
    @property
    def distance(self) -> float | None:
        """Median over all samples with a miss ranked above every distance; None when misses reach the median."""
        return median_distance([sample.distance for sample in self.samples])


def score_checkpoint(
    step: int, samples: Sequence[Image.Image], reference: Face, model: FaceIdentityModel | None = None
) -> CheckpointScore:
    """The identity score of one checkpoint's samples (in prompt order) against the reference face."""
    model = model or get_identity_model()
    scored = []
    for index, image in enumerate(samples):
        faces = model.faces(image)
        scored.append(SampleScore(prompt_index=index, distance=main_face_distance(reference, faces), faces=len(faces)))
    return CheckpointScore(step=step, samples=tuple(scored))


def best_checkpoint(scores: Sequence[CheckpointScore]) -> CheckpointScore:
    """The lowest distance; ties go to more faces found, then the later step; without any score, the same order
    applies, so with no face at all the last step wins: nothing better is known and it has trained longest."""
    if not scores:
        raise ValueError("no checkpoints to choose from")
    return min(
        scores, key=lambda score: (score.distance is None, score.distance or 0.0, -score.faces_found, -score.step)
    )


class StopDecision(NamedTuple):
    """Where training stops early, a sampled step, and why."""

    step: int
    reason: str


def flat_since(scores: Sequence[CheckpointScore], rule: StopWhenFlat) -> StopDecision | None:
    """The first sampled step, from `rule.min_step` on, that ends `rule.patience` sampled checkpoints in a row none
    of which beat the best before it by more than MIN_IMPROVEMENT; None if there is none. No score (faces lost) never
    beats it; the first score does."""
    best: tuple[int, float] | None = None
    flat: list[int] = []
    for score in sorted(scores, key=lambda score: score.step):
        if score.distance is not None and (best is None or score.distance < best[1] - MIN_IMPROVEMENT):
            best, flat = (score.step, score.distance), []
        else:
            flat.append(score.step)
        if len(flat) >= rule.patience and score.step >= rule.min_step:
            return StopDecision(score.step, _flat_reason(best, flat))
    return None


def _flat_reason(best: tuple[int, float] | None, flat: list[int]) -> str:
    """Why the scores are flat, naming the sampled steps that did not improve."""
    steps = f"step {flat[0]}" if len(flat) == 1 else f"steps {flat[0]}-{flat[-1]}"
    count = f"{len(flat)} sampled checkpoint{'s' if len(flat) > 1 else ''}"
    if best is None:
        return f"no identity score in the {count} so far ({steps}): no face in more than half of each one's samples"
    return f"no better identity than step {best[0]}'s {best[1]:.3f} in the {count} since ({steps})"


def scores_table(scores: Sequence[CheckpointScore], best_step: int) -> list[dict[str, Any]]:
    """One row per checkpoint, by step, for `prefect.artifacts.create_table_artifact`."""
    _check_best(scores, best_step)
    return [
        {
            "step": score.step,
            "median identity distance": None if score.distance is None else round(score.distance, 3),
            "faces found": f"{score.faces_found}/{len(score.samples)}",
            "sample distances": _sample_distances(score),
            "best": "best" if score.step == best_step else "",
        }
        for score in sorted(scores, key=lambda score: score.step)
    ]


def score_plot_png(scores: Sequence[CheckpointScore], best_step: int, title: str) -> bytes:
    """An 800x450 PNG of identity distance by step: medians, every sample, the threshold, the best step."""
    # Imported here: matplotlib takes 0.4 s to import, and most processes that read this module never plot (a pod's
    # trainer scoring its samples, the dataset and render stages).
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    _check_best(scores, best_step)
    ordered = sorted(scores, key=lambda score: score.step)
    steps = [score.step for score in ordered]
    found = [
        (score.step, sample.distance) for score in ordered for sample in score.samples if sample.distance is not None
    ]
    top = max([IDENTITY_THRESHOLD * 1.5] + [distance * 1.15 for _, distance in found])
    unscored_y = top * 0.95

    # No pyplot: its global figure registry is not thread-safe; the Agg canvas draws without a display.
    figure = Figure(figsize=PLOT_SIZE, dpi=PLOT_DPI, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    best = next(score for score in ordered if score.step == best_step)
    best_y = unscored_y if best.distance is None else best.distance
    axes.axvline(best_step, color="tab:green", alpha=0.15, linewidth=12)
    if found:
        axes.scatter(*zip(*found, strict=True), s=20, color="tab:blue", alpha=0.4, linewidths=0, label="each sample")
    if any(score.distance is not None for score in ordered):
        # NaN breaks the line, so a checkpoint without a score shows as a gap rather than being bridged.
        medians = [math.nan if score.distance is None else score.distance for score in ordered]
        axes.plot(steps, medians, marker="o", markersize=5, color="tab:blue", label="median of the samples")
    unscored = [score.step for score in ordered if score.distance is None]
    if unscored:
        axes.scatter(
            unscored,
            [unscored_y] * len(unscored),
            marker="x",
            s=50,
            color="tab:gray",
            label="no face in more than half the samples",
        )
    axes.scatter([best_step], [best_y], marker="*", s=220, color="tab:green", zorder=3, label=_best_label(best))
    # Missed faces are noted at every unscored step (along the top, out of the way) and at scored ones while few.
    crowded = len(steps) > MAX_STEP_TICKS
    for score in ordered:
        if score.faces_found < len(score.samples) and not (crowded and score.distance is not None):
            y = unscored_y if score.distance is None else score.distance
            axes.annotate(
                f"{score.faces_found}/{len(score.samples)} faces",
                (score.step, y),
                xytext=(0, -14),
                textcoords="offset points",
                ha="center",
                fontsize=8,
                color="tab:gray",
            )
    axes.axhline(
        IDENTITY_THRESHOLD,
        linestyle="--",
        color="tab:red",
        linewidth=1,
        label=f"dlib threshold {IDENTITY_THRESHOLD}: same person below",
    )
    # A little room under 0 so that a sample identical to the reference is not cut in half by the axis.
    axes.set_ylim(-0.03 * top, top)
    if len(steps) <= MAX_STEP_TICKS:
        axes.set_xticks(steps)
    else:
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel("training step")
    axes.set_ylabel("identity distance to the reference")
    axes.set_title(title)
    axes.grid(axis="y", alpha=0.3)
    figure.legend(loc="outside lower center", ncols=3, frameon=False, fontsize=8)
    buffer = io.BytesIO()
    # Without the Software entry the PNG holds no text that varies: the same scores give the same bytes.
    figure.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


def _check_best(scores: Sequence[CheckpointScore], best_step: int) -> None:
    """Refuse a best step that is not one of the scored checkpoints (or no checkpoints)."""
    if best_step not in {score.step for score in scores}:
        raise ValueError(f"best step {best_step} is not among the scored checkpoints")


def _sample_distances(score: CheckpointScore) -> str:
    """Each sample's distance in prompt order, "no face" for a miss."""
    return ", ".join("no face" if sample.distance is None else f"{sample.distance:.3f}" for sample in score.samples)


def _best_label(best: CheckpointScore) -> str:
    """The legend entry of the best checkpoint."""
    if best.distance is None:
        return f"best: step {best.step} (no checkpoint scored)"
    return f"best: step {best.step} ({best.distance:.3f})"

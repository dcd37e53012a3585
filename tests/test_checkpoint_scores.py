"""Choosing a checkpoint by identity, on real photos with the real dlib model: scores, the choice, table and plot;
and the rule that stops training once the scores are flat."""

from __future__ import annotations

import io

import pytest
from PIL import Image, ImageFilter, ImageOps
from pydantic import ValidationError

from likeness.config import StopWhenFlat
from likeness.identity import IDENTITY_THRESHOLD, Face, FaceIdentityModel, get_identity_model, reference_face
from likeness.training.checkpoints import (
    CheckpointScore,
    SampleScore,
    StopDecision,
    best_checkpoint,
    flat_since,
    score_checkpoint,
    score_plot_png,
    scores_table,
)
from tests.photos import astronaut, grace_hopper, no_face_photo

# Observed here, for orientation: the astronaut vs Grace Hopper 0.68, her mirror image 0.66; vs the astronaut
# herself 0.00, blurred by 1 px 0.22, shrunk to 384 px 0.09.


@pytest.fixture(scope="module")
def model() -> FaceIdentityModel:
    return get_identity_model()


@pytest.fixture(scope="module")
def reference(model: FaceIdentityModel) -> Face:
    return reference_face(astronaut(), "astronaut.png", model)[0]


@pytest.fixture(scope="module")
def scores(model: FaceIdentityModel, reference: Face) -> list[CheckpointScore]:
    """Three checkpoints: another person, the reference person, no face; the last is not the best."""
    samples = {
        500: [grace_hopper(), ImageOps.mirror(grace_hopper())],
        1000: [astronaut().filter(ImageFilter.GaussianBlur(1)), astronaut().resize((384, 384))],
        1500: [no_face_photo(), Image.new("RGB", (512, 512), (90, 140, 200))],
    }
    return [score_checkpoint(step, images, reference, model) for step, images in samples.items()]


def checkpoint(step: int, *distances: float | None) -> CheckpointScore:
    samples = tuple(
        SampleScore(prompt_index=index, distance=distance, faces=0 if distance is None else 1)
        for index, distance in enumerate(distances)
    )
    return CheckpointScore(step=step, samples=samples)


def test_the_checkpoint_that_draws_the_reference_person_is_best(scores: list[CheckpointScore]) -> None:
    other, same, no_face = scores
    assert [score.step for score in scores] == [500, 1000, 1500]
    assert all(IDENTITY_THRESHOLD < sample.distance < 0.8 for sample in other.samples)
    assert all(sample.distance < 0.35 for sample in same.samples)
    assert all(sample.faces >= 1 for sample in other.samples + same.samples)
    assert [sample.prompt_index for sample in same.samples] == [0, 1]
    assert (other.faces_found, same.faces_found, no_face.faces_found) == (2, 2, 0)
    assert IDENTITY_THRESHOLD < other.distance < 0.8
    assert same.distance < 0.35
    assert no_face.distance is None
    assert all(sample.distance is None and sample.faces == 0 for sample in no_face.samples)
    assert best_checkpoint(scores).step == 1000
    assert best_checkpoint(scores[::-1]).step == 1000


def test_a_checkpoint_score_survives_json() -> None:
    score = checkpoint(500, 0.2, None, 0.4)
    dumped = score.model_dump(mode="json")
    assert dumped["distance"] == 0.4 and dumped["faces_found"] == 2
    assert CheckpointScore.model_validate(dumped) == score


@pytest.mark.parametrize(
    ("distances", "median"),
    [
        pytest.param((0.3,), 0.3, id="one"),
        pytest.param((0.2, 0.4, 0.3), 0.3, id="all-found"),
        pytest.param((0.2, None, 0.4), 0.4, id="a-miss-ranks-above-every-distance"),
        pytest.param((0.1, 0.2, 0.3, None), 0.25, id="even-count"),
        pytest.param((0.1, None), None, id="face-in-half"),
        pytest.param((0.1, None, None), None, id="face-in-a-third"),
        pytest.param((None, None), None, id="no-face"),
    ],
)
def test_a_sample_without_a_face_counts_as_a_miss(distances: tuple[float | None, ...], median: float | None) -> None:
    score = checkpoint(500, *distances)
    assert score.distance == (None if median is None else pytest.approx(median))
    assert score.faces_found == sum(distance is not None for distance in distances)


def test_a_checkpoint_that_loses_the_face_loses_to_one_that_always_draws_it() -> None:
    steady, patchy = checkpoint(500, 0.5, 0.5, 0.5), checkpoint(1000, 0.1, None, None)
    assert best_checkpoint([steady, patchy]).step == 500


def test_ties_go_to_more_faces_found_then_the_later_step() -> None:
    every_face, one_missed = checkpoint(500, 0.3, 0.3, 0.3), checkpoint(1000, 0.3, 0.3, None)
    assert every_face.distance == one_missed.distance
    assert best_checkpoint([every_face, one_missed]).step == 500
    assert best_checkpoint([one_missed, every_face]).step == 500
    earlier, later = checkpoint(500, 0.3, 0.4), checkpoint(1000, 0.4, 0.3)
    assert best_checkpoint([earlier, later]).step == 1000
    assert best_checkpoint([later, earlier]).step == 1000


def test_without_any_face_the_last_step_is_chosen() -> None:
    scores = [checkpoint(1000, None, None), checkpoint(1500, None, None), checkpoint(500, None, None)]
    assert best_checkpoint(scores).step == 1500
    # Any scored checkpoint wins over those without a score, however far its face is.
    assert best_checkpoint([*scores, checkpoint(250, 1.1, 1.2)]).step == 250


def test_no_checkpoints_is_an_error() -> None:
    with pytest.raises(ValueError, match="no checkpoints"):
        best_checkpoint([])


def test_scores_are_validated() -> None:
    with pytest.raises(ValidationError, match="distance but no face"):
        SampleScore(prompt_index=0, distance=0.2, faces=0)
    with pytest.raises(ValidationError):
        CheckpointScore(step=500, samples=())


def test_the_table_has_one_row_per_checkpoint_and_marks_the_best(scores: list[CheckpointScore]) -> None:
    rows = scores_table(scores[::-1], 1000)
    assert [row["step"] for row in rows] == [500, 1000, 1500]
    assert [row["best"] for row in rows] == ["", "best", ""]
    assert [row["faces found"] for row in rows] == ["2/2", "2/2", "0/2"]
    assert rows[1]["median identity distance"] == round(scores[1].distance, 3)
    assert rows[2]["median identity distance"] is None
    assert rows[2]["sample distances"] == "no face, no face"

    with pytest.raises(ValueError, match="best step 750"):
        scores_table(scores, 750)


def png_image(png: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(png))
    image.load()
    return image


def test_the_plot_is_an_800x450_png_with_the_same_bytes_each_time(scores: list[CheckpointScore]) -> None:
    png = score_plot_png(scores, 1000, "Eileen Collins: identity by checkpoint")
    image = png_image(png)
    assert image.format == "PNG"
    assert image.size == (800, 450)
    assert score_plot_png(scores, 1000, "Eileen Collins: identity by checkpoint") == png
    assert score_plot_png(scores, 500, "Eileen Collins: identity by checkpoint") != png


def test_the_plot_draws_checkpoints_without_a_face_and_many_steps() -> None:
    no_face = [checkpoint(step, None, None) for step in (500, 1000)]
    assert png_image(score_plot_png(no_face, 1000, "no face")).size == (800, 450)
    many = [checkpoint(250 * number, 0.9 - 0.03 * number, None, 0.8) for number in range(1, 21)]
    assert png_image(score_plot_png(many, 5000, "twenty checkpoints")).size == (800, 450)
    with pytest.raises(ValueError, match="best step"):
        score_plot_png([], 500, "none")


def every_100_steps(*medians: float | None) -> list[CheckpointScore]:
    """Sampled checkpoints at steps 100, 200, ... of these scores (None: no face)."""
    return [checkpoint(100 * (index + 1), median) for index, median in enumerate(medians)]


def stop_step(medians: tuple[float | None, ...], min_step: int = 100, patience: int = 2) -> int | None:
    decision = flat_since(every_100_steps(*medians), StopWhenFlat(min_step=min_step, patience=patience))
    return decision and decision.step


@pytest.mark.parametrize(
    ("medians", "step"),
    [
        # Better every time: never flat.
        ((0.60, 0.50, 0.45, 0.40, 0.35), None),
        # A plateau after step 200: the second sample that is no better stops it.
        ((0.60, 0.45, 0.46, 0.45, 0.30), 400),
        # Noise: a worse score, or one less than 0.01 below the best, is no better; a gain of more resets the count.
        ((0.50, 0.495, 0.40, 0.395, 0.392, 0.30), 500),
        ((0.50, 0.52, 0.45, 0.46, 0.445, 0.38), 500),
        ((0.50, 0.52, 0.45, 0.46, 0.43, 0.38), None),
        # A lost face is no better; a face found again that beats the best resets the count.
        ((0.50, None, 0.40, None, 0.41), 500),
        ((0.50, None, None), 300),
        # Nothing scored at all: flat from the start.
        ((None, None, None), 200),
        # The first score is better than none.
        ((None, 0.60, 0.55), None),
    ],
)
def test_training_stops_after_patience_samples_without_a_better_score(medians, step) -> None:
    assert stop_step(medians) == step


def test_a_run_never_stops_before_the_minimum_step_and_then_counts_every_flat_sample() -> None:
    flat = (0.40, 0.45, 0.45, 0.45, 0.45, 0.45)
    assert stop_step(flat, min_step=100, patience=2) == 300
    assert stop_step(flat, min_step=450, patience=2) == 500
    # The samples before min_step count toward the patience: at min_step it is already spent.
    assert stop_step(flat, min_step=600, patience=4) == 600
    assert stop_step(flat, min_step=100, patience=6) is None


def test_the_decision_says_where_and_why_and_ignores_the_order_given() -> None:
    rule = StopWhenFlat(min_step=100, patience=2)
    scores = every_100_steps(0.52, 0.41, 0.43, None)
    assert flat_since(scores[::-1], rule) == StopDecision(
        400, "no better identity than step 200's 0.410 in the 2 sampled checkpoints since (steps 300-400)"
    )
    assert flat_since(every_100_steps(None), StopWhenFlat(min_step=100, patience=1)) == StopDecision(
        100,
        "no identity score in the 1 sampled checkpoint so far (step 100): no face in more than half of each "
        "one's samples",
    )
    assert flat_since([], rule) is None

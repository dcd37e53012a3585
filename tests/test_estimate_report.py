"""The parts of the estimate that need no model: the guard's outcomes, and a run's measured seconds beside it."""

from __future__ import annotations

import json

import pytest
from rich.console import Console

from likeness.estimate.refines import FACE_SHARE, Refine, TileCalls, face_share_of, guard_outcomes
from likeness.estimate.report import Measured, measured_against_estimate, measured_table
from likeness.models.profiles import load_profile
from likeness.records import StageCost

UPSCALE = load_profile("production").upscale  # 20 steps, start steps 12-18, 1024 px tiles overlapping by 128


def test_a_close_up_is_guarded_on_the_whole_image():
    # At 2048x2048 a close-up's face region is the whole image (9 tiles): the guard's refine is the result.
    outcomes = guard_outcomes(UPSCALE, (2048, 2048), FACE_SHARE["close-up of the face"])
    assert len(outcomes) == 8  # the lowest start step that keeps the face, 12 to 18, or none
    # Every step keeps it: the bisection tries 15, 13 and 12 (5 + 7 + 8 steps) and keeps 12.
    assert outcomes[0] == Refine(calls=(TileCalls(1024, 1024, calls=3 * 9, steps=20 * 9),), face_checks=3 + 2)
    # None does: it tries 15, 17 and 18 (5 + 3 + 2 steps) and keeps the latest of equal drift, 18.
    assert outcomes[-1] == Refine(calls=(TileCalls(1024, 1024, calls=3 * 9, steps=10 * 9),), face_checks=5)
    assert all(90 <= outcome.tile_steps <= 180 for outcome in outcomes)
    assert outcomes[-1].tiles == 27


def test_a_full_body_shot_is_guarded_on_the_tile_around_its_face_which_the_whole_image_reuses():
    outcomes = guard_outcomes(UPSCALE, (1536, 2048), FACE_SHARE["full body"])
    # A 164 px face in one of the image's six 1024 px tiles: three tries on that tile, then the other five tiles of
    # the whole at the step kept (12 if every step keeps the face, 18 if none).
    assert outcomes[0] == Refine(calls=(TileCalls(1024, 1024, calls=3 + 5, steps=20 + 8 * 5),), face_checks=5)
    assert outcomes[-1] == Refine(calls=(TileCalls(1024, 1024, calls=3 + 5, steps=10 + 2 * 5),), face_checks=5)


def test_a_face_no_tile_holds_is_guarded_on_its_surroundings_at_their_own_size():
    # Upper body on 1536x2048: the 410 px face sits across the overlap of the two columns, so the guard refines its
    # surroundings, 1026 x 923 px: two calls a try, padded to 1024 x 928 as the refine pads them.
    outcomes = guard_outcomes(UPSCALE, (1536, 2048), FACE_SHARE["upper body"])
    face_region, whole = TileCalls(1024, 928, calls=3 * 2, steps=20 * 2), TileCalls(1024, 1024, calls=6, steps=8 * 6)
    assert outcomes[0] == Refine(calls=(face_region, whole), face_checks=5)
    assert (outcomes[0].tile_steps, outcomes[0].tiles) == (40 + 48, 6 + 6)


def test_off_the_tile_the_guard_refines_a_full_body_face_at_its_surroundings_size():
    outcomes = guard_outcomes(
        UPSCALE.model_copy(update={"guard_on_tile": False}), (1536, 2048), FACE_SHARE["full body"]
    )
    # The 164 px face grown by 3/4 of it each side: one 410 px region, padded to 416 px, three tries; then all six
    # tiles of the whole at the step kept.
    assert outcomes[0] == Refine(calls=(TileCalls(416, 416, 3, 20), TileCalls(1024, 1024, 6, 8 * 6)), face_checks=5)


def test_a_hidden_face_is_refined_once_at_the_configured_step():
    steps = (20 - UPSCALE.start_step) * 6
    assert guard_outcomes(UPSCALE, (1536, 2048), None) == [Refine((TileCalls(1024, 1024, 6, steps),), 0)]


def test_the_face_share_follows_the_shots_framing():
    from likeness.dataset.catalogue import load_catalogue

    shots = {shot.id: shot for shot in load_catalogue().shots()}
    shares = {face_share_of(shot) for shot in shots.values()}
    assert None in shares  # the back views
    assert shares - {None} <= set(FACE_SHARE.values())
    assert face_share_of(next(s for s in shots.values() if s.closeup)) == FACE_SHARE["close-up of the face"]


def cost(stage: str, seconds: float, most: float | None) -> dict:
    return StageCost(stage=stage, gpu="H100", evaluations=1, tflop=1.0, seconds=seconds, peak_gib=1.0,
                     memory_mode="none", usd=0.01, most_seconds=most, most_usd=None).model_dump()  # fmt: skip


def test_measured_seconds_stand_beside_the_stages_estimate():
    estimate = [cost("dataset: edit", 40, 120), cost("dataset: upscale + refine", 60, 90), cost("training", 300, 300),
                cost("renders", 20, 20)]  # fmt: skip
    measured = measured_against_estimate(estimate, {"dataset": 150.0, "training": 330.0, "other": 5.0})
    assert measured == [
        Measured("dataset", "H100", 100.0, 210.0, 150.0),  # the dataset's rows add up to its flow run
        Measured("training", "H100", 300.0, 300.0, 330.0),
    ]
    # An older record has no at-most figures.
    old = [{key: value for key, value in cost("training", 300, None).items() if not key.startswith("most")}]
    assert measured_against_estimate(old, {"training": 330.0}) == [Measured("training", "H100", 300.0, None, 330.0)]
    console = Console(width=120, record=True)
    console.print(measured_table(measured, "ada"))
    text = console.export_text()
    assert "1.50" in text and "1.10" in text
    assert json.dumps([row._asdict() for row in measured])  # the artifact's rows serialise


def test_a_malformed_estimate_is_refused():
    with pytest.raises(ValueError, match="stage"):
        measured_against_estimate([{"gpu": "H100"}], {"training": 1.0})

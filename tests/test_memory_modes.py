"""Memory modes per role: `auto` picks the cheapest mode that fits the GPU by the estimate's counts, a role can name
its own, the choice is said with its reason, and a model loads in the mode chosen."""

from __future__ import annotations

import pytest

from likeness.config import ModelProfile
from likeness.estimate.work import Count, Work, choose_mode
from likeness.inputs import InvalidInput
from likeness.models.pipelines import memory_mode
from likeness.models.profiles import load_profile
from likeness.run.memory import choose_memory, memory_for_dataset

GIB = 2**30
# A FLUX-sized refine: a 12B transformer and a 4.7B text encoder in bf16, a few GB of a tile's activations.
REFINE = {"transformer": 11_901_408_320, "text_encoder_2": 4_762_310_656, "vae": 83_819_683}
REFINE_ACTIVATIONS = {"transformer": 3 * GIB, "vae": 2 * GIB}


def refine_work() -> Work:
    work = Work("dataset: upscale + refine", parameters=dict(REFINE), activations=dict(REFINE_ACTIVATIONS))
    work.add(Count(flops=1e15, moved_bytes=1e11, streams=100))
    return work


def with_offload(profile: ModelProfile, **modes: str) -> ModelProfile:
    return profile.with_memory_modes(modes)  # type: ignore[arg-type]


def test_auto_takes_resident_where_it_fits_then_model_then_sequential_offload() -> None:
    work = refine_work()
    resident = sum(REFINE.values()) * 2 + 3 * GIB
    assert work.peak_bytes("none") == resident
    on_h100 = choose_mode(work, 80 * GIB, "auto")
    assert on_h100.mode == "none" and on_h100.peak_bytes == resident
    assert on_h100.reason == f"resident, the cheapest that fits: {resident / GIB:.1f} GiB of 72.0 GiB usable"
    # 24 GB: the 12B transformer alone (22.2 GiB) leaves too little beside its activations for model offload.
    on_4090 = choose_mode(work, 24 * GIB, "auto")
    assert on_4090.mode == "sequential"
    assert "resident would need 34.2 GiB; model offload would need 25.2 GiB" in on_4090.reason
    assert choose_mode(work, 32 * GIB, "auto").mode == "model"
    nothing = choose_mode(work, 2 * GIB, "auto")
    assert nothing.mode is None and nothing.reason.startswith("nothing fits: resident would need 34.2 GiB")


def test_a_named_mode_is_kept_where_it_fits_and_lightened_where_it_does_not() -> None:
    work = refine_work()
    kept = choose_mode(work, 80 * GIB, "model")
    assert kept.mode == "model" and "model offload as the profile says" in kept.reason
    lighter = choose_mode(work, 32 * GIB, "none")
    assert lighter.mode == "model" and "(resident would need 34.2 GiB)" in lighter.reason
    # What the stage's own code holds its model in (a trainer: resident) comes before the profile's.
    work.offload = "none"
    assert choose_mode(work, 80 * GIB, "sequential").mode == "none"


def test_a_role_names_its_own_mode_and_the_profile_gives_the_rest() -> None:
    production = load_profile("production")
    assert production.offload == "auto"
    assert {production.memory_mode(role) for role in production.models} == {"auto"}
    data = production.model_dump(mode="json")
    data["models"]["editor"]["offload"] = "model"
    data["offload"] = "sequential"
    mixed = ModelProfile.model_validate(data)
    assert mixed.memory_mode("editor") == "model" and mixed.memory_mode("refiner") == "sequential"
    # Memory modes move weights, not numbers: the cache keys of every stage stay as they were.
    assert mixed.output_identity() == production.output_identity()
    assert with_offload(production, refiner="none").output_identity() == production.output_identity()
    with pytest.raises(ValueError, match="offload"):
        ModelProfile.model_validate({**data, "offload": "fast"})


def test_the_choice_is_said_per_role_and_a_gpu_too_small_fails_before_loading_naming_the_role() -> None:
    production = load_profile("production")
    said: list[str] = []
    chosen = choose_memory(production, {"refiner": refine_work()}, 80 * GIB, said.append)
    assert chosen.memory_mode("refiner") == "none" and chosen.memory_mode("editor") == "auto"
    assert said == [f"refiner: {choose_mode(refine_work(), 80 * GIB, 'auto').reason}"]
    with pytest.raises(InvalidInput, match=r"^refiner does not fit this GPU \(2 GiB\): nothing fits"):
        choose_memory(production, {"refiner": refine_work()}, 2 * GIB, said.append)


def test_a_model_loads_in_the_chosen_mode_and_never_in_an_unchosen_auto_on_a_gpu() -> None:
    production = load_profile("production")
    assert memory_mode("refiner", production, "cpu") == "none"  # on the CPU nothing is offloaded
    assert memory_mode("refiner", with_offload(production, refiner="model"), "cuda") == "model"
    with pytest.raises(ValueError, match="refiner: memory mode 'auto' is chosen per GPU when a stage starts"):
        memory_mode("refiner", production, "cuda")


def test_on_the_cpu_a_stage_chooses_nothing(likeness_env) -> None:
    tiny = load_profile("tiny")
    said: list[str] = []
    assert memory_for_dataset(tiny, None, [], said.append) is tiny  # type: ignore[arg-type]
    assert said == []


def test_loading_shows_no_bars_where_a_command_turned_them_off(likeness_env, monkeypatch, capfd) -> None:
    from transformers.utils import logging as transformers_logging

    from likeness.models import pipelines

    # As after `likeness render` imported transformers before it quieted the libraries.
    transformers_logging.enable_progress_bar()
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    pipelines.clear()
    try:
        pipelines.get_pipeline("captioner", load_profile("tiny"))
        assert not transformers_logging.is_progress_bar_enabled()
        assert "Loading weights" not in capfd.readouterr().err
    finally:
        pipelines.clear()
        transformers_logging.enable_progress_bar()

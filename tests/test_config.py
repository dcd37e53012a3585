"""Profiles, run configuration, settings and cache keys: the data that decides what a run does."""

from __future__ import annotations

import pytest

from likeness.config import ROLES, InvalidSettings, RunConfig, StopWhenFlat, check_shot_count, check_stop_when_flat
from likeness.inputs import parse_overrides
from likeness.models.profiles import available_profiles, load_profile
from likeness.settings import Settings
from likeness.storage.caching import stage_key


def test_every_profile_names_a_model_for_every_role():
    assert {"permissive", "production", "tiny"} <= set(available_profiles())
    for name in available_profiles():
        profile = load_profile(name)
        # The animator (image-to-video) is the one optional role.
        assert set(profile.models) - {"animator"} == set(ROLES)
        RunConfig.from_profile(profile)


def test_production_names_the_real_models():
    models = load_profile("production").models
    assert models["editor"].source == "Qwen/Qwen-Image-Edit-2511"
    assert models["editor"].lora.source == "lightx2v/Qwen-Image-Edit-2511-Lightning"
    assert models["video"].source.startswith("Wan-AI/Wan2.2-")
    assert (models["upscaler"].source, models["upscaler"].file) == ("Kim2091/UltraSharp", "4x-UltraSharp.pth")


def test_the_permissive_profile_has_no_non_commercial_model():
    for role, spec in load_profile("permissive").models.items():
        assert "non-commercial" not in spec.licence and "-nc" not in spec.licence, role


def test_the_dataset_defaults_come_from_the_profile_and_no_identity_is_a_setting():
    tiny = load_profile("tiny")
    config = RunConfig.from_profile(tiny, {"dataset": {"curation": {"identity": False}}})
    assert config.dataset.variations == tiny.dataset.variations
    assert config.dataset.curation.identity is False
    assert config.dataset.curation.require_face is False  # the tiny profile's threshold, kept under the override
    assert RunConfig.from_profile(load_profile("production")).dataset.variations is None  # the whole catalogue


def test_the_number_of_shots_is_held_to_the_profile_limit():
    limits = load_profile("production").limits
    check_shot_count(60, limits)
    with pytest.raises(InvalidSettings, match=r"the number of dataset shots \(61\) is above 60.*--beyond-limits"):
        check_shot_count(61, limits)
    check_shot_count(61, limits, beyond_limits=True)
    with pytest.raises(InvalidSettings, match="no shots"):
        check_shot_count(0, limits)


def test_overrides_merge_into_the_profile_defaults():
    tiny = load_profile("tiny")
    config = RunConfig.from_profile(tiny, {"dataset": {"upscale": {"start_step": 3}}, "render": {"seed": 5}})
    assert config.dataset.upscale.start_step == 3
    assert config.dataset.upscale.steps == tiny.upscale.steps
    assert config.render.seed == 5
    assert config.train == tiny.train


def test_unknown_override_fields_are_refused():
    with pytest.raises(InvalidSettings, match="render.colour: unknown setting"):
        RunConfig.from_profile(load_profile("tiny"), {"render": {"colour": "red"}})


def test_stop_when_flat_is_set_field_by_field_and_refused_where_it_could_never_stop():
    tiny = load_profile("tiny")  # 6 steps, a checkpoint and samples every 3

    def refused(*assignments: str) -> tuple[str, ...]:
        with pytest.raises(InvalidSettings) as caught:
            RunConfig.from_profile(tiny, parse_overrides(list(assignments)))
        return caught.value.problems

    assert RunConfig.from_profile(tiny).train.stop_when_flat is None
    config = RunConfig.from_profile(
        tiny, parse_overrides(["train.stop_when_flat.min_step=3", "train.stop_when_flat.patience=1"])
    )
    assert config.train.stop_when_flat == StopWhenFlat(min_step=3, patience=1)
    assert config.train.model_dump(mode="json")["stop_when_flat"] == {"min_step": 3, "patience": 1}
    # Off, it is not in the dump, so cache keys and output folders from before the setting existed still match.
    assert "stop_when_flat" not in RunConfig.from_profile(tiny).train.model_dump(mode="json")
    assert refused("train.stop_when_flat.patience=2") == ("train.stop_when_flat.min_step: Field required",)
    assert refused("train.stop_when_flat.min_step=0", "train.stop_when_flat.patience=0") == (
        "train.stop_when_flat.min_step=0: Input should be greater than 0",
        "train.stop_when_flat.patience=0: Input should be greater than or equal to 1",
    )
    # Step 6 is the last: stopping there would stop nothing.
    assert refused("train.stop_when_flat.min_step=4", "train.stop_when_flat.patience=1") == (
        "train: stop_when_flat.min_step (4) leaves no sample before the last step (samples every 3 of 6 steps): "
        "training could never stop early",
    )


def test_stop_when_flat_is_refused_without_identity_scores_and_on_ai_toolkit():
    config = load_profile("tiny").train.model_copy(update={"stop_when_flat": StopWhenFlat(min_step=3, patience=1)})
    for backend in ("local", "runpod-native"):
        check_stop_when_flat(config, backend, scored=True)
        check_stop_when_flat(config.model_copy(update={"stop_when_flat": None}), backend, scored=False)
    with pytest.raises(InvalidSettings, match=r"train.stop_when_flat stops on the identity score .*\(--no-identity"):
        check_stop_when_flat(config, "local", scored=False)
    with pytest.raises(InvalidSettings, match=r"train.stop_when_flat needs our trainer.*AI Toolkit cannot"):
        check_stop_when_flat(config, "runpod-aitoolkit", scored=True)


def test_start_step_becomes_img2img_strength():
    upscale = load_profile("tiny").upscale.model_copy(update={"steps": 20, "start_step": 15})
    assert upscale.strength == 0.25


def test_cache_keys_follow_inputs_parameters_version_and_models():
    tiny = load_profile("tiny")
    inputs = {"image": {"key": "sha256/ab/x.png", "sha256": "ab", "size": 3}, "config": tiny.upscale, "profile": tiny}
    key = stage_key("upscale-image", 1, inputs)
    assert stage_key("upscale-image", 1, dict(inputs)) == key
    assert stage_key("upscale-image", 2, inputs) != key
    assert stage_key("upscale-image", 1, {**inputs, "image": {**inputs["image"], "sha256": "cd"}}) != key
    assert stage_key("upscale-image", 1, {**inputs, "config": tiny.upscale.model_copy(update={"start_step": 1})}) != key
    other_models = tiny.model_copy(
        update={"models": {**tiny.models, "refiner": load_profile("production").models["refiner"]}}
    )
    assert stage_key("upscale-image", 1, {**inputs, "profile": other_models}) != key
    reworded = tiny.model_copy(update={"description": "same models, new words", "device": "cuda"})
    assert stage_key("upscale-image", 1, {**inputs, "profile": reworded}) == key


def test_settings_read_the_prefix_and_dotenv_and_hide_secrets(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("LIKENESS_PROFILE=production\nLIKENESS_RUNPOD_API_KEY=rp-secret-123\n")
    monkeypatch.setenv("LIKENESS_DATA_DIR", str(tmp_path / "data"))
    settings = Settings()
    assert settings.profile == "production"
    assert settings.data_dir == tmp_path / "data"
    assert settings.runpod_api_key.get_secret_value() == "rp-secret-123"
    assert "rp-secret-123" not in repr(settings) and "rp-secret-123" not in settings.model_dump_json()


def test_the_smaller_gpu_profile_animates_with_the_5b_its_lora_is_trained_on():
    five_b = load_profile("production-5b")
    animator, video = five_b.models["animator"], five_b.models["video"]
    assert animator.source == video.source == "Wan-AI/Wan2.2-TI2V-5B-Diffusers"
    assert not animator.speed_loras and five_b.train.base == "wan22_5b"

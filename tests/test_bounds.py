"""Every numeric setting is bounded by its profile's limits, and prompt templates are checked, before any work."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from likeness.config import (
    HARD_ADVICE,
    SEED_RANGE,
    SOFT_ADVICE,
    Ceiling,
    InvalidSettings,
    Limit,
    Limits,
    ModelProfile,
    RunConfig,
    render_template,
)
from likeness.models.profiles import PROFILES_DIR, available_profiles, load_profile

TINY = load_profile("tiny")
PRODUCTION = load_profile("production")
# Where each limits section applies in a run's settings.
SECTIONS = {
    "dataset.edit": "edit",
    "dataset.upscale": "upscale",
    "dataset.caption": "caption",
    "train": "train",
    "render": "render",
}


def overrides(path: str, **values: Any) -> dict[str, Any]:
    """`{"dataset": {"edit": {"size": 8}}}` for overrides("dataset.edit", size=8)."""
    tree: dict[str, Any] = dict(values)
    for part in reversed(path.split(".")):
        tree = {part: tree}
    return tree


def setting(config: BaseModel, path: str) -> Any:
    for part in path.split("."):
        config = getattr(config, part)
    return config


def refused(profile: ModelProfile, settings: dict[str, Any], beyond_limits: bool = False) -> str:
    """The message of the InvalidSettings that `settings` must raise."""
    with pytest.raises(InvalidSettings) as caught:
        RunConfig.from_profile(profile, settings, beyond_limits=beyond_limits)
    assert str(caught.value) == "\n".join(caught.value.problems)
    return str(caught.value)


def number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def ceiling_cases():
    for name in available_profiles():
        limits = load_profile(name).limits
        for path, section in SECTIONS.items():
            fields = type(setting(RunConfig.from_profile(load_profile(name)), path)).model_fields
            for field, limit in getattr(limits, section):
                for kind in ("soft", "hard"):
                    if field in fields and getattr(limit, kind):
                        yield pytest.param(name, path, field, kind, id=f"{name}-{path}.{field}-{kind}")


def at_and_just_above(limit: Limit, top: float, field: str, annotation: type) -> tuple[float, float]:
    """The ceiling itself and the next value the other rules allow above it."""
    if field == "video_frames":  # Wan's 4k+1
        return int(top), int(top) + 4
    if limit.multiple:
        return int(top), int(top) + limit.multiple.of
    if annotation is int:
        return int(top), int(top) + 1
    return top, math.nextafter(top, math.inf)


@pytest.mark.parametrize(("name", "path", "field", "kind"), list(ceiling_cases()))
def test_a_ceiling_admits_its_value_and_refuses_the_next(name, path, field, kind):
    profile = load_profile(name)
    limit: Limit = getattr(getattr(profile.limits, SECTIONS[path]), field)
    ceiling: Ceiling = getattr(limit, kind)
    annotation = type(setting(RunConfig.from_profile(profile), path)).model_fields[field].annotation
    top = ceiling.max
    at, above = at_and_just_above(limit, top, field, annotation)
    # Settings bound to this one move with it: more steps at the default interval would also go past the limit on
    # the number of checkpoints, and a caption of more words needs as many new tokens.
    extra = {
        ("train", "steps"): {"checkpoint_every": int(top)},
        ("dataset.caption", "max_words"): {"max_new_tokens": int(top) + 1},
    }.get((path, field), {})
    # A hard ceiling above a soft one is only reached past the soft one, deliberately.
    hard = kind == "hard"
    config = RunConfig.from_profile(profile, overrides(path, **{field: at}, **extra), beyond_limits=hard)
    assert setting(config, f"{path}.{field}") == at

    message = refused(profile, overrides(path, **{field: above}, **extra), beyond_limits=hard)
    assert f"{path}.{field}={number(above)} is above {number(top)}, {ceiling.why}" in message
    if hard:
        assert HARD_ADVICE in message and SOFT_ADVICE not in message
    else:
        assert message.endswith(SOFT_ADVICE)
        passed = RunConfig.from_profile(profile, overrides(path, **{field: above}, **extra), beyond_limits=True)
        assert setting(passed, f"{path}.{field}") == above


def multiple_cases():
    for name in available_profiles():
        limits = load_profile(name).limits
        for path, section in SECTIONS.items():
            for field, limit in getattr(limits, section):
                if limit.multiple:
                    yield pytest.param(name, path, field, id=f"{name}-{path}.{field}")


@pytest.mark.parametrize(("name", "path", "field"), list(multiple_cases()))
def test_a_size_off_the_models_multiple_is_refused_even_beyond_limits(name, path, field):
    profile = load_profile(name)
    of = getattr(getattr(profile.limits, SECTIONS[path]), field).multiple.of
    # A tile's overlap must stay below the tile, so small tiles are tried without one.
    extra = {"overlap": 0} if (path, field) == ("dataset.upscale", "tile") else {}
    RunConfig.from_profile(profile, overrides(path, **{field: 2 * of}, **extra))
    message = refused(profile, overrides(path, **{field: 2 * of + of // 2}, **extra), beyond_limits=True)
    assert f"{path}.{field}={2 * of + of // 2} is not a multiple of {of}, " in message
    assert message.endswith(f"; use {2 * of} or {3 * of}")


@pytest.mark.parametrize("path", ["render", "train"])
def test_the_5b_needs_sizes_in_multiples_of_32_and_the_a14b_of_16(path):
    five_b = load_profile("production-5b")
    message = refused(five_b, overrides(path, size=720), beyond_limits=True)
    assert f"{path}.size=720 is not a multiple of 32, as Wan 2.2 TI2V-5B's VAE downsamples 16x" in message
    assert "use 704 or 736" in message
    assert setting(RunConfig.from_profile(five_b, overrides(path, size=736)), f"{path}.size") == 736
    assert setting(RunConfig.from_profile(PRODUCTION, overrides(path, size=720)), f"{path}.size") == 720
    message = refused(PRODUCTION, overrides(path, size=712), beyond_limits=True)
    assert f"{path}.size=712 is not a multiple of 16, as the A14B's Wan 2.1 VAE downsamples 8x" in message


def test_renders_with_speed_loras_take_exactly_their_steps():
    message = refused(PRODUCTION, overrides("render", steps=3), beyond_limits=True)
    assert "render.steps=3: the video model's speed LoRAs are distilled for exactly 4 steps" in message
    assert "render.steps=8 is above 4, the 4 steps the lightx2v LoRAs are distilled for" in refused(
        PRODUCTION, overrides("render", steps=8), beyond_limits=True
    )


@pytest.mark.parametrize("path", ["dataset", "train", "render"])
def test_seeds_fit_32_bits(path):
    top = SEED_RANGE - 1
    assert setting(RunConfig.from_profile(TINY, overrides(path, seed=top)), f"{path}.seed") == top
    for seed in (SEED_RANGE, -1):
        message = refused(TINY, overrides(path, seed=seed), beyond_limits=True)
        assert message == (
            f"{path}.seed={seed}: a seed must be 0 to 4294967295 (32 bits), the range every generator takes; "
            f"{HARD_ADVICE}"
        )


@pytest.mark.parametrize(
    ("path", "field", "value", "message"),
    [
        ("render", "lora_scale", -0.5, "render.lora_scale=-0.5: Input should be greater than or equal to 0"),
        ("render", "guidance_scale", math.inf, "render.guidance_scale=Infinity: Input should be a finite number"),
        ("train", "learning_rate", math.nan, "train.learning_rate=NaN: Input should be a finite number"),
        ("dataset.edit", "condition_area", 1023, "dataset.edit.condition_area=1023: Input should be greater than"),
        ("dataset.edit", "true_cfg_scale", 0.5, "dataset.edit.true_cfg_scale=0.5: Input should be greater than"),
        ("render", "video_frames", 1, "render.video_frames=1: Input should be greater than or equal to 5"),
        ("train", "checkpoint_every", 0, "train.checkpoint_every=0: Input should be greater than 0"),
    ],
)
def test_lower_bounds_and_non_finite_numbers_are_refused_even_beyond_limits(path, field, value, message):
    assert refused(TINY, overrides(path, **{field: value}), beyond_limits=True).startswith(message)


def test_every_numeric_setting_has_a_limit():
    """Seeds have their own 32-bit range; start_step is bounded by steps, a tile's overlap by its tile; the A14B
    boundary and the caption dropout are fractions, the expert switch interval is at most the steps."""
    for path, section in SECTIONS.items():
        config = setting(RunConfig.from_profile(TINY), path)
        numeric = {name for name, field in type(config).model_fields.items() if field.annotation in (int, float)}
        exempt = {"seed", "start_step", "overlap", "esrgan_overlap", "boundary_ratio", "caption_dropout"}
        assert numeric - exempt - {"switch_boundary_every"} <= set(type(getattr(Limits(), section)).model_fields), path


def test_checkpoint_every_past_steps_is_fine_and_the_number_of_checkpoints_is_bounded():
    config = RunConfig.from_profile(PRODUCTION, {"train": {"steps": 300, "checkpoint_every": 5000}})
    assert config.train.checkpoint_every == 5000
    limit = PRODUCTION.limits.train.checkpoints.soft
    assert limit.max == 100
    RunConfig.from_profile(PRODUCTION, {"train": {"steps": 2000, "checkpoint_every": 20}})
    settings = {"train": {"steps": 2000, "checkpoint_every": 19}}
    message = refused(PRODUCTION, settings)
    assert message == (
        "the number of checkpoints of train.steps=2000 with train.checkpoint_every=19 (106) is above 100, "
        f"{limit.why}; {SOFT_ADVICE}"
    )
    assert RunConfig.from_profile(PRODUCTION, settings, beyond_limits=True).train.checkpoint_every == 19


@pytest.mark.parametrize(
    ("field", "where"), [("image_prompts", "[0]"), ("video_prompts", "[0]"), ("negative_prompt", "")]
)
def test_prompts_longer_than_the_text_encoder_reads_are_refused(field, where):
    top = int(PRODUCTION.limits.render.prompt_chars.soft.max)

    def prompt(length: int) -> Any:
        text = ("{trigger} " + "x" * length)[:length] if field != "negative_prompt" else "x" * length
        return [text] if where else text

    RunConfig.from_profile(PRODUCTION, {"render": {field: prompt(top)}})
    message = refused(PRODUCTION, {"render": {field: prompt(top + 1)}})
    assert message.startswith(f"the length of render.{field}{where} ({top + 1} characters) is above {top}, ")
    assert RunConfig.from_profile(PRODUCTION, {"render": {field: prompt(top + 1)}}, beyond_limits=True)


def test_several_problems_come_one_line_each():
    message = refused(
        load_profile("production-5b"),
        {"render": {"size": 4096, "steps": 101}, "dataset": {"caption": {"max_new_tokens": 513}}},
    )
    lines = message.splitlines()
    assert len(lines) == 3
    assert (
        "render.size=4096 is above 1280, the largest size Wan 2.2 renders (720p: 1280x704); "
        "pass --beyond-limits to go past it deliberately"
    ) in lines
    assert any(line.startswith("dataset.caption.max_new_tokens=513 is above 512, ") for line in lines)


def test_pydantic_errors_become_one_line_per_setting():
    message = refused(TINY, {"render": {"video_frames": 6, "fps": "fast"}, "train": {"colour": "red"}})
    assert message.splitlines() == [
        "train.colour: unknown setting",
        'render.fps="fast": Input should be a valid integer, unable to parse string as an integer',
    ]
    message = refused(TINY, {"render": {"video_frames": 6}, "train": {"colour": "red"}})
    assert message.splitlines() == [
        "train.colour: unknown setting",
        "render: video_frames must be 4k+1 for Wan (5, 9, ..., 41, 81), got 6",
    ]


# Profiles ---------------------------------------------------------------------------------------------------------


def profile_data(name: str = "tiny") -> dict[str, Any]:
    return yaml.safe_load((PROFILES_DIR / f"{name}.yaml").read_text())


def write_profile(tmp_path: Path, data: dict[str, Any]) -> str:
    path = tmp_path / "custom.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


@pytest.mark.parametrize("name", available_profiles())
def test_every_profile_loads_with_defaults_inside_its_limits(name):
    profile = load_profile(name)
    assert RunConfig.from_profile(profile).limit_problems(profile.limits) == []


def test_tiny_states_every_limit_of_its_own():
    """Production's limits name production's models: a tiny default would give a false reason."""
    stated = profile_data()["limits"]
    for section, fields in Limits().model_dump().items():
        assert set(stated[section]) == set(fields), section


def test_permissive_refuses_guidance_klein_ignores():
    message = refused(load_profile("permissive"), {"dataset": {"upscale": {"guidance_scale": 3.5}}}, beyond_limits=True)
    assert message.startswith("dataset.upscale.guidance_scale=3.5 is above 0, as FLUX.2 klein 4B is step-distilled")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"render": {"size": 320}},
            "profile 'tiny': render.size=320 is above 256, what keeps a tiny render to about a second on a CPU; "
            "a profile's defaults must be within its own limits",
        ),
        ({"train": {"size": 528}}, "profile 'tiny': train.size=528 is above 512, "),
        ({"train": {"size": 72}}, "profile 'tiny': train.size=72 is not a multiple of 16, "),
    ],
    ids=["soft", "hard", "multiple"],
)
def test_a_profile_whose_defaults_break_its_limits_is_refused(tmp_path, change, message):
    data = profile_data()
    for section, values in change.items():
        data[section] = {**data[section], **values}
    with pytest.raises(InvalidSettings) as caught:
        load_profile(write_profile(tmp_path, data))
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("limits", "message"),
    [
        ({"render": {"colour": {"soft": {"max": 1, "why": "x"}}}}, "limits.render.colour: unknown setting"),
        ({"colour": {}}, "limits.colour: unknown setting"),
        (
            {"render": {"size": {"soft": {"max": 1280, "why": "x"}, "maximum": 3}}},
            "limits.render.size.maximum: unknown",
        ),
        (
            {"render": {"size": {"multiple": {"of": 32, "why": "x"}}}},
            "limits.render.size: a limit needs a soft or a hard",
        ),
        (
            {"render": {"fps": {"soft": {"max": 60, "why": "x"}, "hard": {"max": 30, "why": "y"}}}},
            "limits.render.fps: the soft ceiling (60) is above the hard one (30)",
        ),
        ({"render": {"fps": {"soft": {"max": 60}}}}, "limits.render.fps.soft.why: Field required"),
    ],
)
def test_a_malformed_limits_section_is_refused(tmp_path, limits, message):
    data = profile_data("production")
    data["limits"] = limits
    with pytest.raises(InvalidSettings) as caught:
        load_profile(write_profile(tmp_path, data))
    assert message in str(caught.value)


def test_a_profile_states_only_the_limits_that_differ():
    data = profile_data("production")
    data["limits"] = {"render": {"size": {"soft": {"max": 960, "why": "a smaller GPU's limit"}}}}
    profile = ModelProfile.model_validate(data)
    assert profile.limits.render.size.soft.max == 960 and profile.limits.render.size.multiple is None
    assert profile.limits.train == Limits().train
    assert "a smaller GPU's limit" in refused(profile, {"render": {"size": 992}})


# The tiny profile's hard limits are the tiny models' own -------------------------------------------------------


def test_the_tiny_hard_limits_are_what_the_tiny_models_can_do(likeness_env):
    from likeness.models.pipelines import get_pipeline

    limits = TINY.limits
    video = get_pipeline("video", TINY)
    patch = video.transformer.config.patch_size
    size_step = video.vae_scale_factor_spatial * patch[1]
    assert limits.render.size.multiple.of == limits.train.size.multiple.of == size_step
    rope = video.transformer.config.rope_max_seq_len
    assert limits.render.size.hard.max == limits.train.size.hard.max == rope * size_step
    frames = int(limits.render.video_frames.hard.max)
    assert frames == (rope * patch[0] - 1) * video.vae_scale_factor_temporal + 1
    video(prompt="ada", height=32, width=32, num_frames=frames, num_inference_steps=1, output_type="np")
    with pytest.raises(RuntimeError):
        video(prompt="ada", height=32, width=32, num_frames=frames + 4, num_inference_steps=1, output_type="np")

    assert limits.edit.size.multiple.of == get_pipeline("editor", TINY).vae_scale_factor * 2
    assert limits.upscale.size.multiple.of == get_pipeline("refiner", TINY).vae_scale_factor * 2


# Prompt templates ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "problem"),
    [
        (
            "{trigger.__class__} in a cafe",
            "attribute or index access in {trigger.__class__} is not allowed; use {trigger}",
        ),
        ("{trigger[0]} in a cafe", "attribute or index access in {trigger[0]} is not allowed; use {trigger}"),
        ("{} in a cafe", "positional field {} is not allowed; use {trigger}"),
        ("{0} in a cafe", "positional field {0} is not allowed; use {trigger}"),
        ("{trigger!r} in a cafe", "conversion !r in {trigger!r} is not allowed; use {trigger}"),
        ("{trigger:>10} in a cafe", "format spec :>10 in {trigger:>10} is not allowed; use {trigger}"),
        ("{name} in a cafe", "unknown placeholder {name}; use {trigger} (write {{ and }} for literal braces)"),
        ("{trigger in a cafe", "unbalanced braces (expected '}' before end of string); write {{ and }}"),
        ("{trigger} in a cafe}", "unbalanced braces (Single '}' encountered in format string); write {{ and }}"),
        ("{trigger} in a {cafe", "unbalanced braces ("),
    ],
)
def test_a_bad_prompt_template_is_refused_when_the_run_starts(template, problem):
    message = refused(TINY, {"render": {"image_prompts": [template]}}, beyond_limits=True)
    assert message.startswith(f'render.image_prompts[0]="{template}": {problem}')
    message = refused(TINY, {"render": {"video_prompts": ["{trigger} waves", template]}}, beyond_limits=True)
    assert message.startswith(f'render.video_prompts[1]="{template}": {problem}')
    with pytest.raises(InvalidSettings, match="is not allowed|unknown placeholder|unbalanced braces"):
        render_template(template, trigger="Ada")


def test_render_template_fills_the_trigger_and_keeps_doubled_braces():
    assert render_template("{trigger} x {{y}}", trigger="Ada") == "Ada x {y}"
    assert render_template("no placeholder", trigger="Ada") == "no placeholder"
    with pytest.raises(ValueError, match=r"needs a value for \{trigger\}"):
        render_template("{trigger} waves")
    config = RunConfig.from_profile(TINY, {"render": {"image_prompts": ["{trigger} with {{braces}}"]}})
    assert render_template(config.render.image_prompts[0], trigger="Ada") == "Ada with {braces}"


def test_at_least_one_prompt():
    assert RunConfig.from_profile(TINY, {"render": {"image_prompts": []}}).render.video_prompts
    assert RunConfig.from_profile(TINY, {"render": {"video_prompts": []}}).render.image_prompts
    message = refused(TINY, {"render": {"image_prompts": [], "video_prompts": []}})
    assert message == "render: image_prompts and video_prompts are both empty: give at least one prompt"


def test_a_size_the_base_model_cannot_take_is_refused_where_the_profiles_limits_allow_it():
    # Tiny's limits take multiples of 16 (its VAE); a spec for the 5B needs 32, even beyond limits.
    message = refused(TINY, {"train": {"base": "wan22_5b", "size": 80}}, beyond_limits=True)
    assert message == (
        "train.size=80 (train.base=wan22_5b) is not a multiple of 32, as Wan 2.2 TI2V-5B needs "
        "(VAE stride x 2x2 patch); use 64 or 96"
    )
    message = refused(TINY, {"train": {"base": "wan22_5b", "size": 96, "buckets": [48]}})
    assert message.startswith("train.buckets[0]=48 (train.base=wan22_5b) is not a multiple of 32")
    # A size off the profile's own multiple is one problem, not two.
    assert refused(TINY, {"train": {"base": "wan22_5b", "size": 72}}).count("\n") == 0
    assert RunConfig.from_profile(TINY, {"train": {"base": "wan22_5b", "size": 96}}).train.size == 96

"""What a render run is asked for, as `likeness render`'s options and the render deployment's form fields both
give it: the settings the options set, the prompts listed in the form, the still to animate and the prompt it
comes to life with. The CLI and the flow share these, so an option and its field do the same thing; `prefix`
names a setting in messages as its caller does (`--frames` for the CLI, `frames` for the form).

    settings = with_render_options({"render": {"steps": 8}}, frames=41, fx="seed-look", upscale="4k", seed=3)
    entries = listed_prompts(["{trigger} reading in a library", "{trigger} on a ferry at dawn"])
"""

from __future__ import annotations

import copy
import io
import json
from collections.abc import Sequence
from typing import Any

from PIL import Image

from likeness.config import SEED_RANGE, ModelProfile, RenderConfig, render_template
from likeness.inputs import InvalidInput, normalise_reference
from likeness.media.post_fx import UnknownPostFx, post_fx_preset
from likeness.render.prompt_files import MAX_PROMPT_CHARS, MAX_PROMPTS, PromptEntry, control_character
from likeness.render.prompts import video_prompt
from likeness.storage.locations import read_location

UPSCALE_SIZES = {"4k": 3840, "1440p": 2560, "1080p": 1920}
# A still is resized to the render's size; below this it holds no face to animate.
STILL_MIN_SIDE = 32
STILL = "still to animate"


def with_render_options(
    assignments: dict[str, Any] | None,
    frames: int | None = None,
    fx: str | None = None,
    upscale: str | None = None,
    seed: int | None = None,
    prefix: str = "--",
) -> dict[str, Any]:
    """The settings `assignments` (nested, as `--set` or the form's `overrides` give them; not changed) with those
    the render options set: `frames` render.video_frames, `fx` render.fx, `upscale` render.upscale_long_side (a
    size of UPSCALE_SIZES), `seed` render.seed. An option wins over the same setting in `assignments`; a value no
    render can take is refused, naming the option."""
    if frames is not None and (frames < 5 or (frames - 1) % 4):
        raise InvalidInput(f"{prefix}frames {frames}: video_frames must be 4k+1 for Wan (5, 9, ..., 41, 81)")
    if fx is not None:
        try:
            post_fx_preset(fx)
        except UnknownPostFx as exc:
            raise InvalidInput(f"{prefix}fx: {exc}") from None
    if upscale is not None and upscale not in UPSCALE_SIZES:
        raise InvalidInput(f"{prefix}upscale {upscale!r} is not one of {', '.join(UPSCALE_SIZES)}")
    if seed is not None and not 0 <= seed < SEED_RANGE:
        raise InvalidInput(f"{prefix}seed {seed}: a seed is 0 to {SEED_RANGE - 1} (32 bits)")
    settings = copy.deepcopy(assignments or {})
    render = settings.setdefault("render", {})
    options = {
        "video_frames": frames,
        "fx": fx,
        "upscale_long_side": None if upscale is None else UPSCALE_SIZES[upscale],
        "seed": seed,
    }
    chosen = {name: value for name, value in options.items() if value is not None}
    if chosen and not isinstance(render, dict):
        raise InvalidInput(f"the settings' render is {render!r}, not a mapping of render settings")
    if chosen:
        render.update(chosen)
    return settings


def listed_prompts(prompts: Sequence[str], field: str = "prompts") -> list[PromptEntry]:
    """Prompts given as a list (the render form's `prompts`), taken as a `.txt` prompts file's lines are: each an
    image prompt (`{trigger}` the trigger word), refused when empty, too long or holding a control character, and
    at most MAX_PROMPTS of them; `field` names the list in messages."""
    if len(prompts) > MAX_PROMPTS:
        raise InvalidInput(
            f"{field}: {len(prompts)} prompts; one run renders at most {MAX_PROMPTS}: split them into several runs"
        )
    problems = []
    for number, prompt in enumerate(prompts, start=1):
        text = prompt.strip()
        control = control_character(text)
        if not text:
            problems.append(f"prompt {number} is empty")
        elif len(text) > MAX_PROMPT_CHARS:
            problems.append(f"prompt {number} is {len(text)} characters; a prompt may be at most {MAX_PROMPT_CHARS}")
        elif control is not None:
            problems.append(f"prompt {number} holds the control character U+{ord(control):04X}: is it text?")
    if problems:
        raise InvalidInput("; ".join(f"{field}: {problem}" for problem in problems))
    return [PromptEntry(prompt=prompt.strip()) for prompt in prompts]


def check_animator(profile: ModelProfile, prefix: str = "--") -> None:
    """Refuse a still to animate where the profile names no image-to-video model (its `animator`)."""
    if "animator" not in profile.models:
        raise InvalidInput(f"{prefix}animate needs an image-to-video model, and profile {profile.name!r} names none")


def read_still(location: str) -> tuple[bytes, str | None]:
    """The still to animate at `location` (a path the worker can read, an s3:// or https:// URL, a key in the
    store) as an oriented 8-bit RGB PNG, and the lineage it carries where it is a render (its `likeness` chunk)."""
    data = read_location(location, STILL)
    still = normalise_reference(data, f"{STILL} {location}", STILL_MIN_SIDE, STILL)
    with Image.open(io.BytesIO(data)) as image:
        lineage = image.info.get("likeness") if image.format == "PNG" else None
    return still.png, lineage


def still_prompt(lineage: str | None, config: RenderConfig, trigger: str) -> str:
    """The video prompt a still comes to life with: the still's own prompt (from the lineage a render carries)
    with motion and camera added, else the character's first video prompt."""
    seed = config.seed
    if lineage:
        return video_prompt(json.loads(lineage)["prompt"], seed)
    if config.video_prompts:
        return render_template(config.video_prompts[0], trigger=trigger)
    return video_prompt(trigger, seed)

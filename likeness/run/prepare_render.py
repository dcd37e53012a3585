"""What a `render` run checks before any work, in the order it checks it, and the prompts it renders.

The trained folder's LoRA (present, for this character, for the profile's Wan transformer), the
prompts (a file, or seeded variations from the prompter or the templates), the settings within the
profile's limits, the scoring reference, a still to animate, the weights and room to write. Every
problem is raised as one of `likeness.run.prepare.CHECK_FAILURES` (or an `OSError`) before a model loads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

from PIL import Image

from likeness.config import ModelProfile, ModelSpec, Role, RunConfig
from likeness.inputs import InvalidInput, ReferenceImage, normalise_trigger, parse_overrides, read_reference_image
from likeness.models.profiles import load_profile, preflight
from likeness.render.prompt_files import PromptEntry
from likeness.render.prompts import CharacterPrompt
from likeness.render.requests import STILL, STILL_MIN_SIDE, check_animator, still_prompt, with_render_options
from likeness.run.outputs import MANIFEST, REFERENCE, read_record
from likeness.run.prepare import Say, say_on_stderr
from likeness.run.write_checks import check_writable, stored_video_transformer_config
from likeness.settings import Settings, get_settings
from likeness.storage.artifacts import get_store
from likeness.storage.store import ArtifactStore


class RenderInputs(NamedTuple):
    """A `likeness render` run's checked inputs: the LoRA files, the reference, the prompts and the settings."""

    trigger: str
    lora_files: list[Path]
    step: int
    reference: ReferenceImage | None
    prompts: list[PromptEntry] | None
    profile: ModelProfile
    config: RunConfig
    beyond_limits: bool
    # `--animate`: the still (as PNG) and the video prompt it comes to life with.
    still_png: bytes | None = None
    animate_prompt: str | None = None


def render_inputs(
    name: str,
    out: Path,
    prompts_file: Path | None,
    images: int | None,
    videos: int | None,
    frames: int | None,
    fx: str | None,
    upscale: str | None,
    image: Path | None,
    profile: str | None,
    overrides: list[str] | None,
    beyond_limits: bool,
    say: Say = say_on_stderr,
) -> RenderInputs:
    """Check a render run's inputs before Prefect starts and before any model loads."""
    from likeness.render.prompt_files import read_prompts_file

    trigger = normalise_trigger(name)
    if not out.is_dir():
        raise InvalidInput(f"--from {out} does not exist: give the output folder of a produce or train run")
    record = read_record(out)
    if record is None or not record.get("lora"):
        raise InvalidInput(f"--from {out} holds no trained LoRA (no lora entries in its {MANIFEST})")
    if record["identity"].get("trigger") != trigger:
        raise InvalidInput(f"--from {out} holds the LoRA of {record['identity'].get('trigger')!r}, not {trigger!r}")
    best = next((entry for entry in record["lora"] if entry.get("best")), record["lora"][-1])
    lora_files = [out / file for file in best.get("published_as", best["files"])]
    missing = [str(path) for path in lora_files if not path.is_file()]
    if missing:
        raise InvalidInput(f"--from {out}: the LoRA file {', '.join(missing)} is gone")
    check_lora_files(lora_files, load_profile(profile or record["identity"]["profile"]["name"]))
    if prompts_file is not None and (images or videos):
        raise InvalidInput("give --prompts FILE or --images/--videos N, not both")
    model_profile = load_profile(profile or record["identity"]["profile"]["name"])
    assignments = with_render_options(parse_overrides(overrides or []), frames, fx, upscale)
    config = RunConfig.from_profile(model_profile, assignments, beyond_limits=beyond_limits)
    config = with_recorded_strengths(config, best.get("strengths"), say)
    entries: list[PromptEntry] | None = None
    if prompts_file is not None:
        entries = read_prompts_file(prompts_file)
    elif images or videos:
        entries = prompt_variations(CharacterPrompt(trigger=trigger), images or 0, videos or 0, config.render.seed, say)
    from likeness.render.jobs import plan_renders

    plan_renders(config.render, trigger, entries, model_profile.limits.render, beyond_limits)
    reference_path = image or (out / REFERENCE if (out / REFERENCE).is_file() else None)
    reference = read_reference_image(reference_path) if reference_path else None
    if reference is None:
        say("note: no reference photo (--image), so the renders are not scored")
    return RenderInputs(trigger, lora_files, best["step"], reference, entries, model_profile, config, beyond_limits)


def with_recorded_strengths(config: RunConfig, probe: dict[str, Any] | None, say: Say = say_on_stderr) -> RunConfig:
    """The settings with the strengths the folder's probe chose (its `strengths` record) where they leave them
    open: a strength set with `--set` wins."""
    open_names = [name for name in ("lora_scale", "speed_lora_scale") if getattr(config.render, name) is None]
    taken = {name: probe[name] for name in open_names if probe and probe.get(name) is not None}
    if not probe or not taken:
        return config
    chosen = ", ".join(f"render.{name}={value:g}" for name, value in taken.items())
    say(f"note: the LoRA's strength probe chose {chosen} ({probe['grid']}); --set either to choose your own")
    return config.model_copy(update={"render": config.render.model_copy(update=taken)})


def with_still(inputs: RenderInputs, path: Path) -> RenderInputs:
    """The inputs with `--animate`'s still and its video prompt: the still's own prompt (a render carries it) with
    motion and camera added, else the character's first video prompt."""
    check_animator(inputs.profile)
    still = read_reference_image(path, STILL, min_side=STILL_MIN_SIDE)
    lineage = Image.open(path).info.get("likeness") if path.suffix.lower() == ".png" else None
    return inputs._replace(
        still_png=still.png, animate_prompt=still_prompt(lineage, inputs.config.render, inputs.trigger)
    )


def prepare_render(inputs: RenderInputs, out: Path, animate: bool, settings: Settings) -> ArtifactStore:
    """The weights of the roles the run loads, and a writable folder and store; the store."""
    roles: list[Role] = ["video", *(["animator"] if animate else [])]
    preflight(inputs.profile, settings, roles)
    store = get_store()
    check_writable(out, store, (0, 0))
    return store


def check_lora_files(paths: list[Path], profile: ModelProfile) -> None:
    """Refuse a LoRA file that is not one, or not one for the profile's Wan transformer, reading only its header.

    The transformer is built on the meta device from its config on disk; where the weights are not here yet
    (a first run), the loader's own checks are what is left."""
    import torch
    from diffusers import WanTransformer3DModel

    from likeness.models.speed_loras import check_wan_lora_keys

    config = stored_video_transformer_config(profile, get_settings())
    if config is None:
        return
    with torch.device("meta"):
        transformer = WanTransformer3DModel.from_config(config)
    for path in paths:
        check_wan_lora_keys(path, transformer)


def prompt_variations(
    character: CharacterPrompt, images: int, videos: int, seed: int, say: Say = say_on_stderr
) -> list[PromptEntry]:
    """`images` image prompts and `videos` video prompts (image prompts with motion and camera added), from the
    prompter LLM in the settings, or (unset, down, slow or talking nonsense) the seeded templates; which is said."""
    from likeness.render.llm import make_video_prompt
    from likeness.render.llm import prompt_variations as written_variations

    llm = prompter()
    stills, source = written_variations(character, max(images, videos), seed, llm)
    entries = [PromptEntry(prompt=prompt, kind="image") for prompt in stills[:images]]
    sources = {source}
    for prompt in stills[:videos]:
        clip, clip_source = make_video_prompt(prompt, seed, llm)
        entries.append(PromptEntry(prompt=clip, kind="video"))
        sources.add(clip_source)
    if llm is not None and "templates" in sources:
        settings = get_settings()
        where = settings.prompter_url or settings.prompter_local
        say(f"warning: the prompter {where} gave no usable prompts (see the log); using the seeded templates")
    return entries


def prompter() -> Any:
    """The prompter the settings name: an OpenAI-compatible endpoint, a transformers model here, or None."""
    from likeness.render.llm import LlmSettings

    settings = get_settings()
    if settings.prompter_url:
        return LlmSettings(
            url=settings.prompter_url,
            model=settings.prompter_model,
            api_key=settings.prompter_api_key,
            timeout_s=settings.prompter_timeout_s,
        )
    if settings.prompter_local:
        from likeness.models.profiles import spec_path
        from likeness.render.local_llm import TransformersPrompter

        spec = ModelSpec(source=settings.prompter_local, licence="the model's own")
        return TransformersPrompter(spec_path("prompter", spec, settings))
    return None

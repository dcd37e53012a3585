"""Render prompts: a character's structured prompt, seeded variations of it, video prompts, prompt files.

A prompt is the trigger word first, then the character, the shot (situation, framing, lighting, lens),
the style and the trigger words of any extra LoRA. Variations are drawn from small photographic
vocabularies, the same ones for the same seed; `likeness.render.llm` has an LLM write them instead.

    character = CharacterPrompt(trigger="Ada_Lovelace", description="a woman with dark curly hair")
    character.compose(situation="a candid photo in a cafe", lens="35mm")
    # -> "Ada_Lovelace, a woman with dark curly hair, a candid photo in a cafe, 35mm, photorealistic, ..."
    prompts = template_variations(character, count=4, seed=7)
    video_prompt(prompts[0], seed=7)   # the same picture, with a camera move and motion
    entries = read_prompts_file(Path("prompts.yaml"))   # [PromptEntry(prompt=..., kind="video", seed=3, ...)]
"""

from __future__ import annotations

import difflib
import itertools
import random
import re
import unicodedata
from collections.abc import Mapping, Sequence
from pathlib import Path
from string import Formatter
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, model_validator

from likeness.inputs import InvalidInput

DEFAULT_STYLE = "photorealistic, natural skin texture, fine detail"
# Comma-separated parts: a placeholder left empty (no description, no extra LoRA) leaves no empty part.
DEFAULT_TEMPLATE = "{trigger}, {description}, {situation}, {framing}, {lighting}, {lens}, {style}, {lora_triggers}"
PLACEHOLDERS = frozenset(
    {"trigger", "description", "style", "situation", "framing", "lighting", "lens", "lora_triggers"}
)

# Scenes with no other people in them: a second face in a render borrows the character's.
SITUATIONS = (
    "a candid photo in a cafe",
    "walking down a city street after rain",
    "reading on a park bench in autumn",
    "on a rooftop terrace above the city",
    "at the water's edge on a pebble beach",
    "making coffee in a cosy kitchen",
    "browsing the shelves of an old bookshop",
    "on a mountain trail",
    "at a desk by a window in a quiet studio",
    "on a train, looking out of the window",
    "at a night market under paper lanterns",
    "in a greenhouse full of plants",
    "sitting on the steps of an old stone building",
    "leaning on a balcony railing",
    "in a museum gallery",
    "cycling along a canal",
)
FRAMINGS = (
    "close-up portrait",
    "head and shoulders",
    "medium shot from the waist up",
    "three-quarter body shot",
    "full body shot",
    "over-the-shoulder shot",
    "low-angle shot",
    "profile view",
)
LIGHTING = (
    "soft natural light",
    "golden hour light",
    "overcast daylight",
    "warm ambient light",
    "dappled sunlight",
    "backlit with a soft rim light",
    "soft diffused light",
    "late afternoon sun",
)
LENSES = (
    "35mm",
    "50mm f/1.8, shallow depth of field",
    "85mm portrait lens, creamy bokeh",
    "24mm wide angle",
    "shot on 35mm film, fine grain",
    "135mm telephoto, compressed background",
)
CAMERA_MOVES = (
    "slow dolly-in",
    "gentle handheld drift",
    "slow pan to the right",
    "slow orbit around the subject",
    "static camera",
    "slow pull-back",
    "subtle push-in",
    "smooth tracking shot",
)
# Noun phrases, so that they read after any prompt without knowing who "she" or "he" is.
MOTIONS = (
    "a slow turn of the head towards the camera and a smile",
    "a soft laugh, looking away",
    "a slow blink and a faint smile",
    "a hand brushing the hair from the face",
    "a deep breath, the shoulders relaxing",
    "a glance down, then back up into the lens",
    "a slight nod, listening",
    "a shift of weight into a relaxed pose",
)
AMBIENCE = (
    "hair moving in the breeze",
    "light shifting softly across the face",
    "the background gently alive",
    "dust motes drifting in the light",
    "leaves stirring in the background",
    "fabric moving gently",
)

# config.SEED_RANGE, the range every generator takes; config is not imported, as it loads the dataset's models.
SEED_RANGE = 2**32
# Far more than any list of prompts: a larger file is a mistake, and it is refused before it is read.
MAX_PROMPTS_FILE_BYTES = 4 * 2**20
TEXT_SUFFIXES = ("", ".txt")
YAML_SUFFIXES = (".yaml", ".yml")

Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]


# Templates ---------------------------------------------------------------------------------------------------------


class PromptTemplateProblem(InvalidInput):
    """A prompt template Likeness refuses: unbalanced braces, a format spec, or no {trigger}."""


class UnknownPlaceholder(PromptTemplateProblem):
    """A prompt template with a placeholder Likeness has no value for."""

    def __init__(self, template: str, placeholder: str) -> None:
        self.template = template
        self.placeholder = placeholder
        near = difflib.get_close_matches(placeholder, PLACEHOLDERS, n=1)
        hint = f" (did you mean {{{near[0]}}}?)" if near else ""
        super().__init__(
            f"prompt template {template!r}: unknown placeholder {{{placeholder}}}{hint}; known: {_known()} "
            "(write {{ and }} for literal braces)"
        )


def _known() -> str:
    return ", ".join(f"{{{name}}}" for name in sorted(PLACEHOLDERS))


def check_template(template: str) -> None:
    """Refuse a template unless it uses only PLACEHOLDERS, plainly (no format spec), and has {trigger}."""
    try:
        fields = [(name, spec, conv) for _, name, spec, conv in Formatter().parse(template) if name is not None]
    except ValueError as exc:
        raise PromptTemplateProblem(
            f"prompt template {template!r}: {exc}; write {{{{ and }}}} for literal braces"
        ) from None
    for name, spec, conversion in fields:
        if name not in PLACEHOLDERS:
            raise UnknownPlaceholder(template, name)
        if spec or conversion:
            written = "{" + name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
            raise PromptTemplateProblem(f"prompt template {template!r}: write {{{name}}}, not {written}")
    if "trigger" not in {name for name, _, _ in fields}:
        raise PromptTemplateProblem(
            f"prompt template {template!r} has no {{trigger}}: without the LoRA's word the character does not appear"
        )


def fill_template(template: str, values: Mapping[str, str]) -> str:
    """The template with each placeholder replaced by its value, and the empty comma-separated parts dropped."""
    check_template(template)
    text = "".join(literal + (values[name] if name else "") for literal, name, _, _ in Formatter().parse(template))
    return _tidy(text)


def _tidy(text: str) -> str:
    text = re.sub(r",(?:\s*,)+", ",", text)
    return re.sub(r"\s+", " ", text).strip(" ,")


class CharacterPrompt(BaseModel):
    """What every prompt of one character says: its trigger word first, then who it is and how it looks."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    trigger: Text
    description: str = ""
    style: str = DEFAULT_STYLE
    # The words that call up any extra LoRA rendered with the character's (a style, a garment).
    lora_triggers: tuple[Text, ...] = ()

    def compose(
        self,
        situation: str = "",
        framing: str = "",
        lighting: str = "",
        lens: str = "",
        template: str = DEFAULT_TEMPLATE,
    ) -> str:
        """One full prompt of this character in the shot described."""
        values = {
            "trigger": self.trigger,
            "description": self.description,
            "style": self.style,
            "lora_triggers": ", ".join(self.lora_triggers),
            "situation": situation,
            "framing": framing,
            "lighting": lighting,
            "lens": lens,
        }
        return fill_template(template, values)


def template_variations(prompt: CharacterPrompt, count: int, seed: int, template: str | None = None) -> list[str]:
    """`count` prompts of different shots, the same for the same seed; no shot repeats until all are used."""
    if count < 0:
        raise ValueError(f"count must be 0 or more, not {count}")
    template = DEFAULT_TEMPLATE if template is None else template
    check_template(template)
    rng = random.Random(seed)
    shots = list(itertools.product(FRAMINGS, LIGHTING, LENSES))
    unused: dict[str, list[tuple[str, str, str]]] = {}
    prompts: list[str] = []
    while len(prompts) < count:
        # Every situation once before any twice: a short list spans the most different scenes.
        for situation in rng.sample(SITUATIONS, len(SITUATIONS))[: count - len(prompts)]:
            if not unused.get(situation):
                unused[situation] = rng.sample(shots, len(shots))
            framing, lighting, lens = unused[situation].pop()
            prompts.append(prompt.compose(situation, framing, lighting, lens, template=template))
    return prompts


def video_prompt(image_prompt: str, seed: int) -> str:
    """The image prompt as a video prompt: a camera move, the character's motion and the scene's, by seed."""
    base = image_prompt.strip().rstrip(".,; ")
    if not base:
        raise InvalidInput("an empty prompt cannot become a video prompt")
    # Seeded by the prompt too, so that the prompts of one list, sharing a seed, do not all move alike.
    rng = random.Random(f"{seed}:{base}")
    return f"{base}, {rng.choice(CAMERA_MOVES)}, {rng.choice(MOTIONS)}, {rng.choice(AMBIENCE)}"


# Prompt files ------------------------------------------------------------------------------------------------------


class PromptsFileProblem(InvalidInput):
    """A prompts file Likeness refuses, one line per problem, each naming the file (and the line or entry)."""

    def __init__(self, path: Path, problems: Sequence[str]) -> None:
        self.path = path
        self.problems = tuple(problems)
        super().__init__("\n".join(f"prompts file {path}: {problem}" for problem in self.problems))


class PromptEntry(BaseModel):
    """One prompt of a prompts file, with the options that replace the run's settings for it (None: the run's)."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    prompt: Text
    kind: Literal["image", "video"] | None = None
    seed: int | None = Field(default=None, ge=0, lt=SEED_RANGE)
    frames: int | None = Field(default=None, gt=0)
    negative_prompt: str | None = None
    lora_scale: float | None = Field(default=None, ge=0.0)
    fx: Text | None = None

    @model_validator(mode="after")
    def _frames_are_for_video(self) -> PromptEntry:
        if self.frames is not None and self.kind == "image":
            raise ValueError("frames is an option of video prompts, and this one is kind: image")
        return self


def read_prompts_file(path: Path) -> list[PromptEntry]:
    """The prompts of a `.txt` file (one a line; blank lines and # comments skipped) or a `.yaml`/`.yml` list."""
    suffix = path.suffix.lower()
    if suffix not in TEXT_SUFFIXES + YAML_SUFFIXES:
        raise PromptsFileProblem(
            path, [f"unknown kind of file {suffix!r}: use .txt (one prompt a line) or .yaml (a list of prompts)"]
        )
    text = _read_text(path)
    return _yaml_entries(path, text) if suffix in YAML_SUFFIXES else _text_entries(path, text)


def _read_text(path: Path) -> str:
    try:
        if path.is_dir():
            raise PromptsFileProblem(path, ["is a folder, not a file"])
        size = path.stat().st_size
        if size > MAX_PROMPTS_FILE_BYTES:
            raise PromptsFileProblem(
                path, [f"is {size} bytes, more than the {MAX_PROMPTS_FILE_BYTES} a list of prompts needs: is it text?"]
            )
        data = path.read_bytes()
    except FileNotFoundError:
        raise PromptsFileProblem(path, ["no such file"]) from None
    except OSError as exc:
        raise PromptsFileProblem(path, [f"cannot be read ({exc.strerror or exc.__class__.__name__})"]) from None
    if b"\0" in data:
        raise PromptsFileProblem(path, ["is not text: it holds NUL bytes (a binary file, or UTF-16: save it as UTF-8)"])
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise PromptsFileProblem(
            path, [f"is not text: byte 0x{data[exc.start]:02x} at offset {exc.start} is not UTF-8"]
        ) from None
    if not text.strip():
        raise PromptsFileProblem(path, ["is empty"])
    return text


def _text_entries(path: Path, text: str) -> list[PromptEntry]:
    entries, problems = [], []
    # Split on newlines only: str.splitlines also breaks at form feeds and other separators inside a line.
    for number, line in enumerate(text.split("\n"), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        control = next((ch for ch in line if ch != "\t" and unicodedata.category(ch) == "Cc"), None)
        if control is not None:
            problems.append(f"line {number}: control character U+{ord(control):04X}: is it text?")
            continue
        entries.append(PromptEntry(prompt=line))
    if problems:
        raise PromptsFileProblem(path, problems)
    if not entries:
        raise PromptsFileProblem(path, ["holds no prompts, only blank lines and # comments"])
    return entries


def _yaml_entries(path: Path, text: str) -> list[PromptEntry]:
    # A SafeLoader builds plain data only; its node tree gives each entry's line.
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        data = None if node is None else loader.construct_document(node)
    except yaml.YAMLError as exc:
        raise PromptsFileProblem(path, [f"not valid YAML ({_yaml_problem(exc)})"]) from None
    finally:
        loader.dispose()
    if data is None or data == []:
        raise PromptsFileProblem(path, ["holds no prompts"])
    if not isinstance(data, list) or not isinstance(node, yaml.SequenceNode):
        raise PromptsFileProblem(
            path, [f"must be a list of prompts (text, or mappings with a prompt and options), not {_kind(data)}"]
        )
    entries, problems = [], []
    for index, (raw, item) in enumerate(zip(data, node.value, strict=True), start=1):
        where = f"entry {index} (line {item.start_mark.line + 1})"
        if isinstance(raw, str):
            raw = {"prompt": raw}
        if not isinstance(raw, dict):
            problems.append(f"{where}: a prompt is text or a mapping with a prompt and options, not {_kind(raw)}")
            continue
        unknown = [key for key in raw if key not in PromptEntry.model_fields]
        if unknown:
            names = ", ".join(repr(key) for key in unknown)
            known = ", ".join(PromptEntry.model_fields)
            problems.append(f"{where}: unknown option{'s' if len(unknown) > 1 else ''} {names}; known: {known}")
            continue
        try:
            entries.append(PromptEntry.model_validate(raw))
        except ValidationError as exc:
            problems += [f"{where}: {problem}" for problem in _validation_problems(exc)]
    if problems:
        raise PromptsFileProblem(path, problems)
    return entries


def _yaml_problem(exc: yaml.YAMLError) -> str:
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        return f"line {mark.line + 1}, column {mark.column + 1}: {exc.problem}"
    return str(exc).splitlines()[0]


def _kind(value: object) -> str:
    """A value's type in the words of the YAML a user writes."""
    if value is None:
        return "nothing"
    words = {bool: "true or false", str: "text", int: "a number", float: "a number", dict: "a mapping", list: "a list"}
    return words.get(type(value), f"a {type(value).__name__}")


def _validation_problems(error: ValidationError) -> list[str]:
    """pydantic's errors as one line each: the option, its value where it is one, the message."""
    problems = []
    for detail in error.errors(include_url=False):
        option = ".".join(str(part) for part in detail["loc"])
        message = detail["msg"].removeprefix("Value error, ")
        value = detail.get("input")
        if detail["type"] == "missing":
            problems.append(f"no {option}")
        elif detail["type"] == "string_too_short":
            problems.append(f"{option} is empty")
        elif not option:
            problems.append(message)
        elif isinstance(value, str | int | float) and not isinstance(value, bool):
            problems.append(f"{option}={value!r}: {message}")
        else:
            problems.append(f"{option}: {message}")
    return problems

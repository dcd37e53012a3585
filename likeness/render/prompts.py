"""Render prompts: a character's structured prompt, seeded variations of it, video prompts.

A prompt is the trigger word first, then the character, the shot (situation, framing, lighting, lens),
the style and the trigger words of any extra LoRA. Variations are drawn from small photographic
vocabularies, the same ones for the same seed; `likeness.render.llm` has an LLM write them instead, and a prompts
file (`likeness.render.prompt_files`) gives a person's own.

    character = CharacterPrompt(trigger="Ada_Lovelace", description="a woman with dark curly hair")
    character.compose(situation="a candid photo in a cafe", lens="35mm")
    # -> "Ada_Lovelace, a woman with dark curly hair, a candid photo in a cafe, 35mm, photorealistic, ..."
    prompts = template_variations(character, count=4, seed=7)
    video_prompt(prompts[0], seed=7)   # the same picture, with a camera move and motion
"""

from __future__ import annotations

import difflib
import itertools
import random
import re
from collections.abc import Mapping
from string import Formatter
from typing import Annotated

from pydantic import BaseModel, ConfigDict, StringConstraints

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

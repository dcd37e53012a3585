"""Training captions: the prompt a captioner gets, the caption assembled from its answer, and the check
for a phrase every caption shares (the LoRA would bake that phrase into the character).

A caption is the trigger word, then what the stage knows for certain (the shot's catalogue tags), then
the captioner's description of what varies between images, cut to a word limit:

    messages = caption_messages("qwen3_vl", caption_prompt(DEFAULT_PROMPT, max_words=40))
    compose_caption("ada", ["side view", "full body"], "She stands by a window in soft light.", 40)
    # -> "ada, side view, full body, She stands by a window in soft light"
    phrases_in_every_caption(captions, ignore=["ada", "side view"])   # -> ["white studio background"]
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from typing import Any

# What varies from one image to the next is what the captions should name; the fixed traits are left
# unsaid so that the trigger word absorbs them.
DEFAULT_PROMPT = (
    "Write one sentence that describes this photo for an image-generation training caption. "
    "Describe only what changes from one photo of this person to the next: pose, expression, clothing, "
    "background, lighting and framing. Do not describe the face, hair colour, eye colour, ethnicity, age or "
    "body type, and do not name the person."
)
# JoyCaption's chat template places the image itself; it was trained with this system message.
JOYCAPTION_SYSTEM = "You are a helpful image captioner."

# Openings a VLM likes that say nothing about the image; in every caption, they would be learnt.
_PICTURE = r"(?:this|the) (?:image|photo|photograph|picture)"
_LEAD_IN = re.compile(rf"^(?:{_PICTURE} (?:shows|depicts|features|captures)|in {_PICTURE},?)\s*", re.IGNORECASE)
_CLAUSE_BREAK = re.compile(r"[,;:.!?()\[\]\"]+")
# A phrase of only these words ("in a", "of the") is grammar, not content: never flagged.
_FUNCTION_WORDS = frozenset(
    "a an the of in on at to with and or by for from as is are was be its his her their this that".split()
)


def caption_prompt(prompt: str, max_words: int) -> str:
    """The instruction the captioner gets: `prompt` and the word limit."""
    return f"{normalise(prompt)} Use at most {max_words} words."


def caption_messages(model_type: str, prompt: str) -> list[dict[str, Any]]:
    """The chat for a captioner of `model_type` (its config's `model_type`): one image and the prompt."""
    if model_type == "llava":
        # JoyCaption: text-only content; its template inserts the image tokens in the first user turn.
        return [{"role": "system", "content": JOYCAPTION_SYSTEM}, {"role": "user", "content": prompt}]
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]


def normalise(text: str) -> str:
    """`text` on one line: control characters gone, runs of whitespace one space."""
    # Control and format characters (and U+FFFD from a half-decoded byte) must not reach a caption file.
    printable = "".join(
        " " if unicodedata.category(char).startswith("C") or char == "\ufffd" else char for char in text
    )
    return " ".join(printable.split())


def compose_caption(trigger: str, tags: Sequence[str], description: str, max_words: int) -> str:
    """`trigger, tag, ..., description`: the description cut to `max_words` words, tags it already says left out."""
    trigger = normalise(trigger)
    if not trigger:
        raise ValueError("the trigger word is empty")
    if max_words < 1:
        raise ValueError(f"max_words must be at least 1, got {max_words}")
    description = _LEAD_IN.sub("", normalise(description))
    description = " ".join(description.split()[:max_words]).rstrip(" ,;:.")
    parts, seen = [trigger], {trigger.lower()}
    for tag in map(normalise, tags):
        if tag and tag.lower() not in seen and not _contains(description, tag):
            parts.append(tag)
            seen.add(tag.lower())
    if description:
        parts.append(description)
    return ", ".join(parts)


def phrases_in_every_caption(captions: Sequence[str], ignore: Sequence[str] = (), min_words: int = 2) -> list[str]:
    """Phrases of at least `min_words` words found in every caption (longest form only), in order of appearance
    in the first; phrases in `ignore` (pass the trigger and the tags) do not count. Fewer than two captions have
    nothing to compare: no phrase."""
    if min_words < 1:
        raise ValueError(f"min_words must be at least 1, got {min_words}")
    if len(captions) < 2:
        return []
    # An ignored phrase is split where captions are, so a tag with a comma is still found.
    ignored = [
        piece.split() for phrase in ignore for piece in _CLAUSE_BREAK.split(normalise(phrase).lower()) if piece.split()
    ]
    per_caption = [_phrases(caption, ignored, min_words) for caption in captions]
    shared = set(per_caption[0]).intersection(*per_caption[1:])
    content = {phrase for phrase in shared if not set(phrase) <= _FUNCTION_WORDS}
    # Only the longest form: "white studio" is part of "white studio background".
    maximal = [phrase for phrase in content if not any(len(o) > len(phrase) and _inside(phrase, o) for o in content)]
    return [" ".join(phrase) for phrase in sorted(maximal, key=per_caption[0].index)]


def _contains(text: str, phrase: str) -> bool:
    """Whether `phrase` is in `text` as whole words, ignoring case."""
    return re.search(rf"(?<!\w){re.escape(phrase)}(?!\w)", text, re.IGNORECASE) is not None


def _clauses(caption: str, ignored: list[list[str]]) -> list[list[str]]:
    """The caption's clauses as lowercase words, split at punctuation and at every ignored phrase."""
    clauses = []
    for clause in _CLAUSE_BREAK.split(normalise(caption).lower()):
        words = clause.split()
        start = index = 0
        while index < len(words):
            match = next((p for p in ignored if words[index : index + len(p)] == p), None)
            if match:
                clauses.append(words[start:index])
                index += len(match)
                start = index
            else:
                index += 1
        clauses.append(words[start:])
    return [clause for clause in clauses if clause]


def _phrases(caption: str, ignored: list[list[str]], min_words: int) -> list[tuple[str, ...]]:
    """Every run of at least `min_words` words inside one clause of the caption, in order of appearance."""
    return [
        tuple(words[i:j])
        for words in _clauses(caption, ignored)
        for i in range(len(words))
        for j in range(i + min_words, len(words) + 1)
    ]


def _inside(short: tuple[str, ...], long: tuple[str, ...]) -> bool:
    return any(long[i : i + len(short)] == short for i in range(len(long) - len(short) + 1))

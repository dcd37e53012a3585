"""The variation catalogue: each entry is one edit of the reference image, with what it shows.

The labels (view, emotion, framing) go into the caption, so the LoRA learns to tie them to words.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

_KEEP = "Keep the same person, face, hairstyle and clothes. Plain light grey studio background."


class Variation(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: str
    prompt: str
    view: str
    emotion: str
    framing: str


CATALOGUE: dict[str, Variation] = {
    v.id: v
    for v in (
        Variation(
            id="front",
            prompt=f"Show the person from the front, standing, facing the camera, full body. {_KEEP}",
            view="front view",
            emotion="neutral expression",
            framing="full body",
        ),
        Variation(
            id="side",
            prompt=f"Turn the person 90 degrees to show their left side in profile, full body. {_KEEP}",
            view="side view",
            emotion="neutral expression",
            framing="full body",
        ),
        Variation(
            id="back",
            prompt=f"Turn the person around to show them from behind, full body. {_KEEP}",
            view="back view",
            emotion="neutral expression",
            framing="full body",
        ),
        Variation(
            id="smile",
            prompt=f"Make the person smile warmly, looking at the camera, upper body. {_KEEP}",
            view="front view",
            emotion="smiling",
            framing="upper body",
        ),
        Variation(
            id="surprised",
            prompt=f"Make the person look surprised, eyebrows raised, mouth open, upper body. {_KEEP}",
            view="front view",
            emotion="surprised",
            framing="upper body",
        ),
        Variation(
            id="closeup",
            prompt=f"A close-up portrait of the person's face, looking at the camera, sharp detail. {_KEEP}",
            view="front view",
            emotion="neutral expression",
            framing="close-up",
        ),
    )
}


def get_variation(variation_id: str) -> Variation:
    try:
        return CATALOGUE[variation_id]
    except KeyError:
        raise ValueError(f"unknown variation {variation_id!r}; known: {', '.join(CATALOGUE)}") from None

"""Checks on what a user hands in (the name, the reference photo), made before any model loads."""

from __future__ import annotations

import io
import re
import unicodedata
from pathlib import Path

from PIL import Image, UnidentifiedImageError

MIN_REFERENCE_SIDE = 256
MAX_TRIGGER_LENGTH = 48
_TRIGGER = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")


class InvalidInput(ValueError):
    """Input that Likeness refuses, with a message that names the problem."""


def normalise_trigger(name: str) -> str:
    """The trigger word for a character name: runs of spaces become one underscore.

    The trigger word also names folders and files, so anything that could escape a folder or
    confuse a tokenizer (path separators, dots, control characters) is refused, not rewritten.
    """
    if any(unicodedata.category(ch) == "Cc" for ch in name):
        raise InvalidInput(f"character name {name!r} contains control characters")
    trigger = re.sub(r"\s+", "_", name.strip())
    if not trigger:
        raise InvalidInput("character name is empty")
    if len(trigger) > MAX_TRIGGER_LENGTH:
        raise InvalidInput(f"character name {name!r} is longer than {MAX_TRIGGER_LENGTH} characters")
    if not _TRIGGER.fullmatch(trigger):
        raise InvalidInput(
            f"character name {name!r} is not a safe trigger word: use ASCII letters, digits, '_' and '-', "
            "starting with a letter (spaces become '_')"
        )
    return trigger


def read_reference_image(path: Path) -> bytes:
    """The bytes of a usable reference photo, or InvalidInput saying what is wrong with it."""
    if not path.exists():
        raise InvalidInput(f"reference image not found: {path}")
    if not path.is_file():
        raise InvalidInput(f"reference image is not a file: {path}")
    data = path.read_bytes()
    check_reference_bytes(data, str(path))
    return data


def check_reference_bytes(data: bytes, label: str) -> None:
    """Refuse bytes that are not a whole image of a usable size."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            width, height = image.size
    except UnidentifiedImageError:
        raise InvalidInput(f"{label} is not an image Likeness can read (PNG, JPEG, WebP)") from None
    except (OSError, SyntaxError) as exc:
        raise InvalidInput(f"{label} is truncated or corrupt: {exc}") from None
    if min(width, height) < MIN_REFERENCE_SIDE:
        raise InvalidInput(
            f"{label} is {width}x{height} px; a reference photo needs at least "
            f"{MIN_REFERENCE_SIDE} px on its short side"
        )

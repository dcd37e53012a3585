"""Checks on what a user hands in (the name, the reference photo), made before any model loads."""

from __future__ import annotations

import functools
import hashlib
import io
import re
import unicodedata
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from PIL import Image, ImageCms, ImageFile, UnidentifiedImageError

MIN_REFERENCE_SIDE = 256
# A garment or pose image is a condition of the editor, which sees it enlarged to its vision encoder's 384 px view
# (28 px a token): below 128 px that is more than 3x, a blur of a few tokens where the garment's cut or the pose's
# limbs should be. A face is not looked for in it, so it needs less than a reference photo.
MIN_CONDITION_SIDE = 128
# What each kind of input image is called where its size is refused, and the least short side it needs.
MIN_SIDES = {
    "reference image": ("a reference photo", MIN_REFERENCE_SIDE),
    "garment image": ("a garment image", MIN_CONDITION_SIDE),
    "pose image": ("a pose image", MIN_CONDITION_SIDE),
}
# The models work at about 1024 px; these caps leave room for 48-50 MP phone photos (8064x6048, 8160x6120) and
# refuse, from the header alone, files whose decode would take gigabytes (a 12000 px PNG of 446 KB took 7.2 GB).
MAX_REFERENCE_SIDE = 8192
MAX_REFERENCE_PIXELS = 52_000_000
# Checked before the bytes are read into memory; a 50 MP 16-bit RGB PNG (300 MB unpacked) fits.
MAX_REFERENCE_FILE_BYTES = 512 * 2**20
# Light neutral grey: transparent areas become plain background rather than black (a cut-out's hidden RGB).
REFERENCE_BACKGROUND = (200, 200, 200)
MAX_TRIGGER_LENGTH = 48
# The most values (scalars, lists, mappings) a YAML file a person hands in may hold once its aliases are expanded:
# a 1 MiB file written out holds at most about half a million, while ten nested aliases of ten make 10^10 from a
# few hundred bytes, which would hang whatever walks them.
MAX_YAML_VALUES = 1_000_000
_TRIGGER = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")


class InvalidInput(ValueError):
    """Input that Likeness refuses, with a message that names the problem."""


class TooBig(InvalidInput):
    """Input larger than Likeness reads of its kind, refused before it is parsed; `problem` is the message without
    the input's label ("is 52.4 MiB; a catalogue may be at most 1 MiB")."""

    def __init__(self, label: str, problem: str) -> None:
        self.problem = problem
        super().__init__(f"{label} {problem}" if label else problem)


def too_many_bytes(label: str, size: int | None, limit: int, kind: str) -> TooBig:
    """`label` is `size` bytes (None: more than `limit`, when it was read no further) and `kind` may have `limit`."""
    if size is None:
        said, allowed = f"more than {byte_size(limit)}", byte_size(limit)
    elif byte_size(size) == byte_size(limit) or size < 2**10:
        said, allowed = f"{size:,} bytes", f"{limit:,} bytes" + (f" ({byte_size(limit)})" if limit >= 2**10 else "")
    else:
        said, allowed = byte_size(size), byte_size(limit)
    return TooBig(label, f"is {said}; {kind} may be at most {allowed}")


def byte_size(size: int) -> str:
    """A number of bytes as people read it: 812 bytes, 64 KiB, 52.4 MiB."""
    for unit, scale in (("MiB", 2**20), ("KiB", 2**10)):
        if size >= scale:
            value = round(size / scale, 1)
            return f"{value:.0f} {unit}" if value.is_integer() else f"{value} {unit}"
    return f"{size} bytes"


def read_at_most(path: Path, limit: int, label: str, kind: str) -> bytes:
    """The bytes of the file at `path`, or `TooBig` when it holds more than `limit`, said from its size before
    anything is read; a file that grows meanwhile, or is not a regular file (a FIFO, /dev/zero), is read no further
    than `limit`. OSError as `open` raises it."""
    size = path.stat().st_size
    if size > limit:
        raise too_many_bytes(label, size, limit, kind)
    with path.open("rb") as handle:
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise too_many_bytes(label, None, limit, kind)
    return data


def compose_yaml(text: str, loader: type[yaml.SafeLoader] = yaml.SafeLoader) -> tuple[yaml.Node | None, Any]:
    """The node tree of a one-document YAML text and the plain data it builds (a SafeLoader's: never Python objects),
    or yaml.YAMLError; `TooBig` (without a label) before anything is built when aliases make it too big to walk."""
    reader = loader(text)
    try:
        node = reader.get_single_node()
        if node is None:
            return None, None
        _count_values(node)
        return node, reader.construct_document(node)
    finally:
        reader.dispose()


def _count_values(node: yaml.Node) -> None:
    """Walk the tree as its data will be walked (an alias's node once per alias) and stop past the limit."""
    stack, seen = [node], 0
    while stack:
        current = stack.pop()
        seen += 1
        if seen > MAX_YAML_VALUES:
            most = f"{MAX_YAML_VALUES:,}"
            raise TooBig("", f"holds more than {most} values with its aliases expanded; a file may hold at most {most}")
        if isinstance(current, yaml.SequenceNode):
            stack.extend(current.value)
        elif isinstance(current, yaml.MappingNode):
            stack.extend(part for pair in current.value for part in pair)


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


@dataclass(frozen=True)
class ReferenceImage:
    """A reference photo as people see it: oriented, 8-bit sRGB, no alpha; and what was done to get there."""

    original_sha256: str
    png: bytes
    width: int
    height: int
    notes: tuple[str, ...]


# Decoders a photo comes in (JPEG covers MPO); user bytes never reach the others (EPS runs Ghostscript, PSD, ...).
_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "TIFF", "BMP", "AVIF")
_SIXTEEN_BIT = {"I;16", "I;16L", "I;16B", "I;16N"}
_ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}
_ORIENTATION = {
    2: (Image.Transpose.FLIP_LEFT_RIGHT, "mirrored"),
    3: (Image.Transpose.ROTATE_180, "rotated"),
    4: (Image.Transpose.FLIP_TOP_BOTTOM, "mirrored"),
    5: (Image.Transpose.TRANSPOSE, "mirrored and rotated"),
    6: (Image.Transpose.ROTATE_270, "rotated"),
    7: (Image.Transpose.TRANSVERSE, "mirrored and rotated"),
    8: (Image.Transpose.ROTATE_90, "rotated"),
}
_BOMB_PIXELS = re.compile(r"\((\d+) pixels\)")


def read_reference_image(path: Path, kind: str = "reference image", min_side: int | None = None) -> ReferenceImage:
    """The image at path as people see it, or InvalidInput saying what is wrong with it; `kind` names it
    in messages (the reference image, a garment image, a pose image) and gives its minimum short side (MIN_SIDES);
    `min_side` replaces that (a still to animate is resized to the render's size anyway)."""
    if not path.exists():
        raise InvalidInput(f"{kind} not found: {path}")
    if not path.is_file():
        raise InvalidInput(f"{kind} is not a file: {path}")
    _check_file_size(path.stat().st_size, str(path))
    return normalise_reference(path.read_bytes(), str(path), min_side, kind)


def normalise_reference(
    data: bytes, label: str, min_side: int | None = None, kind: str = "reference image"
) -> ReferenceImage:
    """Decode image bytes into an oriented 8-bit sRGB PNG; label names the image in messages and notes, `kind` what
    it is for (a key of MIN_SIDES: its least short side), unless `min_side` gives another."""
    _check_file_size(len(data), label)
    notes: list[str] = []
    # The bomb warning is replaced by the explicit check in _check_dimensions, which also holds when another thread
    # changes the warning filters meanwhile.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(data), formats=_decoders()) as image:
                _check_dimensions(image.size, label)
                _note_frames(image, label, notes)
                image.seek(0)
                image.load()
                rgb = _to_rgb(_orient(image, label, notes, _least_side(kind, min_side)), label, notes)
        except UnidentifiedImageError:
            readable = ", ".join("WebP" if name == "WEBP" else name for name in _decoders())
            raise InvalidInput(f"{label} is not an image Likeness can read ({readable})") from None
        except Image.DecompressionBombError as exc:
            match = _BOMB_PIXELS.search(str(exc))
            raise _too_many_pixels(label, int(match.group(1)) if match else None) from None
        except InvalidInput:
            raise
        except (OSError, SyntaxError, EOFError, ValueError) as exc:
            raise InvalidInput(f"{label} is truncated or corrupt: {exc}") from None
    # Nothing from the source (ICC profile, tRNS, dpi) may reach the PNG: its pixels are already sRGB and opaque,
    # and the same input must give the same bytes.
    rgb.info = {}
    buffer = io.BytesIO()
    rgb.save(buffer, "PNG")
    return ReferenceImage(
        original_sha256=hashlib.sha256(data).hexdigest(),
        png=buffer.getvalue(),
        width=rgb.width,
        height=rgb.height,
        notes=tuple(notes),
    )


def _check_file_size(size: int, label: str) -> None:
    """Refuse a file too big to be worth reading into memory."""
    if size > MAX_REFERENCE_FILE_BYTES:
        raise InvalidInput(
            f"{label} is {size / 2**20:.0f} MiB, more than the {MAX_REFERENCE_FILE_BYTES // 2**20} MiB "
            "Likeness reads: downscale the photo and try again"
        )


def _check_dimensions(size: tuple[int, int], label: str) -> None:
    """Refuse, from the header alone, an image larger than a reference needs or than Pillow decodes safely."""
    width, height = size
    if max(width, height) > MAX_REFERENCE_SIDE:
        raise InvalidInput(
            f"{label} is {width}x{height} px, more than the {MAX_REFERENCE_SIDE} px Likeness accepts on the long side: "
            "downscale the photo and try again"
        )
    if width * height > MAX_REFERENCE_PIXELS:
        raise InvalidInput(
            f"{label} is {width}x{height} px ({width * height / 1e6:.1f} megapixels), more than the "
            f"{MAX_REFERENCE_PIXELS / 1e6:.0f} megapixels Likeness accepts: downscale the photo and try again"
        )
    if Image.MAX_IMAGE_PIXELS is not None and width * height > Image.MAX_IMAGE_PIXELS:
        raise _too_many_pixels(label, width * height)


def _too_many_pixels(label: str, pixels: int | None) -> InvalidInput:
    """The refusal for an image over Pillow's decompression-bomb limit."""
    count = f"{pixels} pixels" if pixels is not None else "too many pixels"
    return InvalidInput(
        f"{label} has {count}, above Pillow's decompression-bomb limit of {Image.MAX_IMAGE_PIXELS} pixels: "
        "downscale the photo and try again"
    )


def _note_frames(image: ImageFile.ImageFile, label: str, notes: list[str]) -> None:
    """Say so when a file holds more than one frame or page, since only the first is used."""
    # An MPO's extra images are previews, depth or gain maps of the one photo, not other pictures.
    frames = getattr(image, "n_frames", 1)
    if frames <= 1 or image.format == "MPO":
        return
    if image.format == "TIFF":
        notes.append(f"{label} has {frames} pages: its first page is used")
    else:
        notes.append(f"{label} is animated ({frames} frames): its first frame is used")


def _least_side(kind: str, min_side: int | None) -> tuple[str, int]:
    """What the image is called where its size is refused, and the least short side it needs."""
    subject, least = MIN_SIDES.get(kind, MIN_SIDES["reference image"])
    return (subject, least) if min_side is None else ("it", min_side)


def _orient(image: Image.Image, label: str, notes: list[str], least: tuple[str, int]) -> Image.Image:
    """The image turned the way its EXIF orientation says a person sees it, then held to the minimum size."""
    orientation = image.getexif().get(0x0112, 1)
    if orientation in _ORIENTATION:
        method, done = _ORIENTATION[orientation]
        image = image.transpose(method)
        notes.append(f"{label} is {done} by its EXIF orientation ({orientation})")
    width, height = image.size
    subject, min_side = least
    if min(width, height) < min_side:
        raise InvalidInput(f"{label} is {width}x{height} px; {subject} needs at least {min_side} px on its short side")
    return image


def _to_rgb(image: Image.Image, label: str, notes: list[str]) -> Image.Image:
    """An 8-bit sRGB image without alpha: bit depth reduced, colour profile applied, transparency on grey."""
    icc = image.info.get("icc_profile")
    if image.mode in _SIXTEEN_BIT or image.mode == "I":
        image = _to_8bit(image, label)
        notes.append(f"{label} is 16-bit: scaled to 8-bit")
    elif image.mode == "F":
        raise InvalidInput(f"{label} has 32-bit float samples: save the photo as an 8- or 16-bit PNG or a JPEG")

    grey = image.mode in {"1", "L", "LA", "La"}
    alpha = None
    if image.mode in _ALPHA_MODES or "transparency" in image.info:
        # convert() applies a palette's or a tRNS colour key's transparency and un-premultiplies RGBa/La.
        with_alpha = image.convert("LA" if grey else "RGBA")
        alpha = with_alpha.getchannel("A")
        colour = with_alpha.convert("L" if grey else "RGB")
    elif image.mode in {"L", "RGB", "CMYK"}:
        colour = image
    else:
        try:
            colour = image.convert("L" if grey else "RGB")
        except ValueError:
            raise InvalidInput(
                f"{label} uses colour mode {image.mode}, which Likeness cannot convert: save the photo as RGB"
            ) from None

    if icc:
        colour = _to_srgb(colour, icc, label, notes)
    elif colour.mode == "CMYK":
        notes.append(f"{label} is CMYK without a colour profile: its colours are converted approximately")
    colour = colour.convert("RGB")

    if alpha is not None and alpha.getextrema()[0] < 255:
        background = Image.new("RGB", colour.size, REFERENCE_BACKGROUND)
        background.paste(colour, (0, 0), alpha)
        colour = background
        notes.append(f"{label} has transparency: composited on grey")
    return colour


def _to_8bit(image: Image.Image, label: str) -> Image.Image:
    """16-bit grey scaled to 8-bit, rounding; convert() would clip it to white instead."""
    samples = np.asarray(image)
    # Mode "I" holds 32-bit integers; only the 16-bit range has a known meaning for white.
    if samples.size and (samples.min() < 0 or samples.max() > 65535):
        raise InvalidInput(f"{label} has 32-bit samples: save the photo as an 8- or 16-bit PNG or a JPEG")
    return Image.fromarray(((samples.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8))


@functools.cache
def _decoders() -> tuple[str, ...]:
    """The photo formats this Pillow build can decode; naming a missing one to Image.open raises KeyError."""
    Image.init()
    return tuple(name for name in _FORMATS if name in Image.OPEN)


@functools.cache
def _srgb() -> ImageCms.ImageCmsProfile:
    """The sRGB profile every reference is converted to."""
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))


def _to_srgb(colour: Image.Image, icc: bytes, label: str, notes: list[str]) -> Image.Image:
    """Colours converted from the embedded ICC profile to sRGB, or left as they are if the profile is unusable."""
    try:
        source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        return ImageCms.profileToProfile(colour, source, _srgb(), outputMode="RGB")
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError):
        # A broken or mismatched profile is common in edited files; the pixels are still usable as sRGB.
        notes.append(f"{label} has a colour profile Likeness cannot apply: its colours are used as they are")
        return colour


def parse_overrides(assignments: list[str], option: str = "--set") -> dict[str, Any]:
    """`render.seed=3` style assignments as nested dicts; values are read as YAML scalars."""
    overrides: dict[str, Any] = {}
    for assignment in assignments:
        path, sep, raw = assignment.partition("=")
        if not sep or not path:
            raise InvalidInput(f"{option} {assignment!r} is not of the form section.field=value")
        node = overrides
        *parents, leaf = path.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(raw)
    return overrides

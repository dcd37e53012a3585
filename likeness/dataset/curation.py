"""Curation: measure each generated image once, then decide keep or reject from those figures alone.

`measure` runs the identity model and the quality figures; `judge` is a pure function of the figures, the
catalogue entry's expectations and what was already kept, so a decision can be replayed from the manifest.

    figures = measure(image, reference_face.embedding, get_identity_model())
    verdict = judge(figures, face="shown", closeup=False, config=CurationConfig(), kept=kept)
    if verdict.keep:
        kept.append(Kept("smile-30", figures, closeup=False))
    else:
        print(verdict.reasons)   # ("blurred: sharpness 11 < 20",)

Default thresholds, from figures measured on the photos scikit-image and matplotlib ship (astronaut, Grace Hopper,
coffee, chelsea, rocket, camera, motorcycle, a histology slide; 300-741 px):
- sharpness: the unblurred photos score 215-1133; after a Gaussian blur of 1 px (at 512 px) 18-95, of 2 px 3-14,
  shrunk to a quarter and enlarged back 6-98. 20 rejects every 2 px blur, with 10x margin under the softest sharp
  photo (generated images carry less fine texture than photos). The figure falls with contrast: a copy darkened to
  a fifth of its brightness scores a twenty-fifth.
- exposure is judged on the main face's box, since backgrounds (white studio sweeps, night skies) say nothing about
  how the character is lit: faces average 0.55-0.64 with 0-1.2% clipped; at half brightness 0.27-0.32, at a quarter
  0.14-0.16, at 1.6x 0.78-0.88 with 24-62% blown to white. A very dark skin tone in good light computes to about
  0.18, hence the floor of 0.15. Without a face, exposure is recorded for the whole image but not judged (a blank
  or black frame already fails sharpness).
- perceptual hash (64 bits): resized, re-encoded, blurred or darkened copies 0, 30% brighter 2, shifted or zoomed by
  2% 2-4, by 5% 6-8, by 10% 14-20; a close-up turned by 5 degrees 12; different photos and mirror images 24-38. A
  change of expression moves little of a close-up: a mouth moved 10-20 px differs by 2-4. Hence near-duplicate at
  <= 2 (a copy, not a new expression) and "similar close-up" at <= 12 (the same framing, any expression).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, NamedTuple

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, model_validator

from likeness.identity import CLEAR_FACE_SCORE, FaceIdentityModel, identity_distance, main_face
from likeness.media.image_quality import exposure, hash_distance, perceptual_hash, sharpness

FaceRule = Literal["shown", "hidden", "any"]


class CurationConfig(BaseModel):
    """The thresholds curation judges with; defaults suit production (see the module docstring for the figures)."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    identity: bool = Field(True, description="False with --no-identity: no identity distances are computed")
    max_identity_distance: float = Field(0.6, ge=0.1, le=1.2, description="dlib's same-person threshold is 0.6")
    require_face: bool = Field(True, description="a shot that should show the face must have one found")
    min_sharpness: float = Field(20.0, ge=0.0, le=5000.0, description="Laplacian variance at 512 px")
    min_exposure: float = Field(0.15, ge=0.0, le=1.0, description="lowest mean luminance of the face")
    max_exposure: float = Field(0.9, ge=0.0, le=1.0, description="highest mean luminance of the face")
    max_clipped: float = Field(0.25, gt=0.0, le=1.0, description="largest fraction of the face near black or white")
    duplicate_distance: int = Field(2, ge=0, le=64, description="hash distance at or below which images are copies")
    closeup_similarity: int = Field(12, ge=0, le=64, description="hash distance at or below which close-ups match")
    max_similar_closeups: int = Field(2, ge=1, le=50, description="similar close-ups kept at most")
    max_tries: int = Field(3, ge=1, le=10, description="first try plus regenerations with a new seed")

    @model_validator(mode="after")
    def _ordered(self) -> CurationConfig:
        """Lower bounds below upper bounds."""
        if self.min_exposure >= self.max_exposure:
            raise ValueError(f"min_exposure {self.min_exposure} must be below max_exposure {self.max_exposure}")
        if self.duplicate_distance > self.closeup_similarity:
            raise ValueError(
                f"duplicate_distance {self.duplicate_distance} must not exceed closeup_similarity "
                f"{self.closeup_similarity}"
            )
        return self


class Figures(BaseModel):
    """Everything measured on one image; the manifest records it beside the verdict."""

    model_config = ConfigDict(frozen=True)

    faces: int | None  # faces found; None when no face model was run (--no-identity)
    identity_distance: float | None  # of the main face to the reference; None without a reference or a face
    sharpness: float
    exposure_mean: float
    dark_fraction: float
    bright_fraction: float
    exposure_region: Literal["face", "image"]  # the main face's box when one was found, else the whole image
    phash: str
    face_box: tuple[int, int, int, int] | None  # the main face: the largest clear one
    face_score: float | None  # the detector's confidence in the main face


def measure(image: Image.Image, reference: Sequence[float] | None, model: FaceIdentityModel | None) -> Figures:
    """The figures of one image; without a reference identity is skipped, without a model faces are not counted."""
    if reference is not None and model is None:
        raise ValueError("an identity reference needs the face model to compare with")
    faces = model.faces(image) if model is not None else None
    face = main_face(faces or [])
    lit = exposure(image.crop(face.box)) if face is not None and face.area > 0 else None
    light = lit or exposure(image)
    return Figures(
        faces=None if faces is None else len(faces),
        identity_distance=identity_distance(reference, face.embedding) if reference is not None and face else None,
        sharpness=sharpness(image),
        exposure_mean=light.mean,
        dark_fraction=light.dark,
        bright_fraction=light.bright,
        exposure_region="face" if lit else "image",
        phash=perceptual_hash(image),
        face_box=face.box if face else None,
        face_score=face.score if face else None,
    )


class Kept(NamedTuple):
    """An image already kept, which later images are compared with."""

    id: str
    figures: Figures
    closeup: bool


class Verdict(BaseModel):
    """Keep or reject, every reason to reject, and the checks that did not apply (with why)."""

    model_config = ConfigDict(frozen=True)

    keep: bool
    reasons: tuple[str, ...]
    skipped: tuple[str, ...] = ()


def judge(figures: Figures, *, face: FaceRule, closeup: bool, config: CurationConfig, kept: Sequence[Kept]) -> Verdict:
    """Keep or reject one image from its figures, the catalogue entry's face rule and the images kept so far."""
    reasons: list[str] = []
    skipped: list[str] = []
    _judge_face(figures, face, config, reasons, skipped)
    if figures.sharpness < config.min_sharpness:
        reasons.append(f"blurred: sharpness {figures.sharpness:.0f} < {config.min_sharpness:.0f}")
    _judge_exposure(figures, config, reasons, skipped)
    _judge_similarity(figures, closeup, config, kept, reasons)
    return Verdict(keep=not reasons, reasons=tuple(reasons), skipped=tuple(skipped))


def _judge_face(
    figures: Figures, rule: FaceRule, config: CurationConfig, reasons: list[str], skipped: list[str]
) -> None:
    """Whether the face is there (or absent) as the shot asks, and whether it is the character's."""
    if figures.faces is None:
        skipped.append("faces and identity: no face model was run")
        return
    if rule == "hidden":
        # A clear face that is not clearly someone else's means the turn to a back view failed.
        someone_else = figures.identity_distance is not None and (
            figures.identity_distance > config.max_identity_distance
        )
        if figures.face_score is not None and figures.face_score >= CLEAR_FACE_SCORE and not someone_else:
            reasons.append(f"a face in a back view (detector score {figures.face_score:.2f})")
        skipped.append("identity: a back view")
        return
    if rule == "shown" and config.require_face and figures.faces == 0:
        reasons.append("no face found")
    if not config.identity:
        skipped.append("identity: --no-identity")
    elif figures.identity_distance is None:
        if figures.faces:
            skipped.append("identity: no reference face")
    elif figures.identity_distance > config.max_identity_distance:
        reasons.append(f"identity distance {figures.identity_distance:.2f} > {config.max_identity_distance:.2f}")


def _judge_exposure(figures: Figures, config: CurationConfig, reasons: list[str], skipped: list[str]) -> None:
    """Whether the face is lit well enough to learn from."""
    if figures.exposure_region != "face":
        skipped.append("exposure: no face to measure")
        return
    if figures.exposure_mean < config.min_exposure:
        reasons.append(f"face too dark: mean luminance {figures.exposure_mean:.2f} < {config.min_exposure:.2f}")
    if figures.exposure_mean > config.max_exposure:
        reasons.append(f"face too bright: mean luminance {figures.exposure_mean:.2f} > {config.max_exposure:.2f}")
    if figures.dark_fraction > config.max_clipped:
        reasons.append(f"face crushed to black: {figures.dark_fraction:.0%} of pixels > {config.max_clipped:.0%}")
    if figures.bright_fraction > config.max_clipped:
        reasons.append(f"face blown to white: {figures.bright_fraction:.0%} of pixels > {config.max_clipped:.0%}")


def _judge_similarity(
    figures: Figures, closeup: bool, config: CurationConfig, kept: Sequence[Kept], reasons: list[str]
) -> None:
    """Whether the image repeats one already kept, or adds one close-up too many of the same framing."""
    distances = [(hash_distance(figures.phash, other.figures.phash), other) for other in kept]
    copies = [(distance, other.id) for distance, other in distances if distance <= config.duplicate_distance]
    if copies:
        distance, other_id = min(copies)
        reasons.append(f"near-duplicate of {other_id} (hash distance {distance})")
    if closeup:
        similar = [other for distance, other in distances if other.closeup and distance <= config.closeup_similarity]
        if len(similar) >= config.max_similar_closeups:
            reasons.append(f"too many similar close-ups ({len(similar)} kept)")

"""Curation: what is measured on every image (faces, identity, sharpness, exposure, hash), and the face masks.

The decisions on these figures are `likeness.dataset.curation.judge`; the flow applies them across the dataset.

    face = measure_reference.fn(reference)
    figures = measure_image.fn(edited, face)
    mask = make_mask.fn(final_image)
"""

from __future__ import annotations

from likeness.dataset.curation import Figures, measure
from likeness.identity import get_identity_model, main_face, reference_face
from likeness.media.masks import face_mask
from likeness.stages import stage_task
from likeness.storage.artifacts import ArtifactRef, load_image, put_image

STAGE_VERSION = 1


@stage_task("measure-reference", STAGE_VERSION, gpu=False)
def measure_reference(reference: ArtifactRef) -> tuple[float, ...]:
    """The face embedding of the reference photo (its largest face): what every image is compared with."""
    face, _ = reference_face(load_image(reference), "the reference image")
    return face.embedding


@stage_task("measure-image", STAGE_VERSION, gpu=False)
def measure_image(image: ArtifactRef, reference: tuple[float, ...] | None) -> Figures:
    """Faces, identity distance to `reference` (None: not measured), sharpness, exposure and hash of one image."""
    return measure(load_image(image), reference, get_identity_model())


@stage_task("face-mask", STAGE_VERSION, gpu=False)
def make_mask(image: ArtifactRef) -> ArtifactRef:
    """The loss mask of a training image, in AI Toolkit's layout: the face weighted, found on the image itself."""
    picture = load_image(image)
    # The face curation judged: the largest clear one, not a larger stray detection.
    return put_image(face_mask(picture.size, main_face(get_identity_model().faces(picture))), image.filename)

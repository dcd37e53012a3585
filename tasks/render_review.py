"""Render review: each render's identity against the reference, and a contact sheet of the renders with scores.

An image is scored whole; a video on `SCORED_FRAMES` frames spread over it: the best-scoring frame and the
median over the frames scored (a frame without a face counts as a miss in the median, as in checkpoint scoring).

    item = score_render.fn(item, dataset.reference)
    sheet = render_sheet.fn(items, "Ada")
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from PIL import Image

from likeness.identity import get_identity_model, main_face_distance, median_distance, reference_face
from likeness.media.imaging import contact_sheet, sample_frames
from likeness.records import RenderItem
from likeness.run.pictures import publish_renders
from likeness.stages import stage_task
from likeness.storage.artifacts import ArtifactRef, get_bytes, load_image, put_image

STAGE_VERSION = 1
SCORED_FRAMES = 8
THUMBNAIL = 256


def render_frames(item: RenderItem, count: int = SCORED_FRAMES) -> list[Image.Image]:
    """The image, or `count` frames spread over the video."""
    if item.kind == "image":
        return [load_image(item.output)]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / item.output.filename
        path.write_bytes(get_bytes(item.output))
        return [Image.fromarray(frame) for frame in sample_frames(path, count, item.frames)]


@stage_task("score-render", STAGE_VERSION, gpu=False)
def score_render(item: RenderItem, reference: ArtifactRef) -> RenderItem:
    """The render with its identity distance to the reference: the best frame's, and the median over frames."""
    model = get_identity_model()
    face, _ = reference_face(load_image(reference), "the reference photo", model)
    frames = render_frames(item)
    distances = [main_face_distance(face, model.faces(frame)) for frame in frames]
    found = [d for d in distances if d is not None]
    return item.model_copy(
        update={
            "identity_distance": min(found) if found else None,
            "identity_median": median_distance(distances),
            "faces_found": len(found),
            "frames_scored": len(frames),
        }
    )


def render_label(item: RenderItem) -> str:
    """What a thumbnail of the contact sheet says: the kind, the seed, and the identity distances."""
    if item.frames_scored == 0:
        score = "not scored"
    elif item.identity_distance is None:
        score = f"no face in {item.frames_scored}"
    elif item.kind == "image":
        score = f"identity {item.identity_distance:.2f}"
    else:
        median = "miss" if item.identity_median is None else f"{item.identity_median:.2f}"
        score = f"best {item.identity_distance:.2f}, median {median}"
    return f"{item.kind} s{item.seed}: {score}"


def renders_contact_sheet(items: list[RenderItem]) -> Image.Image:
    """The renders side by side (a video by its middle frame), each labelled with its identity scores."""
    thumbnails = [_middle(render_frames(item, 3)) for item in items]
    return contact_sheet(thumbnails, [render_label(item) for item in items], cell=THUMBNAIL)


def _middle(frames: list[Image.Image]) -> Image.Image:
    return frames[len(frames) // 2]


@stage_task("render-sheet", STAGE_VERSION, gpu=False)
def render_sheet(items: list[RenderItem], trigger: str) -> ArtifactRef:
    """A contact sheet of the renders with their scores, in the store and the UI."""
    ref = put_image(renders_contact_sheet(items), f"{trigger}_renders.png")
    # The sheet and each render (a video by its poster frame) as pictures a browser loads (likeness.run.pictures).
    publish_renders(trigger, items, ref)
    return ref

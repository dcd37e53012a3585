"""Pictures in the Prefect UI: markdown artifacts that show a run's dataset, checkpoints and renders.

A markdown artifact is rendered by the browser that shows the Prefect UI, not by the worker that made the
images, so every picture needs a URL that browser can load:

- S3 store: a presigned GET URL, valid for `PRESIGNED_URL_LIFETIME` (7 days, the longest S3 signs). In an
  artifact older than that the pictures stop loading; publishing again (calling a `publish_*` function, or
  running the stage again without its cache) makes a new version of the artifact under the same key with fresh
  links, and the UI shows the newest version. Gallery cells show a small JPEG thumbnail (stored beside the
  image, content-addressed, so publishing again uploads nothing new) and link to the full-size image or video.
- Local store: the store's URLs are file:// paths on the worker's disk, which a browser on a web page does not
  load (and which are not even on the viewer's machine). The picture goes into the artifact itself instead, as a
  `data:image/jpeg;base64,...` thumbnail, downscaled so the artifact stays small (Prefect keeps artifacts in its
  database and the UI downloads them whole).

The Prefect UI (both its v1 and v2 front ends, checked in Chromium by tests/test_ui_pictures.py) renders
markdown image syntax `![alt](url)`, data: URIs included, also inside table cells; v1 drops an image inside a
link, and raw HTML goes through a sanitiser, so neither is used here.

    publish_dataset(dataset)          # in a flow or task run: the artifact '<trigger>-dataset-pictures'
    markdown = renders_markdown(items, sheet)
"""

from __future__ import annotations

import base64
import io
import logging
import tempfile
from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path
from uuid import UUID

from PIL import Image, ImageOps

from likeness.identity import IDENTITY_THRESHOLD
from likeness.records import DatasetRef, LoraRef, Rejection, RenderItem, Strengths
from likeness.render.strengths import by_pair, pair_median
from likeness.run.progress import prefect_artifact_key
from likeness.storage.artifacts import ArtifactRef, get_bytes, get_store, load_image, put_bytes
from likeness.storage.s3 import S3Store
from likeness.storage.store import ArtifactStore

log = logging.getLogger(__name__)

# The longest an S3 (SigV4) presigned URL can live: links in artifacts older than this stop loading.
PRESIGNED_URL_LIFETIME = timedelta(days=7)
# The long side of a thumbnail in a gallery, and of a contact sheet or plot inlined for a local store.
THUMBNAIL_SIDE = 256
SAMPLE_SIDE = 128
SHEET_SIDE = 2048
JPEG_QUALITY = 85


def image_url(ref: ArtifactRef, store: ArtifactStore | None = None, max_side: int = SHEET_SIDE) -> str:
    """A URL of the image that the browser showing the Prefect UI can load.

    S3: a presigned GET URL of the stored bytes themselves (full size; `max_side` does not apply), valid for
    `PRESIGNED_URL_LIFETIME` (7 days, the S3 maximum). An artifact older than that shows broken pictures until
    it is published again, which signs new URLs into a new version of the artifact.
    Any other store: a `data:image/jpeg;base64,...` URI of the image downscaled to fit `max_side`, because the
    store's own URLs (file://) point at the worker's disk, which a browser on a web page cannot read.
    """
    store = store or get_store()
    if isinstance(store, S3Store):
        return store.presigned_url(ref.key, PRESIGNED_URL_LIFETIME)
    return data_uri(load_image(ref, store), max_side)


def thumbnail_url(ref: ArtifactRef, store: ArtifactStore | None = None, max_side: int = THUMBNAIL_SIDE) -> str:
    """A URL of a small version of the image, for galleries.

    S3: a JPEG thumbnail stored beside the image (under its own content address) and presigned as in
    `image_url`, so a gallery of 2K images does not download them whole. Other stores: `image_url`'s data URI.
    """
    store = store or get_store()
    if isinstance(store, S3Store):
        return picture_url(load_image(ref, store), f"{_stem(ref.filename)}_thumb{max_side}.jpg", store, max_side)
    return image_url(ref, store, max_side)


def picture_url(
    image: Image.Image, filename: str, store: ArtifactStore | None = None, max_side: int = THUMBNAIL_SIDE
) -> str:
    """A URL of a picture made at publish time (a video's poster frame, a thumbnail): on S3 the JPEG is stored
    under `filename` and presigned, elsewhere it is inlined as a data URI."""
    store = store or get_store()
    if isinstance(store, S3Store):
        ref = put_bytes(jpeg_bytes(image, max_side), filename, store)
        return store.presigned_url(ref.key, PRESIGNED_URL_LIFETIME)
    return data_uri(image, max_side)


def jpeg_bytes(image: Image.Image, max_side: int) -> bytes:
    """The image as a JPEG whose long side is at most `max_side` (never enlarged)."""
    if max_side < 1:
        raise ValueError(f"max_side must be at least 1, got {max_side}")
    picture = image.convert("RGB")
    if max(picture.size) > max_side:
        picture = ImageOps.contain(picture, (max_side, max_side), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=JPEG_QUALITY, optimize=True)
    return buffer.getvalue()


def data_uri(image: Image.Image, max_side: int) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(jpeg_bytes(image, max_side)).decode()


# --- markdown ---------------------------------------------------------------------------------------------------


def dataset_markdown(dataset: DatasetRef, store: ArtifactStore | None = None) -> str:
    """The dataset's contact sheet, then every refused try as a thumbnail with its shot, try number and reasons."""
    store = store or get_store()
    kept_shots = {item.shot for item in dataset.items}
    rejections = [r for item in dataset.items for r in item.rejected] + [r for tries in dataset.dropped for r in tries]
    lines = [
        f"### {cell_text(dataset.trigger)}: the dataset",
        "",
        f"{len(dataset.items)} kept images, {len(rejections)} refused tries, {len(dataset.dropped)} shots dropped"
        + ("" if dataset.identity_checked else " (identity not checked: --no-identity)")
        + ". Refused tries are framed in red on the contact sheet.",
        "",
        markdown_image(f"{dataset.trigger}: contact sheet", image_url(dataset.contact_sheet, store)),
        "",
        "#### Refused tries",
        "",
    ]
    if not rejections:
        return "\n".join([*lines, "No try was refused.", ""])
    lines += [
        "| picture | shot | try | seed | identity distance | reasons | the shot |",
        "|---|---|---:|---:|---:|---|---|",
    ]
    for rejection in rejections:
        outcome = "kept on a later try" if rejection.shot in kept_shots else "dropped"
        lines.append(
            f"| {_gallery_cell(rejection.image, _rejection_alt(rejection), store, THUMBNAIL_SIDE)} "
            f"| {cell_text(rejection.shot)} | {rejection.attempt + 1} | {rejection.seed} "
            f"| {distance_text(rejection.figures.identity_distance, dataset.identity_checked)} "
            f"| {cell_text('; '.join(rejection.reasons))} | {outcome} |"
        )
    return "\n".join([*lines, ""])


def checkpoints_markdown(lora: LoraRef, store: ArtifactStore | None = None) -> str:
    """The plot of identity distance by step, then each checkpoint's step, loss, identity distance and samples,
    the chosen one marked, and where and why training stopped early."""
    store = store or get_store()
    lines = [f"### {cell_text(lora.trigger)}: checkpoints", ""]
    if lora.stopped_early is not None:
        stop = lora.stopped_early
        lines += [f"Training stopped early at step {stop.step}: {cell_text(stop.reason)}.", ""]
    if lora.scores_plot is not None:
        lines += [markdown_image(f"{lora.trigger}: identity distance by step", image_url(lora.scores_plot, store)), ""]
    lines += [
        f"Median identity distance of each checkpoint's samples to the reference face (same person below "
        f"{IDENTITY_THRESHOLD}, lower is closer; — where not scored or too few faces were found).",
        "",
        "| step | loss | identity distance | faces found | samples | best |",
        "|---:|---:|---:|:---:|---|:---:|",
    ]
    for checkpoint in lora.checkpoints:
        scored = lora.scores_plot is not None and bool(checkpoint.samples)
        loss = "—" if checkpoint.loss is None else f"{checkpoint.loss:.4f}"
        samples = " ".join(
            _gallery_cell(sample, f"step {checkpoint.step} sample {number + 1}", store, SAMPLE_SIDE)
            for number, sample in enumerate(checkpoint.samples)
        )
        best = "**best**" if checkpoint.step == lora.best.step else ""
        lines.append(
            f"| {checkpoint.step} | {loss} | {_checkpoint_distance(checkpoint.identity_distance, scored)} "
            f"| {checkpoint.faces_found if scored else '—'} | {samples} | {best} |"
        )
    return "\n".join([*lines, ""])


def renders_markdown(
    renders: Sequence[RenderItem], contact_sheet: ArtifactRef, store: ArtifactStore | None = None
) -> str:
    """The renders' contact sheet, then each render (a video by its poster frame) with its identity scores
    (best frame and median over the frames scored), prompt and seed."""
    store = store or get_store()
    lines = [
        markdown_image("renders: contact sheet", image_url(contact_sheet, store)),
        "",
        f"Identity distance to the reference (same person below {IDENTITY_THRESHOLD}, lower is closer): "
        "the best-scoring frame and the median over the frames scored.",
        "",
        "| picture | render | identity (best) | identity (median) | faces / frames | seed | prompt |",
        "|---|---|---:|---:|:---:|---:|---|",
    ]
    for item in renders:
        alt = f"{item.kind} s{item.seed}"
        lines.append(
            f"| {render_cell(item, alt, store)} | {item.kind}, {item.size}px, {item.steps} steps"
            + (f", {item.frames} frames" if item.kind == "video" else "")
            + f" | {distance_text(item.identity_distance, item.frames_scored > 0)} "
            f"| {median_text(item)} "
            f"| {item.faces_found} / {item.frames_scored} | {item.seed} | {cell_text(item.prompt)} |"
        )
    return "\n".join([*lines, ""])


def strengths_markdown(trigger: str, strengths: Strengths, store: ArtifactStore | None = None) -> str:
    """The probe's grid of stills, then each pair of strengths with its stills' distances and their median, the
    chosen pair marked."""
    store = store or get_store()
    lines = [
        f"### {cell_text(trigger)}: render strengths",
        "",
        markdown_image(f"{trigger}: identity distance by strength", image_url(strengths.grid, store)),
        "",
        f"Identity distance of each still to the reference (same person below {IDENTITY_THRESHOLD}, lower is "
        "closer); a pair scores the median, a still without a face a miss. Renders take the chosen pair unless "
        "`render.lora_scale` or `render.speed_lora_scale` is set.",
        "",
        "| LoRA | speed LoRAs | distance by seed | median | chosen |",
        "|---:|---:|---|---:|:---:|",
    ]
    for (lora, speed), distances in by_pair(strengths.stills).items():
        median = pair_median(distances)
        chosen = (lora, speed) == (strengths.lora_scale, strengths.speed_lora_scale)
        lines.append(
            f"| {lora:g} | {'—' if speed is None else f'{speed:g}'} "
            f"| {', '.join(distance_text(distance, True) for distance in distances)} "
            f"| {'miss' if median is None else f'{median:.3f}'} | {'**chosen**' if chosen else ''} |"
        )
    return "\n".join([*lines, ""])


# --- publishing -------------------------------------------------------------------------------------------------


def dataset_artifact_key(trigger: str) -> str:
    return prefect_artifact_key(f"{trigger}-dataset-pictures")


def checkpoints_artifact_key(trigger: str) -> str:
    return prefect_artifact_key(f"{trigger}-checkpoint-plot")


def renders_artifact_key(trigger: str) -> str:
    return prefect_artifact_key(f"{trigger}-renders")


def publish_dataset(dataset: DatasetRef, store: ArtifactStore | None = None) -> UUID | None:
    """The dataset's pictures as the markdown artifact '<trigger>-dataset-pictures' of the current run."""
    return publish_markdown(
        dataset_artifact_key(dataset.trigger),
        lambda: dataset_markdown(dataset, store),
        f"{dataset.trigger}: the contact sheet and every refused try with its reasons",
    )


def publish_checkpoints(lora: LoraRef, store: ArtifactStore | None = None) -> UUID | None:
    """The checkpoints' scores as the markdown artifact '<trigger>-checkpoint-plot' of the current run."""
    return publish_markdown(
        checkpoints_artifact_key(lora.trigger),
        lambda: checkpoints_markdown(lora, store),
        f"{lora.trigger}: identity distance by step",
    )


def publish_renders(
    trigger: str, renders: Sequence[RenderItem], contact_sheet: ArtifactRef, store: ArtifactStore | None = None
) -> UUID | None:
    """The renders as the markdown artifact '<trigger>-renders' of the current run."""
    return publish_markdown(
        renders_artifact_key(trigger),
        lambda: renders_markdown(renders, contact_sheet, store),
        f"{trigger}: the renders and how like the reference they are (lower is closer)",
    )


def publish_strengths(trigger: str, strengths: Strengths, store: ArtifactStore | None = None) -> UUID | None:
    """The strength probe as the markdown artifact '<trigger>-strengths' of the current run."""
    return publish_markdown(
        prefect_artifact_key(f"{trigger}-strengths"),
        lambda: strengths_markdown(trigger, strengths, store),
        f"{trigger}: how like the reference the LoRA looks at each pair of strengths (lower is closer)",
    )


def publish_markdown(key: str, markdown: Callable[[], str], description: str | Callable[[], str]) -> UUID | None:
    """Create the markdown artifact inside a Prefect flow or task run (elsewhere: nothing, None). The description
    (markdown too) is what the UI shows on the artifact's card and above every version of its key.

    Pictures are for people: a failure to make them is logged and never fails the stage that called this.
    """
    from prefect.artifacts import create_markdown_artifact
    from prefect.context import FlowRunContext, TaskRunContext

    if FlowRunContext.get() is None and TaskRunContext.get() is None:
        return None
    try:
        text = description if isinstance(description, str) else description()
        return create_markdown_artifact(key=key, markdown=markdown(), description=text)
    except Exception as exc:
        log.warning("could not publish the pictures artifact %r: %s", key, exc)
        return None


# --- helpers ----------------------------------------------------------------------------------------------------


def markdown_image(alt: str, url: str) -> str:
    return f"![{_alt(alt)}]({url})"


def _gallery_cell(ref: ArtifactRef, alt: str, store: ArtifactStore, max_side: int) -> str:
    """A thumbnail; on S3 followed by a link to the full-size image (a link to a data: URI would not open).

    Not a linked image (`[![alt](thumb)](full)`): the Prefect UI's v1 front end drops those.
    """
    thumbnail = markdown_image(alt, thumbnail_url(ref, store, max_side))
    if isinstance(store, S3Store):
        return f"{thumbnail} [full size]({store.presigned_url(ref.key, PRESIGNED_URL_LIFETIME)})"
    return thumbnail


def render_cell(item: RenderItem, alt: str, store: ArtifactStore) -> str:
    if item.kind == "image":
        return _gallery_cell(item.output, alt, store, THUMBNAIL_SIDE)
    poster = markdown_image(f"{alt} (poster)", picture_url(poster_frame(item, store), _poster_name(item), store))
    if isinstance(store, S3Store):  # a browser plays the video itself
        return f"{poster} [play video]({store.presigned_url(item.output.key, PRESIGNED_URL_LIFETIME)})"
    return poster


def poster_frame(item: RenderItem, store: ArtifactStore | None = None) -> Image.Image:
    """The frame a video is shown by: the middle of three spread over it, as on the renders' contact sheet."""
    from likeness.media.imaging import sample_frames

    store = store or get_store()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / item.output.filename
        path.write_bytes(get_bytes(item.output, store))
        frames = sample_frames(path, 3, item.frames)
    return Image.fromarray(frames[len(frames) // 2])


def _poster_name(item: RenderItem) -> str:
    return f"{_stem(item.output.filename)}_poster.jpg"


def _stem(filename: str) -> str:
    return filename.rsplit(".", 1)[0] if "." in filename else filename


def _rejection_alt(rejection: Rejection) -> str:
    return f"{rejection.shot}, try {rejection.attempt + 1}: {'; '.join(rejection.reasons)}"


def distance_text(distance: float | None, scored: bool) -> str:
    if not scored:
        return "not scored"
    return "no face" if distance is None else f"{distance:.3f}"


def median_text(item: RenderItem) -> str:
    """The median over the frames scored; a miss where half the frames or more had no face."""
    if item.frames_scored == 0:
        return "not scored"
    if item.identity_median is None:
        return "miss" if item.faces_found else "no face"
    return f"{item.identity_median:.3f}"


def _checkpoint_distance(distance: float | None, scored: bool) -> str:
    if not scored:
        return "not scored"
    return "—" if distance is None else f"{distance:.3f}"


def cell_text(text: str) -> str:
    """Text safe in a markdown table cell: no row breaks, no column breaks, no raw HTML."""
    return " ".join(text.split()).replace("\\", "\\\\").replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def _alt(text: str) -> str:
    return cell_text(text).replace("[", "(").replace("]", ")")

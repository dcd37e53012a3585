"""Pictures in the Prefect UI: URLs a browser loads (presigned on S3, data: thumbnails on a local store), the
markdown of the dataset, checkpoint and render artifacts, and a real headless Chromium opening them in the UI: a
run's own, and those of a produce run started from its deployment's form, on that run's page."""

from __future__ import annotations

import base64
import io
import re
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter, ImageOps

from likeness.media.imaging import encode_mp4
from likeness.records import DatasetItem, LoraCheckpoint, LoraRef, Rejection, RenderItem
from likeness.run.pictures import (
    PRESIGNED_URL_LIFETIME,
    checkpoints_markdown,
    dataset_markdown,
    image_url,
    publish_dataset,
    renders_markdown,
    thumbnail_url,
)
from likeness.storage.artifacts import ArtifactRef, get_bytes, get_store, load_image, put_bytes, put_image
from likeness.storage.local import LocalStore
from likeness.storage.s3 import S3Store
from tests.photos import astronaut, grace_hopper, no_face_photo
from tests.prefect_server import api_post, prefect_server
from tests.records import FIGURES, dataset_item

CHROMIUM = Path("/usr/bin/chromium")
IMAGE_RE = re.compile(r"!\[[^\]]*\]\(([^)\s]+)\)")


# --- records made of real photos in the store ---------------------------------------------------------------


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, likeness_env: Path, monkeypatch: pytest.MonkeyPatch):
    """The process-wide store (what the stages use): a local folder, or a fresh prefix on SeaweedFS."""
    from likeness import settings
    from likeness.storage import artifacts

    if request.param == "s3":
        s3 = request.getfixturevalue("s3_server")
        monkeypatch.setenv("LIKENESS_STORE_URI", f"s3://likeness-ui/{uuid.uuid4().hex[:8]}")
        monkeypatch.setenv("LIKENESS_S3_ENDPOINT", s3.endpoint)
        monkeypatch.setenv("LIKENESS_S3_ACCESS_KEY", s3.access_key)
        monkeypatch.setenv("LIKENESS_S3_SECRET_KEY", s3.secret_key)
        settings.get_settings.cache_clear()
        artifacts.get_store.cache_clear()
    found = get_store()
    assert isinstance(found, S3Store if request.param == "s3" else LocalStore)
    return found


def rejection(shot: str, attempt: int, image: Image.Image, *reasons: str, distance: float | None) -> Rejection:
    figures = FIGURES.model_copy(update={"identity_distance": distance, "faces": 0 if distance is None else 1})
    return Rejection(
        shot=shot,
        attempt=attempt,
        seed=100 + attempt,
        image=put_image(image, f"{shot}_try{attempt + 1}.png"),
        figures=figures,
        reasons=reasons,
    )


def dataset_inputs() -> tuple[ArtifactRef, list[DatasetItem], list[tuple[Rejection, ...]]]:
    """A reference, two kept shots (one after a refused try) and a shot dropped after two refused tries."""
    reference = put_image(astronaut(), "reference.png")
    refused_front = rejection("front", 0, no_face_photo(), "no face found", distance=None)
    front = dataset_item("front", put_image(astronaut().resize((384, 384)), "front.png"), "Ada, front view")
    smile = dataset_item("smile", put_image(ImageOps.mirror(astronaut()), "smile.png"), "Ada, smiling")
    dropped = (
        rejection("profile", 0, grace_hopper(), "identity distance 0.68 above 0.6", distance=0.68),
        rejection(
            "profile",
            1,
            grace_hopper().filter(ImageFilter.GaussianBlur(4)),
            "identity distance 0.71 above 0.6",
            "too blurry | sharpness 12 below 40",
            distance=0.71,
        ),
    )
    return reference, [front.model_copy(update={"rejected": (refused_front,)}), smile], [dropped]


def assemble(reference: ArtifactRef, items: list[DatasetItem], dropped: list[tuple[Rejection, ...]]):
    from tasks.dataset import assemble_dataset

    return assemble_dataset.fn("Ada", reference, items, dropped, True, [], {"editor": {"source": "test"}})


def trained_lora() -> LoraRef:
    """Two checkpoints with real samples: another person (and a photo without a face), then the reference person."""
    samples = {
        3: [grace_hopper(), no_face_photo()],
        6: [astronaut().filter(ImageFilter.GaussianBlur(1)), astronaut().resize((384, 384))],
    }
    checkpoints = tuple(
        LoraCheckpoint(
            step=step,
            loss=0.3 / step,
            weights=put_bytes(f"weights of step {step}".encode(), f"Ada_{step:09d}.safetensors"),
            samples=tuple(put_image(image, f"Ada_{step}_{n}.png") for n, image in enumerate(images)),
        )
        for step, images in samples.items()
    )
    return LoraRef(trigger="Ada", base_model="tiny:video", checkpoints=checkpoints)


def renders(reference: ArtifactRef) -> list[RenderItem]:
    """An image render and a 5-frame video render (the reference person in frames 0 and 2), scored for identity."""
    from tasks.render_review import score_render

    common = {"negative_prompt": "", "steps": 4, "lora": reference, "lora_scale": 1.0, "model": "tiny:video"}
    photo = np.asarray(astronaut().resize((192, 192)))
    noise = np.full_like(photo, 128)
    video = put_bytes(encode_mp4(np.stack([photo, noise, photo, noise, noise]), 8), "Ada_video_s7.mp4")
    image = put_image(ImageOps.mirror(astronaut()).resize((256, 256)), "Ada_image_s3.png")
    items = [
        RenderItem(kind="image", prompt="Ada on a beach | golden hour", seed=3, frames=1, size=256, output=image,
                   **common),
        RenderItem(kind="video", prompt="Ada waves <hello>", seed=7, frames=5, size=192, fps=8, output=video,
                   **common),
    ]  # fmt: skip
    return [score_render.fn(item, reference) for item in items]


def image_urls(markdown: str) -> list[str]:
    return IMAGE_RE.findall(markdown)


def decode_data_uri(url: str) -> Image.Image:
    prefix = "data:image/jpeg;base64,"
    assert url.startswith(prefix), url[:60]
    image = Image.open(io.BytesIO(base64.b64decode(url.removeprefix(prefix))))
    assert image.format == "JPEG"
    return image


def http_get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.read()


# --- URLs ---------------------------------------------------------------------------------------------------


def test_a_local_image_becomes_a_downscaled_jpeg_data_uri(tmp_path: Path) -> None:
    local = LocalStore(tmp_path / "store")
    ref = put_image(grace_hopper(), "grace.png", local)  # 512x600
    url = image_url(ref, local, max_side=200)
    image = decode_data_uri(url)
    assert max(image.size) <= 200 and image.size == (171, 200)  # the aspect ratio is kept
    assert not url.startswith("file:") and len(url) < 20_000
    small = put_image(Image.new("RGB", (40, 30), "teal"), "small.png", local)
    assert decode_data_uri(image_url(small, local, max_side=200)).size == (40, 30)  # never enlarged
    assert decode_data_uri(thumbnail_url(ref, local, max_side=64)).size == (55, 64)


def test_an_s3_image_is_a_presigned_url_that_downloads_its_bytes_for_seven_days(s3_server) -> None:
    s3 = S3Store(s3_server.endpoint, s3_server.access_key, s3_server.secret_key, bucket="likeness-ui", prefix="urls")
    ref = put_image(grace_hopper(), "grace.png", s3)
    url = image_url(ref, s3)
    assert url.startswith(s3_server.endpoint) and "X-Amz-Expires=604800" in url
    assert PRESIGNED_URL_LIFETIME.total_seconds() == 604800
    assert http_get(url) == get_bytes(ref, s3)
    assert s3_server.secret_key not in url
    # A gallery thumbnail is a small JPEG stored beside the image, presigned the same way.
    thumb = Image.open(io.BytesIO(http_get(thumbnail_url(ref, s3, max_side=64))))
    assert thumb.format == "JPEG" and thumb.size == (55, 64)


# --- markdown -----------------------------------------------------------------------------------------------


def test_the_dataset_markdown_shows_the_sheet_and_every_refused_try_with_its_reasons(likeness_env: Path) -> None:
    reference, items, dropped = dataset_inputs()
    dataset = assemble(reference, items, dropped)
    markdown = dataset_markdown(dataset)
    urls = image_urls(markdown)
    assert len(urls) == 1 + 3  # the contact sheet, three refused tries
    assert all(decode_data_uri(url) for url in urls)
    assert max(decode_data_uri(urls[0]).size) > max(decode_data_uri(urls[1]).size)  # the sheet is not a thumbnail
    assert "no face found" in markdown and "identity distance 0.68 above 0.6" in markdown
    # Every reason of every refused try, a '|' in one escaped so the table keeps its columns.
    for tries in [items[0].rejected, *dropped]:
        for tried in tries:
            for reason in tried.reasons:
                assert reason.replace("|", "\\|") in markdown
    rows = [line for line in markdown.splitlines() if line.startswith("| ![")]
    assert [row.split(" | ")[1:3] for row in rows] == [["front", "1"], ["profile", "1"], ["profile", "2"]]
    assert "kept on a later try" in rows[0] and rows[1].endswith("| dropped |")
    assert publish_dataset(dataset) is None  # outside a Prefect run: nothing is published


def test_the_renders_markdown_shows_each_render_with_its_identity_scores(likeness_env: Path) -> None:
    from tasks.render_review import renders_contact_sheet

    reference = put_image(astronaut(), "reference.png")
    items = renders(reference)
    sheet = put_image(renders_contact_sheet(items), "Ada_renders.png")
    markdown = renders_markdown(items, sheet)
    image, video = items
    assert image.identity_distance is not None and video.identity_distance is not None
    assert video.identity_median is None  # three of five frames have no face
    assert f"| {image.identity_distance:.3f} | {image.identity_distance:.3f} | 1 / 1 | 3 |" in markdown
    assert f"| {video.identity_distance:.3f} | miss | 2 / 5 | 7 |" in markdown
    assert "Ada on a beach \\| golden hour" in markdown and "Ada waves &lt;hello&gt;" in markdown
    urls = image_urls(markdown)
    assert len(urls) == 3  # the sheet, the image, the video's poster
    poster = decode_data_uri(urls[2])
    assert poster.size == (192, 192)
    assert np.asarray(poster).std() > 20  # the middle frame is a photo frame, not the grey one


def test_the_checkpoints_markdown_has_the_plot_the_scores_and_the_samples(likeness_env: Path) -> None:
    from likeness.identity import get_identity_model, reference_face
    from likeness.training.checkpoints import score_checkpoint, score_plot_png

    # As pick_checkpoint scores them (which, outside a run, would start a temporary Prefect server for its table).
    lora, model = trained_lora(), get_identity_model()
    face, _ = reference_face(astronaut(), "astronaut", model)
    scores = {
        c.step: score_checkpoint(c.step, [load_image(s) for s in c.samples], face, model) for c in lora.checkpoints
    }
    plot = put_bytes(score_plot_png(list(scores.values()), 6, "Ada"), "Ada_identity_by_step.png")
    checkpoints = tuple(
        c.model_copy(update={"identity_distance": scores[c.step].distance, "faces_found": scores[c.step].faces_found})
        for c in lora.checkpoints
    )
    lora = lora.model_copy(update={"checkpoints": checkpoints, "best_step": 6, "scores_plot": plot})
    markdown = checkpoints_markdown(lora)
    urls = image_urls(markdown)
    assert len(urls) == 1 + 4 and decode_data_uri(urls[0]).size == (800, 450)  # the plot, whole
    assert all(max(decode_data_uri(url).size) <= 128 for url in urls[1:])  # the samples, small
    (best,) = [line for line in markdown.splitlines() if "**best**" in line]
    assert best.startswith(f"| 6 | 0.0500 | {lora.best.identity_distance:.3f} | 2 |")
    assert markdown.splitlines()[-1].startswith("| 6 |")


# --- the Prefect UI in a real browser -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def prefect_ui(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with prefect_server(tmp_path_factory.mktemp("prefect-ui"), ui=True) as api:
        yield api.removesuffix("/api")


def chromium_executable() -> str:
    if not CHROMIUM.is_file():
        pytest.fail(f"no Chromium at {CHROMIUM}: the browser test needs Debian's chromium (apt-get install chromium)")
    return str(CHROMIUM)


@contextmanager
def headless_chromium() -> Iterator:
    """A fresh headless Chromium page (playwright driving Debian's browser), closed whatever happens."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the browser test needs playwright: pip install -e '.[test]' (no `playwright install` needed)")
    executable = chromium_executable()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=executable, headless=True, args=["--no-sandbox", "--disable-dev-shm-usage"]
        )
        try:
            yield browser.new_page(viewport={"width": 1400, "height": 1000})
        finally:
            browser.close()


def wait_for_images(page, urls: list[str], timeout_s: float = 30) -> list[dict]:
    """The page's <img> elements that show one of `urls`, once each of `urls` is on the page and has finished
    (loaded or failed), and still is after the page has gone quiet (the v2 UI renders an artifact twice)."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    script = (
        "[...document.images].map(img => ({src: img.getAttribute('src'), alt: img.alt,"
        " loaded: img.complete && img.naturalWidth > 0, complete: img.complete}))"
    )
    wanted = set(urls)
    deadline = time.monotonic() + timeout_s
    while True:
        left_ms = max(1.0, (deadline - time.monotonic()) * 1000)
        try:
            page.wait_for_function(
                "urls => urls.every(url => [...document.images].some(img => img.getAttribute('src') === url"
                " && img.complete))",
                arg=urls,
                timeout=left_ms,
            )
            page.wait_for_load_state("networkidle", timeout=left_ms)
        except PlaywrightTimeout:
            found = [{**img, "src": img["src"][:80]} for img in page.evaluate(script)]
            pytest.fail(f"{page.url}: the {len(urls)} pictures did not all finish loading in {timeout_s} s: {found}")
        shown = [img for img in page.evaluate(script) if img["src"] in wanted]
        if {img["src"] for img in shown} == wanted and all(img["complete"] for img in shown):
            return shown


@pytest.mark.slow
def test_the_prefect_ui_shows_every_picture_of_a_run_in_a_real_browser(
    store, prefect_ui: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from prefect import flow
    from prefect.context import FlowRunContext
    from prefect.settings import PREFECT_API_URL, PREFECT_RESULTS_LOCAL_STORAGE_PATH, temporary_settings

    from tasks.checkpoints import pick_checkpoint
    from tasks.render_review import render_sheet

    api = f"{prefect_ui}/api"
    reference, items, dropped = dataset_inputs()
    lora, render_items = trained_lora(), renders(reference)

    @flow(name="pictures")
    def pictures() -> str:
        # The stages themselves publish the pictures, as in a real run.
        assemble(reference, items, dropped)
        pick_checkpoint.fn(lora, reference, identity=True)
        render_sheet.fn(render_items, "Ada")
        return str(FlowRunContext.get().flow_run.id)

    with temporary_settings({PREFECT_API_URL: api, PREFECT_RESULTS_LOCAL_STORAGE_PATH: tmp_path / "results"}):
        run_id = pictures()

    artifacts = api_post(api, "/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [run_id]}}})
    markdowns = {a["key"]: a for a in artifacts if a["type"] == "markdown"}
    expected = {"ada-dataset-pictures": 4, "ada-checkpoint-plot": 5, "ada-renders": 3}
    assert {key: len(image_urls(markdowns[key]["data"])) for key in expected if key in markdowns} == expected
    on_s3 = isinstance(store, S3Store)
    for artifact in markdowns.values():
        urls = image_urls(artifact["data"])
        assert all(url.startswith("http://" if on_s3 else "data:image/jpeg;base64,") for url in urls)

    failed_requests: list[str] = []
    screenshots: list[Path] = []
    with headless_chromium() as page:
        page.on(
            "requestfailed",
            lambda request: (
                request.resource_type == "image" and failed_requests.append(f"{request.url[:120]}: {request.failure}")
            ),
        )
        # The run's Artifacts tab lists the three pictures artifacts (as cards; their pictures show on each one's page).
        page.goto(f"{prefect_ui}/v2/runs/flow-run/{run_id}?tab=Artifacts")
        for key in expected:
            page.get_by_text(key, exact=True).first.wait_for(timeout=30_000)
        screenshots.append(tmp_path / f"{store.__class__.__name__}-run-artifacts.png")
        page.screenshot(path=screenshots[-1], full_page=True)
        # Each artifact's page, in the default (v2) UI and the v1 UI: every picture loads.
        for key in expected:
            urls = image_urls(markdowns[key]["data"])
            for ui, route in (("v2", "/v2/artifacts/artifact/"), ("v1", "/artifacts/artifact/")):
                page.goto(f"{prefect_ui}{route}{markdowns[key]['id']}")
                shown = wait_for_images(page, urls)
                screenshots.append(tmp_path / f"{store.__class__.__name__}-{key}-{ui}.png")
                page.screenshot(path=screenshots[-1], full_page=True)
                broken = [img["alt"] for img in shown if not img["loaded"]]
                assert not broken, f"{key} ({ui}): pictures that did not load: {broken}; failed: {failed_requests}"
                assert len(shown) == len(urls), f"{key} ({ui}): {len(shown)} of {len(urls)} pictures shown"
    with capsys.disabled():
        for path in screenshots:
            print(f"\nscreenshot: {path}")
    assert all(path.stat().st_size > 10_000 for path in screenshots)
    assert not failed_requests


# --- a produce run started from its deployment's form ---------------------------------------------------------

RUN_TIMEOUT_S = 900


@pytest.mark.slow
def test_a_produce_run_started_from_its_form_shows_the_pictures_on_its_page(
    prefect_ui: str, s3_server, models_dir: Path, face_photo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A CPU studio (`likeness deploy`, a CPU and a GPU worker, each its own machine, an S3 store): a person puts
    a photo in the store, fills only the produce form's name and reference in the browser and submits; once the
    run is done, its page's Artifacts tab shows the character's pictures, every one loaded from the store."""
    from tests.conftest import cli_env
    from tests.test_operations_e2e import Machines, s3_client

    api = f"{prefect_ui}/api"
    prefix = f"form-{uuid.uuid4().hex[:8]}"
    studio = Machines(
        tmp_path,
        api,
        {
            **cli_env(tmp_path / "common", models_dir, api),
            "LIKENESS_STORE_URI": f"s3://likeness-ui/{prefix}",
            "LIKENESS_S3_ENDPOINT": s3_server.endpoint,
            "LIKENESS_S3_ACCESS_KEY": s3_server.access_key,
            "LIKENESS_S3_SECRET_KEY": s3_server.secret_key,
            "PREFECT_WORKER_QUERY_SECONDS": "1",
        },
    )
    client = s3_client(s3_server)
    if not client.bucket_exists("likeness-ui"):
        client.make_bucket("likeness-ui")
    deployed = studio.likeness("deploy", "--gpu-slots", "1")
    assert deployed.returncode == 0, deployed.stderr[-3000:]
    put = studio.likeness("put", str(face_photo))
    assert put.returncode == 0, put.stderr[-3000:]
    photo = put.stdout.strip()
    (produce,) = [d for d in api_post(api, "/deployments/filter", {}) if d["name"] == "produce"]

    screenshots: list[Path] = []
    failed_requests: list[str] = []
    try:
        studio.start_worker("cpu-machine", "likeness-cpu")
        studio.start_worker("gpu-machine", "likeness-gpu", "--limit", "1")
        with headless_chromium() as page:
            page.on(
                "requestfailed",
                lambda request: (
                    request.resource_type == "image"
                    and failed_requests.append(f"{request.url[:120]}: {request.failure}")
                ),
            )
            # The deployment's page, Run, Custom run: the form, where only the name and the photo are filled in.
            page.goto(f"{prefect_ui}/v2/deployments/deployment/{produce['id']}")
            page.get_by_role("button", name="Run", exact=True).click()
            page.get_by_role("menuitem", name="Custom run").click()
            page.get_by_label("name", exact=True).fill("Ada")
            page.get_by_label("reference", exact=True).fill(photo)
            screenshots.append(tmp_path / "produce-form.png")
            page.screenshot(path=screenshots[-1], full_page=True)
            page.get_by_role("button", name="Submit").click()
            run = wait_for_a_final_run(api, produce["id"])
            assert run["state"]["type"] == "COMPLETED", (run["state"], studio_logs(tmp_path))
            assert (run["parameters"]["name"], run["parameters"]["reference"]) == ("Ada", photo)
            assert run["parameters"].get("profile", "tiny") == "tiny"  # the form's default on a CPU studio

            artifacts = api_post(api, "/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [run["id"]]}}})
            (character,) = [a for a in artifacts if a["key"] == "ada-character"]
            urls = image_urls(character["description"])
            alts = re.findall(r"!\[([^\]]*)\]", character["description"])
            assert alts[:3] == [
                "Ada: dataset contact sheet",
                "Ada: identity distance by step",
                "Ada: identity distance by strength",
            ]
            assert len(alts) > 3 and all(url.startswith(s3_server.endpoint) for url in urls)  # presigned

            # The run's own page, its Artifacts tab: the character's card shows every picture, loaded.
            page.goto(f"{prefect_ui}/v2/runs/flow-run/{run['id']}")
            page.get_by_role("tab", name="Artifacts").click()
            shown = wait_for_images(page, urls, timeout_s=60)
            screenshots.append(tmp_path / "produce-run-artifacts.png")
            page.screenshot(path=screenshots[-1], full_page=True)
            broken = [img["alt"] for img in shown if not img["loaded"]]
            assert not broken, f"pictures that did not load: {broken}; failed: {failed_requests}"
            assert {img["alt"] for img in shown} == set(alts)
            # The character's key on the Artifacts page: the same pictures, wide, above the key's earlier versions.
            page.goto(f"{prefect_ui}/v2/artifacts/key/ada-character")
            shown = wait_for_images(page, urls, timeout_s=60)
            screenshots.append(tmp_path / "character-key.png")
            page.screenshot(path=screenshots[-1], full_page=True)
            assert all(img["loaded"] for img in shown), failed_requests
    finally:
        for machine in list(studio.workers):
            studio.stop_worker(machine)
    with capsys.disabled():
        for path in screenshots:
            print(f"\nscreenshot: {path}")
    assert all(path.stat().st_size > 10_000 for path in screenshots)
    assert not failed_requests


def wait_for_a_final_run(api: str, deployment_id: str, timeout_s: float = RUN_TIMEOUT_S) -> dict:
    """The one flow run of the deployment, once it is final."""
    deadline = time.monotonic() + timeout_s
    while True:
        runs = api_post(api, "/flow_runs/filter", {"deployments": {"id": {"any_": [deployment_id]}}})
        assert len(runs) <= 1, [run["name"] for run in runs]
        if runs and runs[0]["state"] and runs[0]["state"]["type"] in {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}:
            return runs[0]
        assert time.monotonic() < deadline, f"no final run of the form's deployment in {timeout_s} s: {runs}"
        time.sleep(2)


def studio_logs(tmp: Path) -> str:
    return "\n".join(f"{log.name}: {log.read_text(errors='replace')[-2000:]}" for log in sorted(tmp.glob("*.log")))

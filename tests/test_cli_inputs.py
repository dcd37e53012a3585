"""Bad input is refused before any model loads, with a message that names the problem."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from likeness.cli.app import app
from tests.photos import grace_hopper


@pytest.fixture
def run(likeness_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Invoke the CLI in-process from tmp_path; afterwards check no model folder was made."""
    models = tmp_path / "fresh-models"
    monkeypatch.setenv("LIKENESS_MODELS_DIR", str(models))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    from likeness import settings

    settings.get_settings.cache_clear()
    monkeypatch.chdir(tmp_path)

    def invoke(*args: str):
        result = CliRunner().invoke(app, list(args))
        assert not models.exists(), "a model was built or loaded for bad input"
        return result

    return invoke


def photo(tmp_path: Path, size=(512, 512), name="photo.png") -> Path:
    """A real face photo (Grace Hopper) of `size`, so the reference's face check passes."""
    path = tmp_path / name
    grace_hopper().resize(size).save(path)
    return path


def blank(tmp_path: Path, name: str, size=(512, 512)) -> Path:
    """A plain tan picture: a usable image with no face in it."""
    path = tmp_path / name
    Image.new("RGB", size, "tan").save(path)
    return path


def truncated_jpeg(tmp_path: Path) -> Path:
    buffer = io.BytesIO()
    Image.effect_noise((512, 512), 40).convert("RGB").save(buffer, "JPEG")
    path = tmp_path / "cut.jpg"
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    return path


@pytest.mark.parametrize(
    ("make_image", "message"),
    [
        (lambda tmp: tmp / "missing.png", "reference image not found"),
        (lambda tmp: (tmp / "notes.png").write_text("hello") and tmp / "notes.png", "is not an image"),
        (truncated_jpeg, "is truncated or corrupt"),
        (lambda tmp: photo(tmp, (120, 90)), "is 120x90 px; a reference photo needs at least 256 px"),
    ],
    ids=["missing", "not-an-image", "truncated", "too-small"],
)
def test_bad_reference_image(run, tmp_path, make_image, message):
    result = run("produce", "Ada", "--image", str(make_image(tmp_path)))
    assert result.exit_code == 2
    assert message in result.stderr


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("../x", "is not a safe trigger word"),
        ("", "character name is empty"),
        ("   ", "character name is empty"),
        ("ada\x1b[31m", "contains control characters"),
        ("ada/lovelace", "is not a safe trigger word"),
        ("7up", "is not a safe trigger word"),
    ],
)
def test_bad_name(run, tmp_path, name, message):
    result = run("produce", name, "--image", str(photo(tmp_path)))
    assert result.exit_code == 2
    assert message in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--profile", "huge"],
            "unknown profile 'huge'; known: permissive, production, production-2509, production-5b, production-fp8, "
            "production-fullstep, tiny",
        ),
        (["--set", "dataset.upscale.start_step=4"], "start_step (4) must be below steps (4)"),
        (["--set", "render.video_frames=6"], "video_frames must be 4k+1"),
        (["--set", "render.fps"], "is not of the form section.field=value"),
        (
            ["--set", "dataset.variations=[front, cartwheel]"],
            "unknown catalogue entries 'cartwheel'; known: turnaround, front,",
        ),
    ],
)
def test_bad_settings(run, tmp_path, args, message):
    result = run("produce", "Ada", "--image", str(photo(tmp_path)), *args)
    assert result.exit_code == 2
    assert message in " ".join(result.stderr.split())


def test_production_profile_needs_a_gpu(run, tmp_path):
    result = run("produce", "Ada", "--image", str(photo(tmp_path)), "--profile", "production")
    assert result.exit_code == 2
    assert "runs on a CUDA GPU and this machine has none" in " ".join(result.stderr.split())


def test_production_profile_names_missing_weights(run, tmp_path, monkeypatch):
    monkeypatch.setenv("LIKENESS_DEVICE", "cpu")
    from likeness import settings

    settings.get_settings.cache_clear()
    result = run("produce", "Ada", "--image", str(photo(tmp_path)), "--profile", "production")
    assert result.exit_code == 2
    text = " ".join(result.stderr.split())
    assert "the editor weights (Qwen/Qwen-Image-Edit-2511) are not in the Hugging Face cache" in text


def test_a_foreign_output_folder_is_left_alone(run, tmp_path):
    out = tmp_path / "holiday"
    out.mkdir()
    (out / "beach.jpg").write_bytes(b"precious")
    result = run("produce", "Ada", "--image", str(photo(tmp_path)), "--out", str(out))
    assert result.exit_code == 2
    assert "holds no likeness.json: it is not a Likeness output folder" in " ".join(result.stderr.split())
    assert (out / "beach.jpg").read_bytes() == b"precious"


def test_an_incomplete_s3_store_setting_is_refused(run, tmp_path, monkeypatch):
    monkeypatch.setenv("LIKENESS_STORE_URI", "s3://characters/likeness")
    monkeypatch.setenv("LIKENESS_S3_SECRET_KEY", "do-not-print-me")
    from likeness import settings
    from likeness.storage import artifacts

    settings.get_settings.cache_clear()
    artifacts.get_store.cache_clear()
    result = run("produce", "Ada", "--image", str(photo(tmp_path)))
    assert result.exit_code == 2
    assert "opening s3://characters/likeness needs endpoint, access_key" in result.stderr
    assert "do-not-print-me" not in result.output + result.stderr


def test_a_reference_without_a_face_says_how_to_go_on_without_identity(run, tmp_path):
    result = run("produce", "Ada", "--image", str(blank(tmp_path, "drawing.png")))
    assert result.exit_code == 2
    message = " ".join(result.stderr.split())
    assert "no face found in" in message and "drawing.png" in message
    assert "for an illustrated or stylised character pass --no-identity" in message


@pytest.mark.parametrize(
    ("option", "make_image", "message"),
    [
        ("--garment", lambda tmp: tmp / "coat.png", "garment image not found: "),
        ("--garment", lambda tmp: (tmp / "coat.png").write_text("a coat") and tmp / "coat.png", "is not an image"),
        ("--pose", lambda tmp: tmp / "pose.png", "pose image not found: "),
        ("--pose", truncated_jpeg, "is truncated or corrupt"),
        ("--pose", lambda tmp: blank(tmp, "pose.png", (100, 100)), "is 100x100 px"),
    ],
    ids=["missing-garment", "garment-not-an-image", "missing-pose", "truncated-pose", "tiny-pose"],
)
def test_a_bad_garment_or_pose_image_is_refused(run, tmp_path, option, make_image, message):
    result = run("dataset", "Ada", "--image", str(photo(tmp_path)), option, str(make_image(tmp_path)))
    assert result.exit_code == 2
    assert message in " ".join(result.stderr.split())


def test_a_bad_catalogue_is_refused_naming_the_file_and_the_entry(run, tmp_path):
    mine = tmp_path / "mine.yaml"
    mine.write_text("entries:\n  - id: wave\n    group: pose\n    prompt: Wave.\n    colour: red\n")
    result = run("dataset", "Ada", "--image", str(photo(tmp_path)), "--catalogue", str(mine))
    assert result.exit_code == 2
    message = " ".join(result.stderr.split())
    assert "mine.yaml" in message and "'wave'" in message and "colour" in message
    missing = run("dataset", "Ada", "--image", str(photo(tmp_path)), "--catalogue", str(tmp_path / "none.yaml"))
    assert missing.exit_code == 2 and "none.yaml: no such file" in " ".join(missing.stderr.split())


def test_a_garment_or_pose_no_chosen_entry_uses_is_refused(run, tmp_path):
    garment = photo(tmp_path, name="coat.png")
    args = ["--image", str(photo(tmp_path)), "--garment", str(garment), "--set", "dataset.variations=[front]"]
    result = run("dataset", "Ada", *args)
    assert result.exit_code == 2
    message = " ".join(result.stderr.split())
    assert "1 garment image(s) given, but none of the chosen catalogue entries uses one" in message
    assert "(the default's is try-on) to dataset.variations" in message


@pytest.mark.parametrize("command", ["produce", "dataset", "train", "render", "estimate"])
def test_the_help_names_every_profile_and_reads_cleanly(run, command: str) -> None:
    from likeness.models.profiles import available_profiles

    result = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "400"})
    assert result.exit_code == 0, result.output
    line = next(line for line in result.output.splitlines() if "--profile" in line)
    assert f"Model profile: {', '.join(available_profiles())}, or the path of a .yaml file." in line
    assert "[default: ($LIKENESS_PROFILE, else tiny)]" in line
    stray = [text for text in result.output.splitlines() if re.search(r" [.,](\s|$)", text)]
    assert not stray, stray  # a space before a full stop or comma: markup that swallowed a word


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--no-identity"], "train.stop_when_flat stops on the identity score of the samples"),
        (["--backend", "runpod-aitoolkit"], "train.stop_when_flat needs our trainer"),
    ],
)
def test_stop_when_flat_is_refused_where_it_cannot_apply_before_anything_starts(run, tmp_path, args, message):
    stop = ["--set", "train.stop_when_flat.min_step=3", "--set", "train.stop_when_flat.patience=1"]
    result = run("produce", "Ada", "--image", str(photo(tmp_path)), *stop, *args)
    assert result.exit_code == 2
    assert message in " ".join(result.stderr.split())

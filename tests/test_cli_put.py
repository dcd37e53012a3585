"""`likeness put`: an image checked as a run would check it, stored, and its key printed for a deployment's form."""

from __future__ import annotations

from pathlib import Path

from PIL import Image
from typer.testing import CliRunner

from likeness.cli.app import app
from likeness.storage.locations import read_location


def test_a_photo_put_in_the_store_is_read_back_by_its_key_as_a_form_gives_it(likeness_env, face_photo: Path):
    from tasks.inputs import fetch_input_image

    result = CliRunner().invoke(app, ["put", str(face_photo)])
    assert result.exit_code == 0, result.output
    key = result.stdout.strip()
    assert key.startswith("sha256/") and key.endswith("/grace_hopper.jpg")
    assert "paste into the form's `reference` field" in result.stderr
    assert read_location(key) == face_photo.read_bytes()
    # What a produce run started from the form does with the key: the photo, oriented, as a PNG in the store.
    assert fetch_input_image.fn(key, "reference", "reference.png").key.endswith("/reference.png")


def test_an_image_that_would_be_refused_is_refused_here_and_nothing_is_stored(likeness_env, tmp_path: Path):
    small = tmp_path / "shirt.png"
    Image.new("RGB", (200, 240), "navy").save(small)
    refused = CliRunner().invoke(app, ["put", str(small)])
    assert refused.exit_code == 2
    assert "shirt.png is 200x240 px; a reference photo needs at least 256 px" in refused.stderr
    assert not (likeness_env / "store").exists()
    garment = CliRunner().invoke(app, ["put", "--as", "garment", str(small)])
    assert garment.exit_code == 0 and "`garments` field" in garment.stderr
    wrong = CliRunner().invoke(app, ["put", "--as", "hat", str(small)])
    assert wrong.exit_code == 2 and "--as 'hat' is not one of reference, garment, pose" in wrong.stderr

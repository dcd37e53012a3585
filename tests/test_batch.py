"""Batch production: the manifest's checks, and a three-character batch with one broken row and a cap of two."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from likeness.run.batch import ManifestProblem, read_manifest
from tests.conftest import cli_env
from tests.prefect_server import api_post

LIKENESS = str(Path(sys.executable).parent / "likeness")


@pytest.fixture
def folder(tmp_path: Path, face_photo: Path) -> Path:
    (tmp_path / "ada.jpg").write_bytes(face_photo.read_bytes())
    return tmp_path


def test_good_rows_are_read_from_yaml_and_csv_and_broken_ones_reported_by_number(folder):
    (folder / "m.yaml").write_text(
        "- {name: Ada Lovelace, image: ada.jpg, set: [render.seed=3], profile: tiny}\n"
        "- {name: Bob, image: missing.jpg}\n"
        "- {image: ada.jpg}\n"
        "- {name: Cy, image: ada.jpg, set: [render.seed]}\n"
    )
    rows, problems = read_manifest(folder / "m.yaml")
    (ada,) = rows
    assert ada.produce_args() == [
        "produce", "Ada Lovelace", "--image", str(folder / "ada.jpg"), "--out", "likeness-out/Ada_Lovelace",
        "--profile", "tiny", "--set", "render.seed=3",
    ]  # fmt: skip
    assert [number for number, _ in problems] == [2, 3, 4]
    assert "missing.jpg does not exist" in problems[0][1] and problems[1][1] == "no name"
    assert "'render.seed' is not of the form section.field=value" in problems[2][1]
    (folder / "m.csv").write_text("name,image,set,out\nAda,ada.jpg,render.seed=1;render.fps=8,ada-out\n")
    (row,), problems = read_manifest(folder / "m.csv")
    assert row.set == ("render.seed=1", "render.fps=8") and row.out == folder / "ada-out" and problems == []


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("m.yaml", "- {name: Ada, image: ada.jpg, colour: red}\n", "unknown column 'colour'; the columns are name"),
        ("m.yaml", "- {name: Ada Lovelace, image: ada.jpg}\n- {name: Ada_Lovelace, image: ada.jpg}\n",
         "rows 1 and 2 are both 'Ada_Lovelace'"),
        ("m.yaml", "name: Ada\n", "a YAML manifest is a list of mappings"),
        ("m.yaml", "[]\n", "names no character"),
        ("m.csv", "name,image\nAda,ada.jpg,extra\n", "more cells than the header has columns"),
        ("m.txt", "Ada\n", "a manifest is a .yaml, .yml or .csv file"),
    ],
)  # fmt: skip
def test_a_manifest_that_cannot_run_is_refused_whole(folder, name, content, message):
    (folder / name).write_text(content)
    with pytest.raises(ManifestProblem, match=message):
        read_manifest(folder / name)


def test_an_unreadable_manifest_is_refused(folder):
    (folder / "m.yaml").write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(ManifestProblem, match="cannot be read"):
        read_manifest(folder / "m.yaml")


@pytest.mark.slow
def test_a_batch_produces_the_good_rows_two_at_a_time_and_reports_the_broken_one(
    folder, models_dir, prefect_api, tmp_path
):
    # One shot per character: what is claimed is the batch's scheduling and report, not a character's dataset.
    one_shot = 'set: ["dataset.variations=[front]"]'
    (folder / "m.yaml").write_text(
        f"- {{name: Ada, image: ada.jpg, {one_shot}}}\n- {{name: Bob, image: missing.jpg}}\n"
        f"- {{name: Cy, image: ada.jpg, {one_shot}}}\n"
    )
    env = cli_env(tmp_path, models_dir, prefect_api)
    first = subprocess.run(
        [LIKENESS, "batch", "m.yaml", "--concurrency", "2"], env=env, cwd=folder, capture_output=True, text=True
    )
    # A broken row fails the batch, after the good ones ran.
    assert first.returncode == 1, first.stderr[-3000:]
    assert "skipped row 2: the image missing.jpg does not exist" in first.stderr
    for trigger in ("Ada", "Cy"):
        record = json.loads((folder / "likeness-out" / trigger / "likeness.json").read_text())
        assert record["complete"] and record["identity"]["trigger"] == trigger
    (table,) = api_post(prefect_api, "/artifacts/filter", {"artifacts": {"key": {"any_": ["batch-m"]}}})
    rows = json.loads(table["data"])
    assert [(row["row"], row["status"]) for row in rows] == [
        (1, "produced"), (2, "skipped: the image missing.jpg does not exist"), (3, "produced")
    ]  # fmt: skip
    # The same manifest again: both characters are answered from their folders.
    again = subprocess.run([LIKENESS, "batch", "m.yaml"], env=env, cwd=folder, capture_output=True, text=True)
    assert again.returncode == 1 and again.stdout.count("up to date") == 2, again.stdout


@pytest.mark.slow
def test_a_row_that_fails_in_produce_ends_only_that_row_and_every_row_is_said_as_it_goes(
    folder, models_dir, prefect_api, tmp_path
):
    import numpy as np
    from PIL import Image

    # A photo that reads fine and shows no face: its row fails in `produce`, where a face is required.
    Image.fromarray(np.tile(np.linspace(0, 255, 512, dtype=np.uint8), (512, 1))).save(folder / "wall.png")
    one_shot = 'set: ["dataset.variations=[front]"]'
    (folder / "m.yaml").write_text(f"- {{name: Wall, image: wall.png}}\n- {{name: Ada, image: ada.jpg, {one_shot}}}\n")
    env = cli_env(tmp_path, models_dir, prefect_api)
    done = subprocess.run(
        [LIKENESS, "batch", "m.yaml", "--concurrency", "1"], env=env, cwd=folder, capture_output=True, text=True
    )
    assert done.returncode == 1, done.stderr[-3000:]
    assert json.loads((folder / "likeness-out" / "Ada" / "likeness.json").read_text())["complete"]
    said = [" ".join(line.split()) for line in done.stderr.splitlines()]
    started = [line for line in said if line.startswith(("row 1 Wall: started", "row 2 Ada: started"))]
    assert len(started) == 2, said
    assert any(line.startswith("row 1 Wall: error:") and "--no-identity" in line for line in said), said
    assert "row 2 Ada: produced" in said
    assert "batch: 2 rows, 1 produced, 1 failed" in said


def test_the_totals_count_every_way_a_row_can_end():
    from likeness.run.batch import batch_totals

    statuses = ["produced", "up to date", "already produced (run calm-owl)", "skipped: no name", "error: no face"]
    results = [{"status": status} for status in statuses]
    assert batch_totals(results) == "batch: 5 rows, 1 produced, 2 up to date, 1 skipped, 1 failed"
    assert batch_totals([]) == "batch: 0 rows, none run"


def test_each_row_is_announced_as_it_starts_and_ends_and_the_totals_last(tmp_path, likeness_env):
    from likeness.run import progress
    from likeness.run.batch import BatchRow, produce_rows

    said: list[str] = []
    progress.add_announcer(said.append)
    try:
        row = BatchRow(row=1, name="Bob", image=str(tmp_path / "missing.jpg"), out=tmp_path / "bob")
        (result,) = produce_rows([row], concurrency=1, logs=tmp_path / "logs")
    finally:
        progress.remove_announcer(said.append)
    assert result["status"].startswith("error:") and "missing.jpg" in result["status"]
    assert said == [
        f"row 1 Bob: started (log {tmp_path / 'logs' / 'row-1-Bob.log'})",
        f"row 1 Bob: {result['status']}",
        "batch: 1 rows, 1 failed",
    ]

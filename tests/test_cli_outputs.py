"""The output folder against the real CLI: cut-off exports recover, write errors are one line,
an unchanged re-run is "up to date" without Prefect, and the folder's record is trusted only as far as it holds."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
from pathlib import Path

import pytest
import yaml

from likeness.models.profiles import PROFILES_DIR
from likeness.run.outputs import DATASET_CONTACT_SHEET, MANIFEST
from tests.conftest import cli_env
from tests.prefect_server import api_post
from tests.test_cli_e2e import LIKENESS

# Each runs the real CLI end to end (tens of seconds): `bin/test -m 'not slow'` skips them.
pytestmark = pytest.mark.slow

VARIATIONS = "dataset.variations=[front, smile]"


def produce(
    env: dict[str, str], cwd: Path, photo: Path, *extra: str, command: str = "produce", **run: object
) -> subprocess.CompletedProcess[str]:
    args = [LIKENESS, command, "Ada", "--image", str(photo), "--out", "out", "--set", VARIATIONS, *extra]
    return subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=600, **run)


def folder_bytes(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def flow_run_count(api: str) -> int:
    return len(api_post(api, "/flow_runs/filter", {}))


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, models_dir, prefect_api, face_photo):
    """The first run of Ada (two variations) in a fresh folder, every stage computed: the folder, its environment,
    the photo and the finished run (its stderr a pipe, not a terminal)."""
    tmp = tmp_path_factory.mktemp("outputs")
    env = cli_env(tmp, models_dir, prefect_api)
    first = produce(env, tmp, face_photo)
    assert first.returncode == 0, first.stderr[-4000:]
    return tmp, env, face_photo, first


@pytest.fixture(scope="module")
def made(first_run):
    """A folder where one run of Ada (two variations) finished."""
    tmp, env, photo, _ = first_run
    return tmp, env, photo


def limit_file_size(limit: int):
    """A preexec_fn that makes every write past `limit` bytes fail with EFBIG ("File too large")."""

    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_the_free_space_asked_for_is_within_twice_what_the_run_wrote(made, models_dir):
    # First of the tests on `made`: the store holds that one run's objects only.
    from likeness.config import RunConfig
    from likeness.models.profiles import load_profile
    from likeness.run.write_checks import TINY_TRANSFORMER, estimate_run_bytes, headroom

    tmp, _, _ = made
    profile = load_profile("tiny")
    config = RunConfig.from_profile(profile, {"dataset": {"variations": ["front", "smile"]}})
    shots = len(json.loads((tmp / "out" / MANIFEST).read_text())["dataset"]) // 2  # an image and a caption each
    reference = len((tmp / "out" / "reference.png").read_bytes())
    store, out = estimate_run_bytes(config, TINY_TRANSFORMER, shots, reference)
    written_out = sum(len(data) for data in folder_bytes(tmp / "out").values())
    written_store = sum(len(data) for data in folder_bytes(tmp / "likeness-data" / "store").values())
    asked = store + out + headroom(store + out)
    print(f"written {written_out + written_store} B, asked for {asked} B")
    assert written_out <= out and written_store <= store
    assert asked <= 2 * (written_out + written_store)


def test_an_unchanged_rerun_is_up_to_date_without_starting_prefect(made, prefect_api):
    tmp, env, photo = made
    runs = flow_run_count(prefect_api)
    again = produce(env, tmp, photo)
    assert again.returncode == 0, again.stderr
    assert "is up to date" in again.stderr
    assert flow_run_count(prefect_api) == runs

    # A missing file means "not up to date": the cached path puts it back.
    lora = sorted((tmp / "out" / "lora" / "checkpoints").iterdir())[-1]
    kept = lora.read_bytes()
    lora.unlink()
    restored = produce(env, tmp, photo)
    assert restored.returncode == 0, restored.stderr[-3000:]
    assert "up to date" not in restored.stderr
    assert lora.read_bytes() == kept
    assert flow_run_count(prefect_api) > runs
    assert json.loads((tmp / "out" / MANIFEST).read_text())["last_run"]["model_loads"] == {}


def test_an_export_cut_off_by_a_write_error_says_so_in_one_line_and_the_next_run_completes_it(made):
    tmp, env, photo = made
    out = tmp / "export-cut"
    complete = folder_bytes(tmp / "out")
    # Everything is cached in the store, so only the export writes: the dataset images fit, the contact sheet not.
    limit = max(len(data) for name, data in complete.items() if name.startswith("dataset/Ada_")) + 1024
    assert len(complete[DATASET_CONTACT_SHEET]) > limit
    cut = produce(env, tmp, photo, "--out", str(out), preexec_fn=limit_file_size(limit))
    assert cut.returncode == 2, cut.stderr[-3000:]
    error = [line for line in cut.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "File too large (EFBIG)" in error[0] and str(out / DATASET_CONTACT_SHEET) in error[0]
    assert f"(during the export into {out})" in error[0]
    assert "Traceback" not in cut.stderr
    assert not list(out.rglob(".*.likeness-part")), "a temporary file was left behind"
    record = json.loads((out / MANIFEST).read_text())
    assert record["complete"] is False
    assert not (out / DATASET_CONTACT_SHEET).exists() and not (out / "lora").exists()

    finished = produce(env, tmp, photo, "--out", str(out))
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert {k: v for k, v in folder_bytes(out).items() if k != MANIFEST} == {
        k: v for k, v in complete.items() if k != MANIFEST
    }
    assert json.loads((out / MANIFEST).read_text())["complete"] is True


def test_leftovers_of_a_killed_export_are_recognised_and_removed(made):
    tmp, env, photo = made
    out = tmp / "killed"
    out.mkdir()
    # What a SIGKILL during the first file of the first export leaves: one temporary file.
    (out / f".{MANIFEST}.x1y2.likeness-part").write_text("{")
    result = produce(env, tmp, photo, "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    assert not list(out.rglob(".*.likeness-part"))
    assert json.loads((out / MANIFEST).read_text())["complete"] is True


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "holds a likeness.json that Likeness cannot trust"),
        ('["a", "list"]', "it has no identity record"),
        ('{"identity": {"trigger": "Ada"}}', "written by another version of Likeness"),
    ],
    ids=["broken-json", "foreign-json", "old-format"],
)
def test_a_corrupt_or_foreign_record_is_refused(made, content, message):
    tmp, env, photo = made
    out = tmp / f"record-{abs(hash(content))}"
    out.mkdir()
    (out / MANIFEST).write_text(content)
    result = produce(env, tmp, photo, "--out", str(out))
    assert result.returncode == 2
    assert message in " ".join(result.stderr.split())
    assert "Traceback" not in result.stderr
    assert (out / MANIFEST).read_text() == content


def test_a_profile_with_the_same_name_and_other_models_is_refused(made, models_dir):
    tmp, env, photo = made
    profile = yaml.safe_load((PROFILES_DIR / "tiny.yaml").read_text())
    profile["models"]["refiner"]["source"] = str(models_dir / "tiny" / "refiner")
    path = tmp / "tiny-lookalike.yaml"
    path.write_text(yaml.safe_dump(profile))
    before = (tmp / "out" / MANIFEST).read_text()
    result = produce(env, tmp, photo, "--profile", str(path))
    assert result.returncode == 2
    assert "made with different profile" in " ".join(result.stderr.split())
    assert (tmp / "out" / MANIFEST).read_text() == before


def test_out_inside_the_data_folder_is_refused(made):
    tmp, env, photo = made
    result = produce(env, tmp, photo, "--out", str(tmp / "likeness-data" / "mine"))
    assert result.returncode == 2
    assert "is inside the data folder" in " ".join(result.stderr.split())


def test_a_write_error_during_a_stage_is_one_line_naming_the_path(made):
    tmp, env, photo = made
    # A new variation: its edit (64 px, 12 KB) is stored, its upscale (128 px, 40 KB) is not; the log fits.
    result = produce(
        env,
        tmp,
        photo,
        "--out",
        str(tmp / "efbig"),
        "--set",
        "dataset.variations=[back]",
        preexec_fn=limit_file_size(24 * 1024),
    )
    assert result.returncode == 2, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    text = " ".join(result.stderr.split())
    assert "File too large (EFBIG)" in text and str(tmp / "likeness-data" / "store" / "objects") in text
    assert "during dataset" in text
    assert "details in" in text and ".log" in text
    assert "Traceback" not in result.stderr
    log = Path(text.split("details in ")[1].split()[0])
    assert "Traceback" in log.read_text()


def test_progress_shows_as_plain_lines_when_stderr_is_not_a_terminal(first_run):
    # The module's first run computed every stage with its stderr captured: it needs no run of its own.
    *_, result = first_run
    # Four shots (front and three smiles), each edited, upscaled, masked and captioned: counted as shots.
    for stage in ("dataset 0/4 shots", "dataset caption 4/4 shots", "train 0/6 steps", "train 6/6 steps"):
        assert stage in result.stderr
    assert "render 2/2 renders" in result.stderr and "/16" not in result.stderr


@pytest.fixture
def small_filesystem(tmp_path):
    """Mount a tmpfs of a given size (read-only if asked) at a fresh folder; unmounted afterwards."""
    mounts: list[Path] = []

    def mount(size: str, read_only: bool = False) -> Path:
        point = tmp_path / f"fs{len(mounts)}"
        point.mkdir()
        options = f"size={size}" + (",ro" if read_only else "")
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)], capture_output=True)
        if done.returncode:
            pytest.skip(f"mounting a tmpfs needs root: {done.stderr.decode().strip()}")
        mounts.append(point)
        return point

    yield mount
    for point in mounts:
        subprocess.run(["umount", "-l", str(point)], check=False)


def test_a_full_or_read_only_disk_is_refused_before_any_model_loads(tmp_path, models_dir, face_photo, small_filesystem):
    env = cli_env(tmp_path, tmp_path / "fresh-models", api=None)
    read_only = small_filesystem("1m", read_only=True)
    refused = produce(env, tmp_path, face_photo, "--out", str(read_only / "ada"))
    assert refused.returncode == 2
    assert f"cannot write to {read_only / 'ada'}" in refused.stderr and "Read-only file system" in refused.stderr

    tiny_disk = small_filesystem("64k")
    full = produce(env, tmp_path, face_photo, "--out", str(tiny_disk / "ada"))
    assert full.returncode == 2
    assert "not enough free space on the filesystem of" in " ".join(full.stderr.split())

    env["LIKENESS_DATA_DIR"] = str(read_only / "data")
    no_store = produce(env, tmp_path, face_photo, "--out", str(tmp_path / "ada"))
    assert no_store.returncode == 2
    assert "Read-only file system" in no_store.stderr and "Traceback" not in no_store.stderr
    assert not (tmp_path / "fresh-models").exists()
    assert not (tmp_path / "ada").exists()


def stored_object(tmp: Path, sha256: str) -> Path:
    (path,) = (tmp / "likeness-data" / "store" / "objects" / "sha256" / sha256).iterdir()
    return path


@pytest.mark.parametrize("keep_stat", [False, True], ids=["rewritten", "bit-rot-behind-the-stores-back"])
def test_a_corrupt_artifact_is_moved_aside_and_remade(made, keep_stat):
    tmp, env, photo = made
    record = json.loads((tmp / "out" / MANIFEST).read_text())
    lora = record["lora"][-1]
    path = stored_object(tmp, lora["sha256"][0])
    good = path.read_bytes()
    before = path.stat()
    path.write_bytes(bytes(b ^ 0xFF for b in good[:64]) + good[64:])
    if keep_stat:
        # The store's sidecar still vouches for the object: only reading its bytes shows the damage.
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    out = tmp / f"healed-{keep_stat}"
    healed = produce(env, tmp, photo, "--out", str(out))
    assert healed.returncode == 0, healed.stderr[-3000:]
    text = " ".join(healed.stderr.split())
    assert f"sha256/{lora['sha256'][0]}/" in text and "moved it aside to 'corrupt/" in text
    assert "Traceback" not in healed.stderr
    assert path.read_bytes() == good
    assert (out / lora["files"][0]).read_bytes() == good
    aside = list((tmp / "likeness-data" / "store" / "objects" / "corrupt").rglob(path.name))
    assert aside and any(p.read_bytes()[:64] != good[:64] for p in aside)


def test_a_16_bit_photo_is_read_as_people_see_it(made):
    import numpy as np
    from PIL import Image

    tmp, env, _ = made
    gradient = np.tile(np.linspace(0, 65535, 512, dtype=np.uint16), (512, 1))
    photo = tmp / "scan16.png"
    Image.fromarray(gradient).save(photo)
    # A gradient shows no face: refused as a reference unless identity is left out of curation.
    args = ["--out", str(tmp / "scan16"), "--set", "dataset.variations=[front]"]
    # `likeness dataset`: the photo is read, refused and curated as `produce` does, and what is checked here is all
    # in the dataset's outputs, so no LoRA is trained and nothing rendered.
    refused = produce(env, tmp, photo, *args, command="dataset")
    assert refused.returncode == 2 and "pass --no-identity" in " ".join(refused.stderr.split())
    result = produce(env, tmp, photo, *args, "--no-identity", command="dataset")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"note: {photo} is 16-bit: scaled to 8-bit" in result.stderr
    line = json.loads((tmp / "scan16" / "dataset_manifest.jsonl").read_text())
    assert line["identity_distance"] is None and line["final_identity_distance"] is None
    sheet = np.asarray(Image.open(tmp / "scan16" / DATASET_CONTACT_SHEET).convert("L"), dtype=float)
    reference_cell = sheet[:256, :256]
    # Saturated, the reference thumbnail would be all white; scaled, it keeps its dark-to-light ramp.
    assert reference_cell[:, :40].mean() < 60 and reference_cell[:, -40:].mean() > 190


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("render.size=384", "render.size=384 is above 256"),
        ("render.image_prompts=['{trigger.__class__} in a cafe']", "attribute or index access"),
    ],
)
def test_limits_and_templates_are_checked_before_any_work(tmp_path, face_photo, setting, message):
    env = cli_env(tmp_path, tmp_path / "fresh-models", api=None)
    result = produce(env, tmp_path, face_photo, "--set", setting)
    assert result.returncode == 2
    assert message in " ".join(result.stderr.split())
    assert not (tmp_path / "fresh-models").exists() and not (tmp_path / "likeness-data").exists()

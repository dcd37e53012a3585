"""End to end: `likeness produce` on the tiny profile with a real face photo, against a real Prefect server."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from likeness.media.imaging import decode_mp4
from tests.conftest import cli_env
from tests.prefect_server import api_post

# Each runs the real CLI end to end (tens of seconds): `bin/test -m 'not slow'` skips them.
pytestmark = pytest.mark.slow

LIKENESS = str(Path(sys.executable).parent / "likeness")
STAGES = (
    "measure-reference",
    "edit-variation",
    "measure-image",
    "uso-subject",
    "upscale-image",
    "face-mask",
    "caption-image",
    "assemble-dataset",
    "fit-lora",
    "pick-checkpoint",
    "probe-strengths",
    "render-media",
    "score-render",
    "render-sheet",
)
# The tiny profile's default entries (front, back, smile, face, golden-hour) and the size of each shot: a 64 px
# long side edited, 128 px upscaled; portrait 3:4 unless the entry asks for a square.
SHOTS = {
    "front": (96, 128),
    "back": (96, 128),
    "smile-30": (128, 128),
    "smile-60": (128, 128),
    "smile-100": (128, 128),
    "face": (128, 128),
    "golden-hour": (96, 128),
}


def likeness(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([LIKENESS, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=600)


def task_states(api: str, parent_flow_run_id: str) -> dict[str, list[str]]:
    """Stage name -> the state names of its task runs, across the subflows of one produce run."""
    subflows = api_post(api, "/flow_runs/filter", {"flow_runs": {"parent_flow_run_id": {"any_": [parent_flow_run_id]}}})
    assert {run["name"] for run in subflows} and len(subflows) == 3
    runs = api_post(api, "/task_runs/filter", {"task_runs": {"flow_run_id": {"any_": [run["id"] for run in subflows]}}})
    states: dict[str, list[str]] = {}
    for run in runs:
        states.setdefault(run["name"].rsplit("-", 1)[0], []).append(run["state"]["name"])
    return states


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, models_dir, prefect_api, face_photo):
    """A working folder with the first run of `likeness produce` done in it."""
    tmp = tmp_path_factory.mktemp("e2e")
    env = cli_env(tmp, models_dir, prefect_api)
    photo = face_photo
    first = likeness(env, tmp, "produce", "Grace Hopper", "--image", str(photo), "--profile", "tiny", "--out", "out")
    assert first.returncode == 0, first.stderr[-4000:]
    return tmp, env, photo


def manifest(out: Path) -> dict:
    return json.loads((out / "likeness.json").read_text())


def test_first_run_writes_the_documented_layout(workdir):
    tmp, _, _ = workdir
    out = tmp / "out"
    # dataset/ holds only what a trainer reads: images and same-stem captions.
    assert sorted(p.name for p in (out / "dataset").iterdir()) == sorted(
        f"Grace_Hopper_{shot}{suffix}" for shot in SHOTS for suffix in (".png", ".txt")
    )
    for shot, size in SHOTS.items():
        assert Image.open(out / "dataset" / f"Grace_Hopper_{shot}.png").size == size
        mask = Image.open(out / "masks" / f"Grace_Hopper_{shot}.png")
        assert mask.mode == "L" and mask.size == size
        caption = (out / "dataset" / f"Grace_Hopper_{shot}.txt").read_text().strip()
        assert caption.startswith("Grace_Hopper, ")
    assert "back view" in (out / "dataset" / "Grace_Hopper_back.txt").read_text()
    assert "slight smile" in (out / "dataset" / "Grace_Hopper_smile-30.txt").read_text()
    assert "broad smile" in (out / "dataset" / "Grace_Hopper_smile-100.txt").read_text()
    assert "close-up of the face" in (out / "dataset" / "Grace_Hopper_face.txt").read_text()

    lines = [json.loads(line) for line in (out / "dataset_manifest.jsonl").read_text().splitlines()]
    assert [line["shot"] for line in lines] == list(SHOTS)
    for line in lines:
        assert (out / line["file"].replace(".png", ".txt")).read_text() == line["caption"] + "\n"
        assert (out / line["file"]).is_file() and (out / line["mask"]).is_file()
        # Every figure is measured on the tiny profile's noise too: no face is found, so no identity distance.
        assert line["kept"] and line["faces"] == 0 and line["identity_distance"] is None
        assert line["sharpness"] >= 0 and 0 <= line["exposure"] <= 1 and len(line["phash"]) == 16
        assert line["models"]["editor"]["source"] == "tiny:editor"
        assert line["refine_start_step"] == 2  # no face to guard: the configured start step
    assert [line["intensity"] for line in lines if line["entry"] == "smile"] == [0.3, 0.6, 1.0]
    assert Image.open(out / "dataset_contact_sheet.png").size[0] >= 4 * 128

    # The chosen checkpoint under the character's name; the steps and their samples in folders of their own; the
    # strength probe's grid, named by its content.
    (grid,) = [p.name for p in (out / "lora").glob("Grace_Hopper_strengths_*.png")]
    assert sorted(p.name for p in (out / "lora").iterdir()) == [
        "Grace_Hopper.safetensors",
        grid,
        "checkpoints",
        "identity_by_step.png",
        "samples",
    ]
    assert sorted(p.name for p in (out / "lora" / "checkpoints").iterdir()) == [
        "Grace_Hopper_000000003.safetensors",
        "Grace_Hopper_000000006.safetensors",
    ]
    assert len(list((out / "lora" / "samples").iterdir())) == 2 * 2
    lora = manifest(out)["lora"]
    assert [entry["step"] for entry in lora] == [3, 6]
    # Random weights draw no face: no checkpoint scores, so the last is chosen (and says so).
    (best,) = [entry for entry in lora if entry.get("best")]
    assert best["step"] == 6 and best["published_as"] == ["lora/Grace_Hopper.safetensors"]
    assert all(entry["faces_found"] == 0 and entry["identity_distance"] is None for entry in lora)
    # Nor do the probe's stills (tiny's two strengths, one seed): no strengths are chosen, and the renders keep 1.0.
    probe = best["strengths"]
    assert probe["grid"] == f"lora/{grid}" and probe["lora_scale"] is None and len(probe["stills"]) == 2
    chosen = (out / "lora" / "Grace_Hopper.safetensors").read_bytes()
    assert chosen == (out / "lora" / "checkpoints" / "Grace_Hopper_000000006.safetensors").read_bytes()

    renders = manifest(out)["renders"]
    assert sorted(entry["kind"] for entry in renders) == ["image", "video"]
    assert all(entry["lora_scale"] == 1.0 for entry in renders)
    image = next(entry for entry in renders if entry["kind"] == "image")
    assert Image.open(out / image["file"]).size == (64, 64)
    video = next(entry for entry in renders if entry["kind"] == "video")
    assert decode_mp4(out / video["file"]).shape == (5, 64, 64, 3)
    assert video["prompt"].startswith("Grace_Hopper ")


def test_first_run_loads_each_model_once_and_reports_progress(workdir, prefect_api):
    tmp, _, _ = workdir
    last_run = manifest(tmp / "out")["last_run"]
    assert last_run["model_loads"] == {"editor": 1, "upscaler": 1, "refiner": 1, "captioner": 1, "video": 1}
    stages = last_run["stage_seconds"]
    assert set(stages) == {"dataset", "training", "renders"} and sum(stages.values()) <= last_run["seconds"]
    states = task_states(prefect_api, last_run["flow_run_id"])
    assert set(states) == set(STAGES)
    assert len(states["edit-variation"]) == len(SHOTS)
    assert len(states["measure-reference"]) == 1
    assert all(state == "Completed" for names in states.values() for state in names), states
    artifacts = api_post(prefect_api, "/artifacts/filter", {"artifacts": {"type": {"any_": ["progress"]}}})
    assert {"grace-hopper-dataset", "grace-hopper-train", "grace-hopper-render"} <= {a["key"] for a in artifacts}
    assert all(a["data"] == 100.0 for a in artifacts if a["key"].startswith("grace-hopper"))
    summaries = api_post(prefect_api, "/artifacts/filter", {"artifacts": {"key": {"any_": ["grace-hopper-summary"]}}})
    assert summaries and "| LoRA step | loss | identity distance | weights |" in summaries[0]["data"]
    plots = api_post(
        prefect_api, "/artifacts/filter", {"artifacts": {"key": {"any_": ["grace-hopper-checkpoint-plot"]}}}
    )
    assert plots and "data:image/jpeg;base64," in plots[0]["data"]
    probes = api_post(prefect_api, "/artifacts/filter", {"artifacts": {"key": {"any_": ["grace-hopper-strengths"]}}})
    assert probes and "data:image/jpeg;base64," in probes[0]["data"] and "| LoRA | speed LoRAs |" in probes[0]["data"]


def test_the_lora_loads_into_wan_and_changes_its_output(workdir, models_dir):
    import torch
    from diffusers import WanPipeline

    tmp, _, _ = workdir
    pipe = WanPipeline.from_pretrained(models_dir / "tiny" / "video", dtype=torch.float32)

    def frame():
        return pipe(
            "Grace_Hopper smiling",
            height=64,
            width=64,
            num_frames=1,
            num_inference_steps=2,
            guidance_scale=1.0,
            generator=torch.Generator().manual_seed(0),
            output_type="np",
        ).frames[0]

    base = frame()
    # The original Wan key layout (what ComfyUI reads), converted by diffusers on load.
    pipe.load_lora_weights(tmp / "out" / "lora", weight_name="Grace_Hopper.safetensors")
    assert not np.allclose(base, frame())


def test_train_from_an_output_folder_writes_a_lora_folder_of_its_own(workdir, prefect_api):
    tmp, env, _ = workdir
    out = tmp / "out"
    assert (out / "reference.png").is_file()
    before = (out / "likeness.json").read_bytes()
    args = ("train", "Grace Hopper", "--from", "out", "--out", "trained", "--set", "train.steps=2")
    result = likeness(env, tmp, *args, "--set", "train.checkpoint_every=1")
    assert result.returncode == 0, result.stderr[-4000:]
    trained = tmp / "trained"
    assert sorted(p.name for p in (trained / "lora" / "checkpoints").iterdir()) == [
        "Grace_Hopper_000000001.safetensors",
        "Grace_Hopper_000000002.safetensors",
    ]
    record = manifest(trained)
    identity = record["identity"]
    assert identity["command"] == "train" and identity["backend"] == "local" and identity["train"]["steps"] == 2
    # Scored against the reference the dataset run exported.
    assert identity["reference_sha256"] == hashlib.sha256((out / "reference.png").read_bytes()).hexdigest()
    assert [entry["step"] for entry in record["lora"]] == [1, 2]
    (best,) = [entry for entry in record["lora"] if entry.get("best")]
    chosen = (trained / "lora" / "Grace_Hopper.safetensors").read_bytes()
    assert chosen == (trained / best["files"][0]).read_bytes()
    assert (trained / "lora" / "identity_by_step.png").is_file()
    assert (trained / "reference.png").read_bytes() == (out / "reference.png").read_bytes()
    # The --from folder is only read.
    assert (out / "likeness.json").read_bytes() == before
    runs = api_post(
        prefect_api, "/task_runs/filter", {"task_runs": {"flow_run_id": {"any_": [record["last_run"]["flow_run_id"]]}}}
    )
    assert sorted(run["name"].rsplit("-", 1)[0] for run in runs) == ["fit-lora", "pick-checkpoint", "probe-strengths"]

    again = likeness(env, tmp, *args, "--set", "train.checkpoint_every=1")
    assert again.returncode == 0 and "trained is up to date" in again.stderr


def test_rerun_is_cached_and_a_render_change_reruns_only_rendering(workdir, prefect_api):
    tmp, env, photo = workdir
    out = tmp / "out"
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != "likeness.json"}

    unchanged = likeness(env, tmp, "produce", "Grace Hopper", "--image", str(photo), "--out", "out")
    assert unchanged.returncode == 0 and "is up to date" in unchanged.stderr, unchanged.stderr[-4000:]

    # With one output gone the run takes the cached path: Prefect runs, every stage is a cache hit.
    (out / "dataset_contact_sheet.png").unlink()
    again = likeness(env, tmp, "produce", "Grace Hopper", "--image", str(photo), "--out", "out")
    assert again.returncode == 0, again.stderr[-4000:]
    last_run = manifest(out)["last_run"]
    assert last_run["model_loads"] == {}
    states = task_states(prefect_api, last_run["flow_run_id"])
    assert all(state == "Cached" for names in states.values() for state in names), states
    assert {p: p.read_bytes() for p in before} == before

    reseeded = likeness(
        env, tmp, "produce", "Grace Hopper", "--image", str(photo), "--out", "out", "--set", "render.seed=7"
    )
    assert reseeded.returncode == 0, reseeded.stderr[-4000:]
    last_run = manifest(out)["last_run"]
    assert last_run["model_loads"] == {"video": 1}
    states = task_states(prefect_api, last_run["flow_run_id"])
    assert states.pop("render-media") == ["Completed", "Completed"]
    # New renders are scored and make a new contact sheet.
    assert states.pop("score-render") == ["Completed", "Completed"] and states.pop("render-sheet") == ["Completed"]
    assert all(state == "Cached" for names in states.values() for state in names), states
    renders = manifest(out)["renders"]
    assert sorted(entry["seed"] for entry in renders) == [0, 0, 7, 7]
    assert all((out / entry["file"]).exists() for entry in renders)
    assert {p: p.read_bytes() for p in before} == before


def test_refresh_recomputes_every_stage_to_the_same_bytes(workdir, prefect_api):
    tmp, env, photo = workdir
    out = tmp / "out"
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != "likeness.json"}
    refreshed = likeness(env, tmp, "produce", "Grace Hopper", "--image", str(photo), "--out", "out", "--refresh")
    assert refreshed.returncode == 0, refreshed.stderr[-4000:]
    last_run = manifest(out)["last_run"]
    assert last_run["model_loads"] == {"editor": 1, "upscaler": 1, "refiner": 1, "captioner": 1, "video": 1}
    states = task_states(prefect_api, last_run["flow_run_id"])
    assert all(state == "Completed" for names in states.values() for state in names), states
    assert {p: p.read_bytes() for p in before} == before


def test_another_character_is_refused_in_the_same_folder(workdir):
    tmp, env, photo = workdir
    out = tmp / "out"
    before = (out / "likeness.json").read_text()
    other = likeness(env, tmp, "produce", "Ada", "--image", str(photo), "--out", "out")
    assert other.returncode == 2
    assert "holds the outputs of 'Grace_Hopper'" in other.stderr and "trigger" in other.stderr
    retrained = likeness(
        env, tmp, "produce", "Grace Hopper", "--image", str(photo), "--out", "out", "--set", "train.steps=9"
    )
    assert retrained.returncode == 2
    assert "different train" in retrained.stderr
    assert (out / "likeness.json").read_text() == before


def test_the_dataset_command_makes_the_whole_default_catalogue_readable_by_others(
    tmp_path, models_dir, prefect_api, face_photo
):
    from tests.photos import astronaut, no_face_photo

    env = cli_env(tmp_path, models_dir, prefect_api)
    garment, pose = tmp_path / "coat.png", tmp_path / "pose.png"
    no_face_photo().save(garment)
    astronaut().save(pose)
    args = ["dataset", "Grace Hopper", "--image", str(face_photo), "--garment", str(garment), "--pose", str(pose)]
    result = subprocess.run(
        [LIKENESS, *args, "--set", "dataset.variations=null", "--out", "out"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=900,
        preexec_fn=lambda: os.umask(0o022),
    )
    assert result.returncode == 0, result.stderr[-4000:]
    out = tmp_path / "out"
    lines = [json.loads(line) for line in (out / "dataset_manifest.jsonl").read_text().splitlines()]
    # The default catalogue: 32 shots, and one try-on and one pose transfer for the garment and the pose given.
    assert len(lines) == 34 and all(line["kept"] for line in lines)
    assert {line["group"] for line in lines} == {
        "turnaround", "pose", "emotion", "closeup", "try-on", "pose-transfer", "background", "lighting",
    }  # fmt: skip
    assert {"try-on-1", "pose-transfer-1", "lying-down", "scared-100"} <= {line["shot"] for line in lines}
    assert len(list((out / "dataset").glob("*.png"))) == len(list((out / "masks").glob("*.png"))) == 34
    assert Image.open(out / "dataset" / "Grace_Hopper_turnaround.png").size == (128, 96)  # landscape
    assert Image.open(out / "dataset" / "Grace_Hopper_try-on-1.png").size == (96, 128)  # portrait
    record = manifest(out)
    assert record["lora"] == [] and record["renders"] == []
    assert record["last_run"]["model_loads"] == {"editor": 1, "upscaler": 1, "refiner": 1, "captioner": 1}
    # Written with the user's umask, so a trainer or ComfyUI container running as another user can read them.
    files = [p for p in out.rglob("*") if p.is_file()]
    assert files and {oct(p.stat().st_mode & 0o777) for p in files} == {oct(0o644)}
    store = tmp_path / "likeness-data" / "store" / "objects"
    assert {oct(p.stat().st_mode & 0o777) for p in store.rglob("*") if p.is_file()} == {oct(0o644)}


def test_refused_tries_are_edited_again_and_a_dataset_with_nothing_kept_says_why(
    tmp_path, models_dir, prefect_api, face_photo
):
    env = cli_env(tmp_path, models_dir, prefect_api)
    # The tiny editor's noise shows no face: with a face required, every try of the front view is refused.
    strict = ["dataset.variations=[front]", "dataset.curation.require_face=true", "dataset.curation.max_tries=3"]
    args = ["produce", "Grace Hopper", "--image", str(face_photo), "--out", "out"]
    result = likeness(env, tmp_path, *args, *(part for setting in strict for part in ("--set", setting)))
    assert result.returncode == 2
    message = " ".join(result.stderr.split())
    assert "error: curation kept no image, so there is nothing to train on" in message
    assert "dataset_manifest.jsonl" in message and "--no-identity" in message
    out = tmp_path / "out"
    (line,) = [json.loads(text) for text in (out / "dataset_manifest.jsonl").read_text().splitlines()]
    assert line["shot"] == "front" and line["kept"] is False
    tries = line["rejected"]
    assert [t["attempt"] for t in tries] == [0, 1, 2] and len({t["seed"] for t in tries}) == 3
    assert all(t["reasons"] == ["no face found"] and t["faces"] == 0 for t in tries)
    # The contact sheet shows the reference and the three refused tries.
    assert Image.open(out / "dataset_contact_sheet.png").size == (4 * 256, 256 + 18)
    assert not (out / "lora").exists() and not (out / "dataset").exists()


def test_render_adds_scored_renders_with_their_lineage_beside_the_earlier_ones(workdir):
    tmp, env, photo = workdir
    out = tmp / "out"
    before = {entry["file"] for entry in manifest(out)["renders"]}
    (tmp / "prompts.yaml").write_text(
        '- {prompt: "{trigger} on a beach", seed: 4}\n- {prompt: "{trigger} walks", frames: 9}\n'
    )
    args = ("render", "Grace Hopper", "--from", "out", "--prompts", "prompts.yaml", "--fx", "seed-look")
    result = likeness(env, tmp, *args, "--set", "render.upscale_long_side=128")
    assert result.returncode == 0, result.stderr[-4000:]
    record = manifest(out)
    new = [entry for entry in record["renders"] if entry["file"] not in before]
    assert sorted((entry["kind"], entry["seed"], entry["frames"]) for entry in new) == [
        ("image", 4, 1),
        ("video", 0, 9),
    ]
    assert all(entry["fx"] == "seed-look" and entry["frames_scored"] >= 1 for entry in new)
    video = next(entry for entry in new if entry["kind"] == "video")
    assert decode_mp4(out / video["upscaled"]).shape == (9, 128, 128, 3)
    image = next(entry for entry in new if entry["kind"] == "image")
    assert json.loads(Image.open(out / image["file"]).text["likeness"])["prompt"] == "Grace_Hopper on a beach"
    assert list((out / "renders").glob("Grace_Hopper_renders_*.png"))
    # The earlier renders are still there, and the produce run is still up to date.
    assert before <= {entry["file"] for entry in record["renders"]}
    again = likeness(env, tmp, "produce", "Grace Hopper", "--image", str(photo), "--profile", "tiny", "--out", "out")
    assert again.returncode == 0 and "is up to date" in again.stderr

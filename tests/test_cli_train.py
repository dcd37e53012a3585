"""`likeness train`: a training folder's problems, and what `--print-config` shows, before anything starts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from likeness.cli.app import app
from tests.test_cli_inputs import photo


@pytest.fixture
def run(likeness_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Invoke the CLI in-process from tmp_path; afterwards check no model was built and no Prefect run started."""
    models = tmp_path / "fresh-models"
    monkeypatch.setenv("LIKENESS_MODELS_DIR", str(models))
    monkeypatch.delenv("LIKENESS_RUNPOD_API_KEY", raising=False)
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")  # nothing listens: a flow run would fail
    from likeness import settings

    settings.get_settings.cache_clear()
    monkeypatch.chdir(tmp_path)

    def invoke(*args: str):
        result = CliRunner().invoke(app, ["train", *args])
        assert not models.exists(), "a model was built or loaded"
        assert not (tmp_path / "likeness-out").exists(), "an output folder was written"
        return result

    return invoke


def training_folder(tmp_path: Path, count: int = 2, captions: bool = True) -> Path:
    folder = tmp_path / "ds"
    folder.mkdir()
    for index in range(count):
        pixels = np.random.default_rng(index).integers(0, 255, (64, 64, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"Ada_{index}.png")
        if captions:
            (folder / f"Ada_{index}.txt").write_text(f"Ada, photo {index}\n")
    return folder


def test_it_needs_exactly_one_source_of_images(run, tmp_path):
    folder = training_folder(tmp_path)
    for args in (["Ada"], ["Ada", "--dataset", str(folder), "--from", str(tmp_path)]):
        result = run(*args)
        assert result.exit_code == 2 and "--dataset DIR or --from OUT" in result.output


@pytest.mark.parametrize(
    ("problem", "message"),
    [
        ("no-captions", "2 of 2 images have no caption (a .txt file of the same name): Ada_0.png, Ada_1.png"),
        ("no-images", "holds no image"),
        ("missing", "does not exist"),
        ("orphan-caption", "captions without an image: Ada_9.txt"),
        ("no-mask", "no mask for 1 images: Ada_1.png"),
    ],
)
def test_a_training_folder_a_trainer_would_misread_is_refused(run, tmp_path, problem, message):
    args = []
    if problem == "no-captions":
        folder = training_folder(tmp_path, captions=False)
    elif problem == "no-images":
        folder = tmp_path / "ds"
        folder.mkdir()
    elif problem == "missing":
        folder = tmp_path / "absent"
    elif problem == "orphan-caption":
        folder = training_folder(tmp_path)
        (folder / "Ada_9.txt").write_text("Ada, lost\n")
    else:
        folder = training_folder(tmp_path)
        masks = tmp_path / "masks"
        masks.mkdir()
        Image.new("L", (64, 64), 255).save(masks / "Ada_0.png")
        args = ["--masks", str(masks)]
    result = run("Ada", "--dataset", str(folder), *args)
    assert result.exit_code == 2, result.output
    assert message in result.output.replace("\n", " ")


def test_a_folder_that_is_not_a_likeness_output_or_another_characters_is_refused(run, tmp_path):
    result = run("Ada", "--from", str(tmp_path))
    assert result.exit_code == 2 and "it is not a Likeness output folder" in result.output
    out = tmp_path / "grace"
    out.mkdir()
    (out / "likeness.json").write_text(json.dumps({"identity": {"format": 4, "trigger": "Grace_Hopper"}}))
    result = run("Ada", "--from", str(out))
    assert result.exit_code == 2 and "holds the dataset of 'Grace_Hopper'" in result.output


def test_a_spec_the_backend_cannot_train_is_refused(run, tmp_path):
    folder = training_folder(tmp_path)
    result = run("Ada", "--dataset", str(folder), "--backend", "runpod-aitoolkit", "--print-config")
    assert result.exit_code == 2 and "AI Toolkit cannot train 'tiny:video'" in result.output
    result = run("Ada", "--dataset", str(folder), "--backend", "kubernetes")
    assert result.exit_code == 2 and "--backend 'kubernetes' is not one of local" in result.output


def test_a_runpod_backend_on_a_local_store_is_refused_before_anything_starts(run, tmp_path):
    result = run("Ada", "--dataset", str(training_folder(tmp_path)), "--backend", "runpod-native")
    # A pod can only reach the job's files through presigned URLs of an S3 store.
    assert result.exit_code == 2 and "LIKENESS_S3_ENDPOINT" in result.output


def test_print_config_shows_our_trainers_job_and_the_pod_and_starts_nothing(run, tmp_path):
    folder = training_folder(tmp_path)
    result = run(
        "Ada", "--dataset", str(folder), "--backend", "runpod-native", "--print-config",
        "--gpu", "NVIDIA H100 80GB HBM3", "--gpu", "NVIDIA A100 80GB PCIe", "--set", "train.steps=7",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    job = json.loads(result.stdout)
    assert job["trigger"] == "Ada" and job["config"]["steps"] == 7 and job["model"]["source"] == "tiny:video"
    # No mask folder: trained unmasked, and said so.
    assert job["config"]["masks"] is False and "no mask folder" in result.stderr
    assert "image likeness/worker:" in result.stderr
    assert result.stderr.index("NVIDIA H100 80GB HBM3") < result.stderr.index("NVIDIA A100 80GB PCIe")
    assert "set LIKENESS_RUNPOD_API_KEY to see their prices" in result.stderr


def test_print_config_writes_the_ai_toolkit_yaml_for_a_real_base(run, tmp_path):
    folder = training_folder(tmp_path)
    masks = tmp_path / "masks"
    masks.mkdir()
    for index in range(2):
        Image.new("L", (64, 64), 255).save(masks / f"Ada_{index}.png")
    result = run(
        "Ada", "--dataset", str(folder), "--masks", str(masks), "--image", str(photo(tmp_path)),
        "--profile", "production", "--backend", "runpod-aitoolkit", "--print-config",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    config = yaml.safe_load(result.stdout)
    process = config["config"]["process"][0]
    assert process["datasets"][0]["folder_path"] == "dataset" and process["datasets"][0]["mask_path"] == "masks"
    assert process["model"]["arch"] in {"wan21", "wan22_14b", "wan22_5b"}
    assert "image ostris/aitoolkit:latest" in result.stderr


def test_a_two_expert_job_names_its_own_base_and_another_base_is_refused(run, tmp_path):
    folder = training_folder(tmp_path)
    args = ["Ada", "--dataset", str(folder), "--profile", "production", "--backend", "runpod-native", "--print-config"]
    result = run(*args)
    assert result.exit_code == 0, result.output
    job = json.loads(result.stdout)
    assert job["config"]["base"] == "wan22_14b" and job["config"]["experts"] == ["high_noise", "low_noise"]
    refused = run(*args, "--set", "train.base=wan21_14b")
    assert refused.exit_code == 2
    assert (
        "train.base=wan21_14b: profile 'production' trains and renders Wan-AI/Wan2.2-T2V-A14B-Diffusers, which is "
        "wan22_14b (Wan 2.2 T2V-A14B)" in " ".join(refused.stderr.split())
    )


def test_stop_when_flat_is_refused_without_identity_scores_or_on_ai_toolkit_and_sends_the_face_otherwise(run, tmp_path):
    folder = training_folder(tmp_path)
    stop = ["--set", "train.stop_when_flat.min_step=3", "--set", "train.stop_when_flat.patience=1"]
    image = ["--image", str(photo(tmp_path))]
    for args in ([], [*image, "--no-identity"]):
        result = run("Ada", "--dataset", str(folder), *stop, *args)
        assert result.exit_code == 2 and "train.stop_when_flat stops on the identity score" in result.output
    result = run("Ada", "--dataset", str(folder), *stop, *image, "--backend", "runpod-aitoolkit", "--print-config")
    assert result.exit_code == 2 and "train.stop_when_flat needs our trainer" in result.output
    # Our trainer on a pod gets the reference face in its job, to score its samples against.
    result = run("Ada", "--dataset", str(folder), *stop, *image, "--backend", "runpod-native", "--print-config")
    assert result.exit_code == 0, result.output
    job = json.loads(result.stdout)
    assert job["config"]["stop_when_flat"] == {"min_step": 3, "patience": 1}
    assert len(job["reference"]["embedding"]) == 128

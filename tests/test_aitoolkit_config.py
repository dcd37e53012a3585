"""AI Toolkit's job YAML from our training spec, checked against the keys AI Toolkit's config classes read."""

from __future__ import annotations

import itertools
import math
import textwrap

import pytest
import yaml

from likeness.config import ModelSpec, TrainConfig, render_template
from likeness.training import aitoolkit
from likeness.training.aitoolkit import (
    ARCH,
    SAMPLE_FILE,
    AiToolkitCannotTrain,
    aitoolkit_checkpoint_names,
    aitoolkit_config,
    aitoolkit_yaml,
)
from likeness.training.pod import parse_progress
from likeness.training.spec import TrainJob
from tests.aitoolkit_schema import ARCHES, check_aitoolkit_config

SOURCES = {
    "wan21_14b": "Wan-AI/Wan2.1-T2V-14B-Diffusers",
    "wan22_14b": "Wan-AI/Wan2.2-T2V-A14B-Diffusers",
    "wan22_5b": "Wan-AI/Wan2.2-TI2V-5B-Diffusers",
}
DATASET, MASKS, OUTPUT = "/workspace/job/dataset", "/workspace/job/masks", "/workspace/output"


def make_job(base: str = "wan22_5b", source: str | None = None, revision: str | None = None, **config) -> TrainJob:
    settings = {"base": base, "size": 512, "steps": 2000, "rank": 32, "learning_rate": 1e-4} | config
    model = ModelSpec(source=source or SOURCES[base], revision=revision, licence="apache-2.0")
    return TrainJob(
        name="Ada_Lovelace",
        trigger="Ada_Lovelace",
        config=TrainConfig(**settings),
        model=model,
        dtype="bfloat16",
        device="cuda",
    )


def process_of(config: dict) -> dict:
    return config["config"]["process"][0]


MATRIX = list(itertools.product(sorted(ARCH), (False, True), (False, True), (False, True), ((), (256, 384))))


@pytest.mark.parametrize(("base", "quantize", "low_vram", "masks", "buckets"), MATRIX)
def test_every_base_and_setting_gives_a_yaml_ai_toolkit_reads(base, quantize, low_vram, masks, buckets):
    job = make_job(base, quantize=quantize, low_vram=low_vram, masks=masks, buckets=buckets, checkpoint_every=250)
    text = aitoolkit_yaml(job, DATASET, MASKS, OUTPUT)
    config = yaml.safe_load(text)

    assert config == aitoolkit_config(job, DATASET, MASKS, OUTPUT)
    assert list(config) == ["job", "config", "meta"]
    assert check_aitoolkit_config(config) == []
    process = process_of(config)
    model, train, dataset, sample = process["model"], process["train"], process["datasets"][0], process["sample"]
    assert process["type"] == "sd_trainer"
    assert process["training_folder"] == OUTPUT
    assert config["config"]["name"] == "Ada_Lovelace"
    assert model["arch"] == ARCH[base]
    assert model["name_or_path"] == SOURCES[base]
    assert model["low_vram"] is low_vram
    assert model["quantize"] is quantize
    assert ("qtype" in model) is quantize
    assert dataset["folder_path"] == DATASET
    assert dataset["resolution"] == sorted({512, *buckets})
    assert ("mask_path" in dataset) is masks
    if masks:
        assert dataset["mask_path"] == MASKS
    assert train["steps"] == 2000
    assert train["lr"] == pytest.approx(1e-4)
    assert train["cache_text_embeddings"] is True
    assert process["save"]["save_every"] == 250
    assert sample["sample_every"] == 250
    assert process["network"] == {"type": "lora", "linear": 32, "linear_alpha": 32.0}
    assert "trigger_word" not in process
    assert ("switch_boundary_every" in train) is (base == "wan22_14b")
    assert ("model_kwargs" in model) is (base == "wan22_14b")


def test_every_base_names_an_arch_ai_toolkit_has():
    assert set(ARCH.values()) <= ARCHES
    assert ARCH == {"wan21_14b": "wan21", "wan22_14b": "wan22_14b", "wan22_5b": "wan22_5b"}


@pytest.mark.parametrize(
    ("experts", "high", "low"),
    [(("high_noise", "low_noise"), True, True), (("high_noise",), True, False), (("low_noise",), False, True)],
)
def test_a14b_trains_the_chosen_experts(experts, high, low):
    config = aitoolkit_config(make_job("wan22_14b", experts=experts, switch_boundary_every=5), DATASET, None, OUTPUT)

    process = process_of(config)
    assert process["model"]["model_kwargs"] == {"train_high_noise": high, "train_low_noise": low}
    assert process["train"]["switch_boundary_every"] == 5
    assert check_aitoolkit_config(config) == []


def test_quantisation_uses_the_examples_qtypes():
    a14b = process_of(aitoolkit_config(make_job("wan22_14b", quantize=True), DATASET, None, OUTPUT))["model"]
    assert a14b["qtype"] == "uint4|ostris/accuracy_recovery_adapters/wan22_14b_t2i_torchao_uint4.safetensors"
    assert (a14b["quantize_te"], a14b["qtype_te"]) == (True, "qfloat8")
    # The adapter was trained on the A14B's weights: the other bases quantise to AI Toolkit's default.
    for base in ("wan21_14b", "wan22_5b"):
        assert process_of(aitoolkit_config(make_job(base, quantize=True), DATASET, None, OUTPUT))["model"]["qtype"] == (
            "qfloat8"
        )


def test_samples_fill_the_trigger_in_and_follow_the_spec():
    templates = ("{trigger} in a red coat", "a photo of {trigger}, {{literal braces}}")
    job = make_job(
        sample_prompts=templates, checkpoint_every=250, sample_every=500, sample_steps=12, sample_guidance_scale=3.0
    )
    sample = process_of(aitoolkit_config(job, DATASET, MASKS, OUTPUT))["sample"]

    assert sample["prompts"] == [render_template(t, trigger="Ada_Lovelace") for t in templates]
    assert sample["prompts"] == ["Ada_Lovelace in a red coat", "a photo of Ada_Lovelace, {literal braces}"]
    assert (sample["sample_every"], sample["sample_steps"], sample["guidance_scale"]) == (500, 12, 3.0)
    assert (sample["num_frames"], sample["width"], sample["height"], sample["format"]) == (1, 512, 512, "png")


def test_every_checkpoint_is_kept():
    job = make_job(steps=1800, checkpoint_every=500)
    save = process_of(aitoolkit_config(job, DATASET, None, OUTPUT))["save"]
    assert save["max_step_saves_to_keep"] == math.ceil(1800 / 500) == len(aitoolkit_checkpoint_names(job))


def test_masks_on_without_a_masks_folder_trains_unmasked():
    dataset = process_of(aitoolkit_config(make_job(masks=True), DATASET, None, OUTPUT))["datasets"][0]
    assert "mask_path" not in dataset


@pytest.mark.parametrize(
    ("job", "folders", "message"),
    [
        (make_job(source="tiny:video"), (DATASET, MASKS, OUTPUT), "tiny"),
        (make_job(revision="abc123"), (DATASET, MASKS, OUTPUT), "revision"),
        (make_job("wan22_14b", boundary_ratio=0.9), (DATASET, MASKS, OUTPUT), "0.875"),
        (make_job(), (DATASET, f"{DATASET}/masks", OUTPUT), "masks folder"),
        (make_job(), (DATASET, MASKS, f"{DATASET}/out"), "training folder"),
        (make_job(sample_prompts=("{trigger} at ${{HOME}}",)), (DATASET, MASKS, OUTPUT), "environment variable"),
        (make_job(stop_when_flat={"min_step": 500, "patience": 2}), (DATASET, MASKS, OUTPUT), "stop_when_flat"),
    ],
    ids=["tiny", "revision", "boundary", "masks-inside", "output-inside", "env-placeholder", "stop-when-flat"],
)
def test_what_ai_toolkit_cannot_do_is_refused(job, folders, message):
    with pytest.raises(AiToolkitCannotTrain, match=message):
        aitoolkit_config(job, *folders)


def test_checkpoint_names_follow_ai_toolkit():
    assert aitoolkit_checkpoint_names(make_job(steps=1800, checkpoint_every=500)) == {
        500: ("Ada_Lovelace_000000500.safetensors",),
        1000: ("Ada_Lovelace_000001000.safetensors",),
        1500: ("Ada_Lovelace_000001500.safetensors",),
        1800: ("Ada_Lovelace.safetensors",),
    }
    both = aitoolkit_checkpoint_names(make_job("wan22_14b", steps=1000, checkpoint_every=500))
    assert both == {
        500: ("Ada_Lovelace_000000500_high_noise.safetensors", "Ada_Lovelace_000000500_low_noise.safetensors"),
        1000: ("Ada_Lovelace_high_noise.safetensors", "Ada_Lovelace_low_noise.safetensors"),
    }
    low = aitoolkit_checkpoint_names(make_job("wan22_14b", experts=("low_noise",), steps=1000, checkpoint_every=500))
    assert low == {
        500: ("Ada_Lovelace_000000500_low_noise.safetensors",),
        1000: ("Ada_Lovelace_low_noise.safetensors",),
    }


def test_sample_file_names():
    match = SAMPLE_FILE.match("1724253062123__000000500_1.png")
    assert match and (int(match["step"]), int(match["index"])) == (500, 1)
    assert SAMPLE_FILE.match("Ada_Lovelace__000000500_1.png") is None


def test_the_docstring_example_runs(capsys):
    lines = aitoolkit.__doc__.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("    from "))
    end = next(i for i, line in enumerate(lines) if line.startswith("What AI Toolkit writes"))
    exec(textwrap.dedent("\n".join(lines[start:end])), {})
    assert check_aitoolkit_config(yaml.safe_load(capsys.readouterr().out)) == []


# The checker can fail ---------------------------------------------------------------------------------------------


def good_config() -> dict:
    return aitoolkit_config(make_job("wan22_14b", quantize=True), DATASET, MASKS, OUTPUT)


@pytest.mark.parametrize(
    "where",
    [(), ("config",), ("process",), ("network",), ("save",), ("train",), ("model",), ("sample",), ("dataset",)],
    ids=lambda where: "/".join(where) or "top",
)
def test_an_unknown_key_in_any_section_is_reported(where):
    config = good_config()
    process = process_of(config)
    sections = {
        (): config,
        ("config",): config["config"],
        ("process",): process,
        ("dataset",): process["datasets"][0],
        **{(key,): process[key] for key in ("network", "save", "train", "model", "sample")},
    }
    sections[where]["learning_rate"] = 1e-4

    problems = check_aitoolkit_config(config)
    assert len(problems) == 1
    assert "learning_rate: unknown key" in problems[0]


def mutated(change) -> list[str]:
    config = good_config()
    change(process_of(config))
    return check_aitoolkit_config(config)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda p: p["model"].update(arch="wan22"), "model.arch: 'wan22' is no model class's arch"),
        (lambda p: p["model"].pop("arch"), "model.arch: missing"),
        (lambda p: p["model"].pop("name_or_path"), "model.name_or_path: missing"),
        (lambda p: p["model"].update(qtype="uint4x|adapter.safetensors"), "model.qtype: 'uint4x|adapter"),
        (lambda p: p["model"]["model_kwargs"].update(train_middle_noise=True), "model_kwargs.train_middle_noise"),
        (
            lambda p: p["model"]["model_kwargs"].update(train_high_noise=False, train_low_noise=False),
            "trains neither expert",
        ),
        (lambda p: p.update(type="lora_trainer"), "type: 'lora_trainer' is not one of"),
        (lambda p: p.pop("training_folder"), "training_folder: missing"),
        (lambda p: p.update(train="fast"), "train: not a mapping"),
        (lambda p: p["datasets"][0].update(resolution=[512, "big"]), "resolution: 'big' is not a positive integer"),
        (lambda p: p["datasets"][0].pop("folder_path"), "folder_path: missing"),
        (lambda p: p["network"].update(type="dora"), "network.type: 'dora'"),
        (lambda p: p["train"].update(unload_text_encoder=True), "cache_text_embeddings with unload_text_encoder"),
        (lambda p: p["sample"]["prompts"].append("[trigger] smiling"), "[trigger] stays literal"),
        (lambda p: p["sample"]["prompts"].append("${HF_TOKEN}"), "replaced from the environment"),
        (lambda p: p["save"].update(save_format="ckpt"), "save_format: 'ckpt'"),
    ],
    ids=[
        "bad-arch",
        "no-arch",
        "no-model-path",
        "bad-qtype",
        "bad-model-kwarg",
        "no-expert",
        "bad-process-type",
        "no-training-folder",
        "section-not-mapping",
        "bad-resolution",
        "no-dataset-folder",
        "bad-network-type",
        "two-text-encoder-modes",
        "literal-trigger",
        "env-placeholder",
        "bad-save-format",
    ],
)
def test_a_planted_mistake_is_reported(change, expected):
    problems = mutated(change)
    assert any(expected in problem for problem in problems), problems


def test_the_top_level_must_be_an_extension_job_with_a_name():
    config = good_config()
    config["job"] = "train"
    del config["config"]["name"]
    assert check_aitoolkit_config(config) == [
        "job: 'train' is not 'extension', the job AI Toolkit's trainers run in",
        "config.name: missing; it names the output folder and every checkpoint",
    ]
    assert check_aitoolkit_config({"job": "extension"}) == [
        "config: missing or not a mapping (it holds name and process)"
    ]


# Progress lines -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (
            "Ada_Lovelace:  10%|█         | 200/2000 [05:12<46:48,  1.56s/it, lr: 1.0e-04 loss: 4.123e-01]",
            (200, 2000, 0.4123),
        ),
        (
            "Ada_Lovelace:  75%|#######5  | 1500/2000 [00:12<00:04, 121.50it/s, lr: 1.0e-04 loss: 5.000e-02]",
            (1500, 2000, 0.05),
        ),
        (
            "Ada_Lovelace: 100%|██████████| 2000/2000 [52:01<00:00,  1.56s/it, lr: 1.0e-04 loss: 1.2e+00]\n",
            (2000, 2000, 1.2),
        ),
        # A resumed run starts its bar at the checkpoint's step, before any postfix.
        ("Ada_Lovelace:  25%|##5       | 500/2000 [00:00<?, ?it/s]", (500, 2000, None)),
    ],
)
def test_parse_progress_reads_the_training_bar(line, expected):
    assert parse_progress(line, name="Ada_Lovelace") == expected


def test_parse_progress_reads_a_name_holding_a_colon():
    line = "job: Ada:  10%|#         | 200/2000 [05:12<46:48,  1.56s/it, lr: 1.0e-04 loss: 4.1e-01]"
    assert parse_progress(line, name="job: Ada") == (200, 2000, 0.41)


def test_parse_progress_takes_the_last_redraw_of_a_log_chunk():
    chunk = (
        "\rAda_Lovelace:   0%|          | 0/2000 [00:00<?, ?it/s]"
        "\rAda_Lovelace:   0%|          | 1/2000 [00:02<1:06:38,  2.00s/it, lr: 1.0e-04 loss: 3.021e-01]"
        "\rAda_Lovelace:   0%|          | 2/2000 [00:03<55:10,  1.66s/it, lr: 1.0e-04 loss: 2.877e-01]"
    )
    assert parse_progress(chunk) == (2, 2000, 0.2877)
    assert parse_progress(chunk, name="Ada_Lovelace") == (2, 2000, 0.2877)


def test_parse_progress_keeps_a_nan_loss():
    line = "Ada_Lovelace:  50%|#####     | 1000/2000 [20:00<20:00, 1.20s/it, lr: 1.0e-04 loss: nan]"
    step, total, loss = parse_progress(line)
    assert (step, total) == (1000, 2000) and math.isnan(loss)


@pytest.mark.parametrize(
    "line",
    [
        "Caching latents to disk:  50%|#####     | 16/32 [00:05<00:05,  3.10it/s]",
        "Generating Samples: 100%|██████████| 2/2 [00:31<00:00, 15.60s/it]",
        "Loading checkpoint shards: 100%|██████████| 3/3 [00:04<00:00,  1.41s/it]",
        "Saving at step 500",
        "Saved checkpoint to output/Ada_Lovelace/Ada_Lovelace_000000500.safetensors",
        "",
    ],
)
def test_parse_progress_ignores_everything_else(line):
    assert parse_progress(line) is None
    assert parse_progress(line, name="Ada_Lovelace") is None


def test_parse_progress_with_a_name_skips_other_jobs_bars():
    line = "Grace_Hopper:  10%|#         | 200/2000 [05:12<46:48,  1.56s/it, lr: 1.0e-04 loss: 4.123e-01]"
    assert parse_progress(line, name="Ada_Lovelace") is None
    assert parse_progress(line, name="Grace_Hopper") == (200, 2000, 0.4123)

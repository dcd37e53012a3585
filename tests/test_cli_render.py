"""`likeness render`: what it refuses before any model loads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from likeness.cli.app import app


@pytest.fixture
def run(likeness_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Invoke `likeness render` in-process from tmp_path; afterwards check no model was built."""
    models = tmp_path / "fresh-models"
    monkeypatch.setenv("LIKENESS_MODELS_DIR", str(models))
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")  # nothing listens: a flow run would fail
    from likeness import settings

    settings.get_settings.cache_clear()
    monkeypatch.chdir(tmp_path)

    def invoke(*args: str):
        result = CliRunner().invoke(app, ["render", *args])
        assert not models.exists(), "a model was built or loaded"
        return result

    return invoke


@pytest.fixture
def trained(tmp_path: Path) -> Path:
    """An output folder as `likeness train` leaves it (the LoRA's bytes do not matter before a model loads)."""
    out = tmp_path / "Ada-lora"
    (out / "lora").mkdir(parents=True)
    (out / "lora" / "Ada.safetensors").write_bytes(b"weights")
    entry = {"files": ["lora/checkpoints/Ada_000000001.safetensors"], "step": 1, "best": True,
             "published_as": ["lora/Ada.safetensors"]}  # fmt: skip
    record = {"identity": {"format": 4, "trigger": "Ada", "profile": {"name": "tiny"}}, "complete": True,
              "lora": [entry], "renders": [], "files": {}}  # fmt: skip
    (out / "likeness.json").write_text(json.dumps(record))
    return out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--frames", "8"], "video_frames must be 4k+1"),
        (["--fx", "sepia"], "unknown post FX preset 'sepia'; known presets: none, seed-look"),
        (["--upscale", "8k"], "--upscale '8k' is not one of 4k, 1440p, 1080p"),
        (["--upscale", "4k"], "render.upscale_long_side=3840 is above 512"),
        (["--images", "2", "--prompts", "p.txt"], "give --prompts FILE or --images/--videos N, not both"),
        (["--animate", "still.png"], "--animate needs an image-to-video model, and profile 'tiny' names none"),
    ],
)
def test_settings_a_render_cannot_take_are_refused(run, trained, args, message):
    result = run("Ada", "--from", str(trained), *args)
    assert result.exit_code == 2 and message in result.output.replace("\n", " "), result.output


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "prompts.txt: is empty"),
        (b"\x89PNG\r\n\x1a\n\x00\x00", "not text"),
        (b"Ada at {place}\n", "{place}"),
        (b"- prompt: Ada runs\n  frames: 8\n", "prompt 1 ('Ada runs'): video_frames must be 4k+1"),
    ],
    ids=["empty", "binary", "placeholder", "frames"],
)
def test_a_prompts_file_that_cannot_be_rendered_is_refused(run, trained, tmp_path, content, message):
    path = tmp_path / ("prompts.yaml" if content.startswith(b"-") else "prompts.txt")
    path.write_bytes(content)
    result = run("Ada", "--from", str(trained), "--prompts", str(path))
    assert result.exit_code == 2 and message in result.output.replace("\n", " "), result.output


def test_a_folder_without_a_lora_or_of_another_character_is_refused(run, trained, tmp_path):
    result = run("Bob", "--from", str(trained))
    assert result.exit_code == 2 and "holds the LoRA of 'Ada', not 'Bob'" in result.output
    result = run("Ada", "--from", str(tmp_path))
    assert result.exit_code == 2 and "holds no trained LoRA" in result.output
    (trained / "lora" / "Ada.safetensors").unlink()
    result = run("Ada", "--from", str(trained))
    assert result.exit_code == 2 and "Ada.safetensors is gone" in result.output


def test_a_from_folder_that_does_not_exist_is_named_as_missing(run, tmp_path):
    result = run("Ada_Lovelace", "--from", "likeness-out/Ada_Lovelace-lora")
    output = result.output.replace("\n", " ")
    assert result.exit_code == 2, result.output
    assert "--from likeness-out/Ada_Lovelace-lora does not exist" in output and "likeness.json" not in output, output
    assert not (tmp_path / "likeness-out").exists()


def test_the_prompter_in_the_settings_writes_the_variations_and_a_bad_one_falls_back(likeness_env, monkeypatch):
    from likeness import settings
    from likeness.render.prompts import CharacterPrompt, template_variations
    from likeness.run.prepare_render import prompt_variations as _prompt_variations
    from tests.test_render_prompts import FakeLlm, completion

    written = ["Ada, reading in a library, soft window light", "Ada, on a ferry at dawn, 85mm"]
    fake = FakeLlm()
    try:
        good = fake.start(lambda body: (200, completion(json.dumps(written))))
        garbage = fake.start(lambda body: (200, "<html>busy</html>"))
        monkeypatch.setenv("LIKENESS_PROMPTER_API_KEY", "sk-prompter-1234")
        for url, expected in ((good, written), (garbage, template_variations(CharacterPrompt(trigger="Ada"), 2, 3))):
            monkeypatch.setenv("LIKENESS_PROMPTER_URL", url)
            settings.get_settings.cache_clear()
            assert [entry.prompt for entry in _prompt_variations(CharacterPrompt(trigger="Ada"), 2, 0, 3)] == expected
    finally:
        fake.close()
    assert fake.requests[0]["headers"]["Authorization"] == "Bearer sk-prompter-1234"


def test_a_lora_that_is_not_one_for_the_profiles_wan_is_refused_before_it_loads(likeness_env, models_dir, tmp_path):
    import torch
    from safetensors.torch import save_file

    from likeness import settings
    from likeness.models.tiny import build_tiny_models

    build_tiny_models(models_dir / "tiny", roles=["video"])
    settings.get_settings.cache_clear()
    out = tmp_path / "Ada-lora"
    (out / "lora").mkdir(parents=True)
    # A LoRA for a wider model: its shapes fit no layer of the tiny Wan transformer.
    save_file(
        {
            "diffusion_model.blocks.0.self_attn.q.lora_down.weight": torch.zeros(4, 5120),
            "diffusion_model.blocks.0.self_attn.q.lora_up.weight": torch.zeros(5120, 4),
        },
        out / "lora" / "Ada.safetensors",
    )
    entry = {"files": ["lora/Ada.safetensors"], "step": 1, "best": True, "published_as": ["lora/Ada.safetensors"]}
    record = {"identity": {"format": 4, "trigger": "Ada", "profile": {"name": "tiny"}}, "complete": True,
              "lora": [entry], "renders": [], "files": {}}  # fmt: skip
    (out / "likeness.json").write_text(json.dumps(record))
    result = CliRunner().invoke(app, ["render", "Ada", "--from", str(out)])
    assert result.exit_code == 2, result.output
    assert "Ada.safetensors" in result.output and "5120" in result.output.replace("\n", " ")


def test_a_local_transformers_prompter_runs_seeded_and_nonsense_falls_back(likeness_env, monkeypatch, capsys):
    from likeness import settings
    from likeness.models.tiny import build_tiny_models
    from likeness.render.llm import LlmUnusable, variation_messages
    from likeness.render.local_llm import TransformersPrompter
    from likeness.render.prompts import CharacterPrompt, template_variations, video_prompt
    from likeness.run.prepare_render import prompt_variations as _prompt_variations

    folder = build_tiny_models(settings.get_settings().resolved_models_dir / "tiny", roles=["prompter"])["prompter"]
    prompter = TransformersPrompter(folder)
    messages = variation_messages(CharacterPrompt(trigger="Ada"), 2, 3)
    assert prompter.generate(messages, 3, 40) == prompter.generate(messages, 3, 40)
    assert prompter.generate(messages, 3, 40) != prompter.generate(messages, 4, 40)
    text, finished = prompter.generate(messages, 3, 40)
    if not finished:
        with pytest.raises(LlmUnusable, match="wrote 40 tokens without finishing"):
            prompter.complete(messages, 3, 40)
    # Random weights write nonsense: the run says so and takes the templates.
    monkeypatch.setenv("LIKENESS_PROMPTER_LOCAL", "tiny:prompter")
    settings.get_settings.cache_clear()
    character = CharacterPrompt(trigger="Ada")
    entries = _prompt_variations(character, 2, 1, 3)
    stills = template_variations(character, 2, 3)
    assert [entry.prompt for entry in entries] == [*stills, video_prompt(stills[0], 3)]
    assert [entry.kind for entry in entries] == ["image", "image", "video"]
    assert "the prompter tiny:prompter gave no usable prompts" in capsys.readouterr().err

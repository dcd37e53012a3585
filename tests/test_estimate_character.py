"""The estimate of a character follows its settings: steps, CFG, frames and the catalogue move it as they must."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from likeness.config import RunConfig
from likeness.dataset.catalogue import load_catalogue
from likeness.estimate.character import estimate_character
from likeness.estimate.gpus import GPUS, price_per_hour
from likeness.models.profiles import load_profile
from tests.prefect_server import api_post

# Each test counts real-size models on the meta device (tens of seconds on 2 cores).
pytestmark = pytest.mark.slow

PROFILE = load_profile("production")
# Two shots keep the meta-device counts to a few shapes.
SMALL = {"dataset": {"variations": ["front", "face"]}}


def stages(overrides: dict | None = None, gpu: str = "H100") -> dict:
    config = RunConfig.from_profile(PROFILE, {**SMALL, **(overrides or {})}, beyond_limits=True)
    rows = estimate_character(PROFILE, config, load_catalogue(), GPUS[gpu], price_per_hour(GPUS[gpu], None))
    return {row.stage: row for row in rows}


def merged(*trees: dict) -> dict:
    out: dict = {}
    for tree in trees:
        for key, value in tree.items():
            out[key] = merged(out.get(key, {}), value) if isinstance(value, dict) else value
    return out


def test_every_stage_is_estimated_with_positive_figures():
    rows = stages()
    assert list(rows) == ["dataset: edit", "dataset: upscale + refine", "dataset: caption", "training", "renders"]
    for row in rows.values():
        assert row.evaluations > 0 and row.flops > 0 and row.seconds > 0 and row.usd > 0
        assert row.memory_mode in ("none", "model", "fp8", "sequential")
    assert rows["dataset: edit"].evaluations == 2 * PROFILE.edit.steps


def test_steps_and_cfg_multiply_the_edit():
    base = stages()["dataset: edit"]
    twice = stages(merged(SMALL, {"dataset": {"edit": {"steps": 2 * PROFILE.edit.steps}}}))["dataset: edit"]
    assert twice.evaluations == 2 * base.evaluations
    assert 1.9 < twice.flops / base.flops <= 2.0  # the text encoder and the VAE run once an edit either way
    cfg = stages(merged(SMALL, {"dataset": {"edit": {"true_cfg_scale": 4.0}}}))["dataset: edit"]
    assert cfg.evaluations == 2 * base.evaluations


def test_frames_and_the_catalogue_move_the_estimate():
    base = stages()
    longer = stages({"render": {"video_frames": 2 * PROFILE.render.video_frames - 1}})
    assert longer["renders"].flops > 1.9 * base["renders"].flops / 2  # the video dominates, attention grows faster
    assert longer["renders"].flops > base["renders"].flops
    one_shot = stages({"dataset": {"variations": ["front"]}})
    assert one_shot["dataset: edit"].evaluations == base["dataset: edit"].evaluations // 2
    assert one_shot["dataset: caption"].evaluations == 1


def test_a_smaller_gpu_takes_longer_and_needs_offload():
    h100, rtx = stages(gpu="H100"), stages(gpu="RTX 4090")
    assert rtx["training"].seconds > 3 * h100["training"].seconds
    assert h100["dataset: edit"].memory_mode == "none" and rtx["dataset: edit"].memory_mode != "none"


def test_the_estimate_command_prints_a_table_per_stage():
    done = subprocess.run(
        [str(Path(sys.executable).parent / "likeness"), "estimate", "Ada", "--profile", "production",
         "--set", "dataset.variations=[front,face]"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    for word in ("training", "renders", "character", "price table of"):
        assert word in done.stdout


def test_a_gpu_run_is_estimated_at_its_start_as_a_table_artifact(prefect_api, tmp_path):
    from prefect import flow
    from prefect.settings import PREFECT_API_URL, PREFECT_RESULTS_LOCAL_STORAGE_PATH, temporary_settings

    from tasks.estimate import estimate_run

    config = RunConfig.from_profile(PROFILE, SMALL)

    @flow
    def priced() -> tuple:
        return estimate_run("Ada", PROFILE, config, load_catalogue())

    with temporary_settings({PREFECT_API_URL: prefect_api, PREFECT_RESULTS_LOCAL_STORAGE_PATH: tmp_path}):
        costs = priced()
    assert [cost.stage for cost in costs][-2:] == ["training", "renders"]
    assert all(cost.gpu == "H100" and cost.usd > 0 for cost in costs)
    (artifact,) = api_post(prefect_api, "/artifacts/filter", {"artifacts": {"key": {"any_": ["ada-estimate"]}}})
    rows = json.loads(artifact["data"])
    assert [row["stage"] for row in rows] == [cost.stage for cost in costs]
    assert "price table of" in artifact["description"]


def test_the_5b_profile_renders_with_the_5b_and_tiny_twins_are_refused():
    five_b = load_profile("production-5b")
    config = RunConfig.from_profile(five_b, SMALL)
    h100 = GPUS["H100"]
    rows = {r.stage: r for r in estimate_character(five_b, config, load_catalogue(), h100, price_per_hour(h100, None))}
    assert rows["renders"].evaluations == sum(  # 30 steps with CFG for each render
        2 * five_b.render.steps for _ in (*five_b.render.image_prompts, *five_b.render.video_prompts)
    )
    assert rows["renders"].peak_bytes < stages()["renders"].peak_bytes  # one 5B against two 14B experts
    tiny = load_profile("tiny")
    with pytest.raises(ValueError, match="runs tiny twins"):
        estimate_character(tiny, RunConfig.from_profile(tiny), load_catalogue(), h100, price_per_hour(h100, None))

"""Strengths chosen by identity: the choice on made-up scores, the probe on tiny-a14b's two experts and speed LoRAs,
its record, grid and UI table, and the render settings that take its pair unless `--set` names a strength."""

from __future__ import annotations

import io
import json

import pytest
from PIL import Image

from likeness.config import RunConfig
from likeness.models.profiles import load_profile
from likeness.records import LoraCheckpoint, LoraRef, RenderItem, Strengths
from likeness.render.strengths import (
    CELL,
    LABEL_HEIGHT,
    ROW_LABEL_WIDTH,
    TITLE_HEIGHT,
    choose_strengths,
    pair_median,
    render_settings,
)
from likeness.storage.artifacts import get_bytes, load_image, put_file, put_image
from tests.records import dataset_item, dataset_ref

A14B = load_profile("tiny-a14b")


@pytest.mark.parametrize(
    ("distances", "median"),
    [((0.4, 0.5), 0.45), ((0.4, None), None), ((0.4, None, 0.5), 0.5), ((None, None), None), ((0.3,), 0.3)],
)
def test_a_still_without_a_face_counts_as_a_miss_in_its_pairs_median(distances, median):
    assert pair_median(distances) == (None if median is None else pytest.approx(median))


def test_the_pair_with_the_lowest_median_is_chosen_and_near_ties_go_to_the_strengths_nearest_one():
    scores = {(0.8, 1.0): [0.50, 0.52], (1.3, 1.0): [0.40, 0.42], (1.6, 1.0): [0.30, None], (1.3, 0.8): [0.45, 0.47]}
    # 1.6 draws the closest face once but loses it in the other seed: a miss reaches its median.
    assert choose_strengths(scores) == ((1.3, 1.0), pytest.approx(0.41))
    # Within 0.01 of the lowest median: the character's strength nearest 1.0 first, then the speed LoRAs'.
    near = {(0.8, 1.0): [0.400], (1.0, 0.6): [0.401], (1.0, 0.8): [0.404], (1.0, 1.0): [0.415], (1.3, 1.0): [0.396]}
    assert choose_strengths(near) == ((1.0, 0.8), pytest.approx(0.404))
    # Without speed LoRAs only the character's strength varies.
    assert choose_strengths({(0.8, None): [0.5, 0.5], (1.3, None): [0.45, 0.46]}) == ((1.3, None), pytest.approx(0.455))
    # No pair drew the face in most of its stills: nothing is chosen, renders keep their settings.
    assert choose_strengths({(0.8, 1.0): [None, None], (1.3, 1.0): [0.4, None]}) is None


def _probed(lora_scale: float | None, speed_lora_scale: float | None) -> LoraRef:
    ref = put_image(Image.new("RGB", (8, 8)), "x.png")
    strengths = Strengths(stills=(), grid=ref, lora_scale=lora_scale, speed_lora_scale=speed_lora_scale)
    checkpoint = LoraCheckpoint(step=1, loss=None, weights=ref)
    return LoraRef(trigger="Ada", base_model="tiny", checkpoints=(checkpoint,), strengths=strengths)


def test_renders_take_the_probes_strengths_unless_the_settings_name_them(likeness_env):
    def strengths(overrides, lora):
        config = render_settings(RunConfig.from_profile(A14B, overrides).render, lora)
        return config.lora_scale, config.speed_lora_scale

    probed = _probed(1.3, 0.8)
    assert strengths(None, probed) == (1.3, 0.8)
    assert strengths({"render": {"lora_scale": 1.0}}, probed) == (1.0, 0.8)
    assert strengths({"render": {"speed_lora_scale": 1.2, "lora_scale": 0.6}}, probed) == (0.6, 1.2)
    # Nothing chosen, or never probed: 1.0, as before there were probes.
    assert strengths(None, _probed(None, None)) == (1.0, 1.0)
    assert strengths(None, probed.model_copy(update={"strengths": None})) == (1.0, 1.0)


def test_the_probe_takes_only_the_render_settings_that_shape_its_stills():
    probe = A14B.render.for_probe()
    for update in ({"seed": 7}, {"fx": "seed-look"}, {"lora_scale": 1.2}, {"image_prompts": ("{trigger} runs",)}):
        assert A14B.render.model_copy(update=update).for_probe() == probe, update
    assert A14B.render.model_copy(update={"size": 128}).for_probe() != probe


def test_render_from_a_folder_takes_its_recorded_strengths_unless_set(likeness_env, tmp_path, monkeypatch):
    from likeness import settings
    from likeness.run.prepare_render import render_inputs

    # No weights here: the LoRA file's header is not checked against the model.
    monkeypatch.setenv("LIKENESS_MODELS_DIR", str(tmp_path / "no-models"))
    settings.get_settings.cache_clear()
    out = tmp_path / "Ada-lora"
    (out / "lora").mkdir(parents=True)
    (out / "lora" / "Ada.safetensors").write_bytes(b"weights")
    probe = {"lora_scale": 1.3, "speed_lora_scale": None, "identity_median": 0.4, "grid": "lora/Ada_strengths_0.png"}
    entry = {"files": ["lora/Ada.safetensors"], "step": 1, "best": True, "published_as": ["lora/Ada.safetensors"],
             "strengths": probe}  # fmt: skip
    record = {"identity": {"format": 4, "trigger": "Ada", "profile": {"name": "tiny"}}, "complete": True,
              "lora": [entry], "renders": [], "files": {}}  # fmt: skip
    (out / "likeness.json").write_text(json.dumps(record))
    said: list[str] = []

    def render_config(overrides):
        args = (None, None, None, None, None, None, None, None, overrides, False, said.append)
        return render_inputs("Ada", out, *args).config.render

    chosen = render_config(None)
    assert (chosen.lora_scale, chosen.speed_lora_scale) == (1.3, None)
    note = "note: the LoRA's strength probe chose render.lora_scale=1.3 (lora/Ada_strengths_0.png); --set either"
    assert [line for line in said if "strength" in line] == [f"{note} to choose your own"]
    said.clear()
    assert render_config(["render.lora_scale=0.9"]).lora_scale == 0.9
    assert not [line for line in said if "strength" in line]


def test_a_still_is_scored_by_its_main_faces_distance_to_the_reference(likeness_env, face_photo):
    from likeness.identity import get_identity_model, reference_face
    from tasks.strength_probe import still_distance

    model = get_identity_model()
    reference = put_file(face_photo)
    face, _ = reference_face(load_image(reference), "the reference photo", model)
    common = {"kind": "image", "prompt": "p", "negative_prompt": "", "seed": 0, "frames": 1, "steps": 4, "size": 64,
              "lora": reference, "lora_scale": 1.0, "model": "tiny:video"}  # fmt: skip
    assert still_distance(RenderItem(output=reference, **common), face, model) < 0.1
    noise = put_image(Image.new("RGB", (64, 64), "grey"), "grey.png")
    assert still_distance(RenderItem(output=noise, **common), face, model) is None


def test_the_probe_renders_each_pair_and_records_the_closest(likeness_env, face_photo, monkeypatch, tmp_path):
    from likeness.run.outputs import RECORD_FORMAT, export_lora_outputs
    from likeness.run.pictures import strengths_markdown
    from likeness.run.prepare_render import with_recorded_strengths
    from likeness.storage.artifacts import get_store
    from tasks.strength_probe import probe_strengths
    from tasks.train import fit_lora

    reference = put_file(face_photo)
    image = put_image(Image.new("RGB", (64, 64), "tan"), "tan.png")
    training = dataset_ref(reference, (dataset_item("front", image, "Ada, front"),)).training_set()
    lora = fit_lora.fn(training, A14B.train.model_copy(update={"steps": 2, "checkpoint_every": 2}), A14B)
    probe = A14B.render.probe.model_copy(
        update={"lora_scales": (0.8, 1.3), "speed_lora_scales": (0.8, 1.0), "seeds": 1}
    )
    config = A14B.render.model_copy(update={"probe": probe, "lora_scale": 1.0})

    # The tiny model draws noise, never a face: each still's distance is made up from the strengths it was
    # rendered at (read back from the render itself), closest at LoRA 1.3 with the speed LoRAs at 0.8.
    def made_up(item, face, model):
        speed = item.speed_loras[0].scale
        return None if (item.lora_scale, speed) == (0.8, 1.0) else 0.3 + abs(item.lora_scale - 1.3) + abs(speed - 0.8)

    monkeypatch.setattr("tasks.strength_probe.still_distance", made_up)
    assert probe_strengths.fn(lora, reference, False, config, A14B).strengths is None
    probed = probe_strengths.fn(lora, reference, True, config, A14B)
    strengths = probed.strengths
    assert strengths is not None and probed.checkpoints == lora.checkpoints
    assert [(s.lora_scale, s.speed_lora_scale, s.seed) for s in strengths.stills] == [
        (0.8, 0.8, 0), (0.8, 1.0, 0), (1.3, 0.8, 0), (1.3, 1.0, 0)
    ]  # fmt: skip
    # Each still an ordinary 4-step render at its pair (the settings' own lora_scale does not hold it).
    for still in strengths.stills:
        with Image.open(io.BytesIO(get_bytes(still.image))) as png:
            lineage = json.loads(png.text["likeness"])
        scales = {entry.get("kind", "character"): entry["scale"] for entry in lineage["loras"]}
        assert scales == {"character": still.lora_scale, "speed": still.speed_lora_scale}
        assert lineage["steps"] == 4 and lineage["prompt"] == "Ada, a portrait photo, looking at the camera"
    assert len({still.image.sha256 for still in strengths.stills}) == 4
    assert (strengths.lora_scale, strengths.speed_lora_scale) == (1.3, 0.8)
    assert strengths.identity_median == pytest.approx(0.3)
    assert [s.identity_distance for s in strengths.stills][1] is None
    assert LoraRef.model_validate_json(probed.model_dump_json()) == probed

    # The grid: a row per LoRA strength, a column per speed strength and seed, the chosen still outlined in green.
    grid = load_image(strengths.grid)
    assert grid.size == (ROW_LABEL_WIDTH + 2 * CELL, TITLE_HEIGHT + 2 * (CELL + LABEL_HEIGHT))
    green = (0, 128, 0)
    assert grid.getpixel((ROW_LABEL_WIDTH + 1, TITLE_HEIGHT + CELL + LABEL_HEIGHT + 1)) == green
    assert grid.getpixel((ROW_LABEL_WIDTH + 1, TITLE_HEIGHT + 1)) != green
    markdown = strengths_markdown("Ada", strengths, get_store())
    assert "| 1.3 | 0.8 | 0.300 | 0.300 | **chosen** |" in markdown and "| 0.8 | 1 | no face | miss |  |" in markdown

    # The output folder: the grid beside the LoRA, the pair and each still's distance in the best entry.
    out = tmp_path / "out"
    record = export_lora_outputs(probed, out, {"format": RECORD_FORMAT, "trigger": "Ada"}, "key", get_store(), {})
    (best,) = [entry for entry in record["lora"] if entry.get("best")]
    recorded = best["strengths"]
    assert (out / recorded["grid"]).read_bytes() == get_bytes(strengths.grid)
    assert recorded["grid"].startswith("lora/Ada_strengths_") and recorded["lora_scale"] == 1.3
    assert recorded["stills"][2] == {"lora_scale": 1.3, "speed_lora_scale": 0.8, "seed": 0, "identity_distance": 0.3}
    # What `likeness render --from` that folder renders at, and the render flow here.
    run = RunConfig.from_profile(A14B)
    assert with_recorded_strengths(run, recorded, lambda line: None).render.speed_lora_scale == 0.8
    assert render_settings(run.render, probed).lora_scale == 1.3

"""The pictures on the run a person started: a produce run (tiny, in this process, against a real Prefect server)
publishes '<trigger>-character' on itself, with the dataset's contact sheet, the chosen checkpoint's plot, the
strengths grid, every render with its identity scores, and links to its stage runs."""

from __future__ import annotations

import re

from likeness.records import CharacterResult
from likeness.run.gallery import character_details, character_overview
from tests.prefect_server import api_post
from tests.test_ui_pictures import decode_data_uri, image_urls

# One shot keeps the run short; the renders are the profile's own (images and a video).
ONE_SHOT = {"dataset": {"variations": ["front"]}}
LINK_RE = re.compile(r"\[([^\]]*)\]\((http[^)\s]+)\)")


def test_a_produce_run_shows_the_characters_pictures_on_itself(likeness_env, prefect_api, face_photo, tmp_path):
    from prefect.settings import PREFECT_API_URL, PREFECT_RESULTS_LOCAL_STORAGE_PATH, temporary_settings

    from flows.produce import produce_character
    from likeness.storage.artifacts import put_file

    reference = put_file(face_photo)
    with temporary_settings({PREFECT_API_URL: prefect_api, PREFECT_RESULTS_LOCAL_STORAGE_PATH: tmp_path / "results"}):
        state = produce_character("Ada Lovelace", reference.key, overrides=ONE_SHOT, return_state=True)
    assert state.is_completed(), state.message
    result = CharacterResult.model_validate(state.result())
    lora = result.lora
    assert lora is not None and lora.scores_plot is not None and lora.strengths is not None and result.renders
    run_id = str(state.state_details.flow_run_id)

    # On the parent run itself, under a key of the character's.
    artifacts = api_post(prefect_api, "/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [run_id]}}})
    by_key = {artifact["key"]: artifact for artifact in artifacts}
    assert {"ada-lovelace-character", "ada-lovelace-summary"} <= set(by_key)
    character = by_key["ada-lovelace-character"]
    overview, details = character["description"], character["data"]

    # The pictures, in the description (what the run's Artifacts tab shows on the card): the contact sheet, the plot,
    # the strengths grid, then each render (a video by its poster frame) in a row with its identity scores.
    urls = image_urls(overview)
    assert len(urls) == 3 + len(result.renders)
    pictures = [decode_data_uri(url) for url in urls]  # a local store: inlined JPEGs
    assert [max(picture.size) <= 1024 for picture in pictures] == [True] * len(urls)
    assert pictures[1].size == (800, 450)  # the plot, whole
    alts = re.findall(r"!\[([^\]]*)\]", overview)
    assert alts[:3] == [
        "Ada_Lovelace: dataset contact sheet",
        "Ada_Lovelace: identity distance by step",
        "Ada_Lovelace: identity distance by strength",
    ]
    rows = [line for line in overview.splitlines() if line.startswith("| ![")]
    assert len(rows) == len(result.renders)
    for row, item in zip(rows, result.renders, strict=True):
        assert f"{item.kind} s{item.seed}" in row
        assert row.endswith(" | no face | no face |")  # tiny's renders are noise: scored, no face found
    assert any("(poster)" in row for row in rows) == any(item.kind == "video" for item in result.renders)

    # Links to the stage runs (subflows of this run here), each to its page in the UI.
    ui = prefect_api.removesuffix("/api")
    subflows = api_post(prefect_api, "/flow_runs/filter", {"flow_runs": {"parent_flow_run_id": {"any_": [run_id]}}})
    assert len(subflows) == 3
    links = {url: text for text, url in LINK_RE.findall(overview)}
    assert {f"{ui}/runs/flow-run/{run['id']}" for run in subflows} == set(links)
    assert sorted(text.split()[0] for text in links.values()) == ["build-dataset", "render", "train-lora"]

    # The details below them: each render's prompt, and links to the stages' own pictures (keys of the character's).
    for item in result.renders:
        assert f"| {item.seed} |" in details
    for key in ("ada-lovelace-dataset-pictures", "ada-lovelace-checkpoint-plot", "ada-lovelace-strengths"):
        assert f"[{key}]({ui}/artifacts/key/{key})" in details
    # The summary links the pictures.
    assert f"({ui}/artifacts/key/ada-lovelace-character)" in by_key["ada-lovelace-summary"]["data"]


def test_the_pictures_of_a_character_without_a_lora_say_why(likeness_env):
    from tests.test_ui_pictures import assemble, dataset_inputs

    reference, _, dropped = dataset_inputs()
    result = CharacterResult(dataset=assemble(reference, [], dropped))
    overview = character_overview(result)
    assert len(image_urls(overview)) == 1 and "No LoRA: curation kept no image" in overview
    assert "0 kept images" in overview
    details = character_details(result)
    assert "ada-dataset-pictures" in details and "checkpoint-plot" not in details

"""Progress is said in what people count: a dataset's shots through each phase, a trainer's steps, renders."""

from __future__ import annotations

import re
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path

import pytest

from likeness.run import progress
from likeness.run.progress import StageProgress


@pytest.fixture
def heard() -> Iterator[list[tuple[str, int, int, str]]]:
    lines: list[tuple[str, int, int, str]] = []

    def listener(stage: str, done: int, total: int, text: str) -> None:
        lines.append((stage, done, total, text))

    progress.add_listener(listener)
    yield lines
    progress.remove_listener(listener)


def finished(count: int) -> list[Future]:
    futures: list[Future] = []
    for _ in range(count):
        future: Future = Future()
        future.set_result(None)
        futures.append(future)
    return futures


def test_a_dataset_counts_its_shots_through_each_phase_and_its_bar_its_steps(heard) -> None:
    dataset = StageProgress("dataset", 4 * 7, unit="shots", items=7)
    dataset.wait(finished(7), "edit")
    dataset.wait(finished(6), "upscale")  # a shot curation refused is not upscaled
    assert heard[0] == ("dataset", 0, 28, "0/7 shots")
    assert heard[7] == ("dataset", 7, 28, "edit 7/7 shots")
    assert heard[-1] == ("dataset", 13, 28, "upscale 6/6 shots")


def test_steps_and_renders_are_counted_with_their_unit_and_detail(heard) -> None:
    train = StageProgress("train", 600, unit="steps")
    train.advance("loss 0.0812", steps=120)
    render = StageProgress("render", 2, unit="renders")
    render.advance("image")
    assert heard == [
        ("train", 0, 600, "0/600 steps"),
        ("train", 120, 600, "120/600 steps loss 0.0812"),
        ("render", 0, 2, "0/2 renders"),
        ("render", 1, 2, "1/2 renders image"),
    ]


def test_an_announced_line_reaches_the_console_and_the_log(caplog) -> None:
    said: list[str] = []
    progress.add_announcer(said.append)
    try:
        with caplog.at_level("INFO", logger="likeness.run.progress"):
            progress.announce("every caption says 'a red scarf'")
    finally:
        progress.remove_announcer(said.append)
    assert said == ["every caption says 'a red scarf'"]
    assert caplog.messages == ["every caption says 'a red scarf'"]


def test_the_summaries_count_images_and_show_whole_render_names(capsys) -> None:
    from rich.console import Console

    from likeness.cli.flow_run import print_summary
    from likeness.cli.render import render_scores_table

    dataset = [f"Ada_Lovelace_{n:02d}.{ext}" for n in range(7) for ext in ("png", "txt")]
    manifest = {"identity": {"trigger": "Ada_Lovelace"}, "dataset": dataset, "lora": [], "renders": [],
                "last_run": {"model_loads": {}, "seconds": 30.0}}  # fmt: skip
    print_summary(Path("likeness-out/Ada_Lovelace"), manifest)
    assert re.search(r"│ dataset +│ 7 images, 7 captions +│", capsys.readouterr().out)
    name = "renders/Ada_Lovelace_image-00-3c1f9a2b7d.png"
    entry = {"file": name, "faces_found": 1, "frames_scored": 1, "identity_distance": 0.41, "identity_median": 0.41}
    console = Console(width=60, record=True)
    console.print(render_scores_table([entry], "Ada_Lovelace -> likeness-out/Ada_Lovelace"))
    text = console.export_text()
    assert "…" not in text and "".join(
        line.split("│")[1].strip() for line in text.splitlines() if "│" in line
    ).startswith(name)

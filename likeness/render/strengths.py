"""Strengths chosen by identity: the pair of character LoRA and speed LoRA strengths whose probe stills look most
like the reference, and the picture of the probe's grid.

Speed (step-distillation) LoRAs weaken likeness, and people tune the character LoRA's strength by eye, between 0.6
and 2.0. A probe renders a few stills at each pair of strengths (`render.probe`), and a pair scores the median of
its stills' identity distances, a still without a face counting as a miss, worse than any distance (as a
checkpoint's samples do in `likeness.training.checkpoints`). Renders take the chosen pair where their settings
leave the strengths open.

    chosen = choose_strengths({(1.0, 1.0): [0.42, 0.45], (1.3, 1.0): [0.38, None]})  # ((1.0, 1.0), 0.435)
    config = render_settings(config, lora)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from PIL import Image, ImageDraw, ImageOps

from likeness.config import RenderConfig, StrengthProbe
from likeness.identity import median_distance
from likeness.records import LoraRef, StrengthStill

# A character LoRA strength and the speed LoRAs' (None: the video model has none).
Pair = tuple[float, float | None]
# Medians this close are one likeness: a few stills cannot tell them apart, and the pair nearest 1.0 wins.
TIE = 0.01
CELL = 192
LABEL_HEIGHT = 18
ROW_LABEL_WIDTH = 96
TITLE_HEIGHT = 2 * LABEL_HEIGHT
OUTLINE = 4


def probe_pairs(probe: StrengthProbe, speed_loras: bool) -> list[Pair]:
    """The probe's pairs, by character strength then speed strength; without speed LoRAs only the first varies."""
    speeds: Sequence[float | None] = probe.speed_lora_scales if speed_loras else (None,)
    return [(lora, speed) for lora in probe.lora_scales for speed in speeds]


def pair_median(distances: Sequence[float | None]) -> float | None:
    """The median of a pair's distances, a still without a face (None) above every distance; None where such
    misses reach the median (as a checkpoint's samples score)."""
    return median_distance(distances)


def choose_strengths(scores: Mapping[Pair, Sequence[float | None]]) -> tuple[Pair, float] | None:
    """The pair with the lowest median distance and that median; of pairs within TIE of the lowest, the one
    nearest 1.0 (the character's strength first, then the speed LoRAs'). None where no pair has a median."""
    medians = {pair: median for pair, distances in scores.items() if (median := pair_median(distances)) is not None}
    if not medians:
        return None
    lowest = min(medians.values())
    chosen = min((pair for pair, median in medians.items() if median <= lowest + TIE), key=_from_one)
    return chosen, medians[chosen]


def _from_one(pair: Pair) -> tuple[float, ...]:
    lora, speed = pair
    speed = 1.0 if speed is None else speed
    return abs(lora - 1.0), abs(speed - 1.0), lora, speed


def by_pair(stills: Sequence[StrengthStill]) -> dict[Pair, list[float | None]]:
    """Each pair's distances, seed by seed, in the order the stills were rendered."""
    scores: dict[Pair, list[float | None]] = {}
    for still in stills:
        scores.setdefault((still.lora_scale, still.speed_lora_scale), []).append(still.identity_distance)
    return scores


def render_settings(config: RenderConfig, lora: LoraRef) -> RenderConfig:
    """The render settings with each strength they leave open taken from the LoRA's probe, else 1.0."""
    probe = lora.strengths
    return config.with_strengths(probe.lora_scale, probe.speed_lora_scale) if probe else config.with_strengths()


def strengths_grid(
    stills: Sequence[StrengthStill], images: Sequence[Image.Image], chosen: Pair | None, title: str
) -> Image.Image:
    """The stills in a row per character strength and a column per speed strength and seed, each labelled with
    its identity distance, the chosen pair's outlined in green."""
    rows = sorted({still.lora_scale for still in stills})
    columns = sorted({(still.speed_lora_scale or 0.0, still.seed) for still in stills})
    width = ROW_LABEL_WIDTH + len(columns) * CELL
    grid = Image.new("RGB", (width, TITLE_HEIGHT + len(rows) * (CELL + LABEL_HEIGHT)), "white")
    draw = ImageDraw.Draw(grid)
    draw.text((4, 3), title, fill="black")
    for number, (speed, seed) in enumerate(columns):
        header = f"speed {speed:g}, seed {seed}" if stills[0].speed_lora_scale is not None else f"seed {seed}"
        draw.text((ROW_LABEL_WIDTH + number * CELL + 4, LABEL_HEIGHT + 3), header, fill="black")
    for row, scale in enumerate(rows):
        draw.text((4, TITLE_HEIGHT + row * (CELL + LABEL_HEIGHT) + CELL // 2), f"LoRA {scale:g}", fill="black")
    for still, image in zip(stills, images, strict=True):
        x = ROW_LABEL_WIDTH + columns.index((still.speed_lora_scale or 0.0, still.seed)) * CELL
        y = TITLE_HEIGHT + rows.index(still.lora_scale) * (CELL + LABEL_HEIGHT)
        grid.paste(ImageOps.contain(image.convert("RGB"), (CELL, CELL)), (x, y))
        distance = "no face" if still.identity_distance is None else f"{still.identity_distance:.3f}"
        draw.text((x + 4, y + CELL + 3), distance, fill="black")
        if (still.lora_scale, still.speed_lora_scale) == chosen:
            draw.rectangle((x, y, x + CELL - 1, y + CELL + LABEL_HEIGHT - 1), outline="green", width=OUTLINE)
    return grid

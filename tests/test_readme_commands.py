"""The README follows itself: its command blocks run in order, as a reader types them, from a fresh clone.

Every `.venv/bin/likeness` line of the blocks that make, train, render, batch and estimate characters runs with
bash in one fresh folder, in README order, on the tiny profile (the CLI's default), against the CLI's own temporary
Prefect server; each must exit 0. Left out: the quick start's `bin/quickstart` and `bin/test` (they set up the venv
and run the whole suite), `bench/` lines (benchmarks), lines with a `<placeholder>`, and the sections that need
servers (deployments, Kubernetes, PostgreSQL, docker). The files a reader is presumed to have are made first: the
photos, a captioned image folder with its masks, and each YAML file the README shows in a block headed
`# NAME.yaml`, written exactly as shown. Minutes: run only when named (`bin/test -m readme -n 0 -s`).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image, ImageDraw, ImageOps

from tests.conftest import cli_env

pytestmark = pytest.mark.readme

README = Path(__file__).resolve().parent.parent / "README.md"
VENV_BIN = Path(sys.executable).parent
# The sections whose blocks run: fast on the tiny profile, needing no server of their own.
RUN_SECTIONS = ("Quick start", "Training the LoRA", "Rendering", "Prefect", "What a character costs")
COMMAND = ".venv/bin/likeness "
PLACEHOLDER = re.compile(r"<[^<>\s][^<>]*>")
YAML_FILE = re.compile(r"#\s*(\S+\.ya?ml)\s*$")


@dataclass(frozen=True)
class Block:
    section: str
    language: str
    lines: tuple[str, ...]


def readme_blocks(text: str) -> list[Block]:
    """The fenced blocks of the README in order, each with the `## ` section it is in."""
    blocks, section, fence, body = [], "", None, []
    for line in text.splitlines():
        if fence is not None:
            if line.strip() == "```":
                blocks.append(Block(section, fence, tuple(body)))
                fence, body = None, []
            else:
                body.append(line)
        elif line.startswith("```"):
            fence = line[3:].strip()
        elif line.startswith("## "):
            section = line[3:].strip()
    assert fence is None, "the README ends inside a fenced block"
    return blocks


def commands(block: Block) -> list[str]:
    """A bash block's commands: continued lines joined, comment lines dropped."""
    joined, pending = [], ""
    for line in block.lines:
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        command = (pending + line).strip()
        pending = ""
        if command and not command.startswith("#"):
            joined.append(command)
    return joined


def why_skipped(command: str) -> str | None:
    if PLACEHOLDER.search(command):
        return "a <placeholder> to fill in"
    if command.startswith("bin/"):
        return "sets up the venv or runs the whole suite"
    if "bench/" in command:
        return "a benchmark"
    if not command.startswith(COMMAND):
        return "not a likeness command"
    return None


def section_of(section: str) -> str | None:
    return next((name for name in RUN_SECTIONS if section == name or section.startswith(name + ":")), None)


def readers_files(work: Path, face_photo: Path, blocks: list[Block]) -> None:
    """What the README presumes its reader has, before the first command."""
    from tests.photos import astronaut, grace_hopper, no_face_photo

    shutil.copyfile(face_photo, work / "ada.jpg")  # a real face: `likeness sample-photo` writes the same one
    shutil.copyfile(face_photo, work / "grace.jpg")
    no_face_photo().save(work / "coat.jpg")  # a garment shot: an object, no face
    astronaut().save(work / "dancer.jpg")  # a pose: a person
    # A training folder in the AI Toolkit / kohya layout: images with same-stem captions, and a mask each.
    images, masks = work / "my-images", work / "my-masks"
    images.mkdir()
    masks.mkdir()
    shots = {
        "front": (grace_hopper(), "front view, neutral expression, head and shoulders"),
        "mirrored": (ImageOps.mirror(grace_hopper()), "three-quarter view, neutral expression, head and shoulders"),
        "smile": (grace_hopper().rotate(4, fillcolor=(128, 128, 128)), "front view, slight smile, close-up"),
    }
    for shot, (picture, caption) in shots.items():
        picture.save(images / f"Ada_Lovelace_{shot}.png")
        (images / f"Ada_Lovelace_{shot}.txt").write_text(f"Ada_Lovelace, {caption}\n")
        mask = Image.new("L", picture.size, 0)
        ImageDraw.Draw(mask).ellipse(
            (picture.width // 4, picture.height // 8, picture.width * 3 // 4, picture.height // 2), fill=255
        )
        mask.save(masks / f"Ada_Lovelace_{shot}.png")
    shown = [block for block in blocks if block.language == "yaml" and block.lines and YAML_FILE.match(block.lines[0])]
    for block in shown:
        (work / YAML_FILE.match(block.lines[0]).group(1)).write_text("\n".join(block.lines) + "\n")
    assert {"prompts.yaml", "characters.yaml"} <= {YAML_FILE.match(block.lines[0]).group(1) for block in shown}


def one(work: Path, pattern: str) -> Path:
    found = sorted(work.glob(pattern))
    assert found, f"nothing matches {pattern} in {work}"
    return found[0]


# What each section's block promises, checked once it has run: (the folder, every command's output by command).
Check = Callable[[Path, dict[str, str]], None]


def made_characters(work: Path, outputs: dict[str, str]) -> None:
    ada = work / "likeness-out" / "ada"
    assert (ada / "likeness.json").is_file() and (ada / "lora" / "Ada_Lovelace.safetensors").is_file()
    one(ada, "renders/Ada_Lovelace_image_s0_*.png")
    one(ada, "renders/Ada_Lovelace_image_s7_*.png")  # --set render.seed=7 rendered beside the first
    outfits = work / "likeness-out" / "ada-outfits"
    for shot in ("try-on-1", "pose-transfer-1"):  # one shot for each --garment and --pose
        assert (outfits / "dataset" / f"Ada_Lovelace_{shot}.png").is_file(), shot
        assert (outfits / "masks" / f"Ada_Lovelace_{shot}.png").is_file(), shot
    assert any("tiny-a14b" in output for command, output in outputs.items() if command.endswith(" profiles"))


def trained(work: Path, outputs: dict[str, str]) -> None:
    data = work / "likeness-out" / "ada-data"
    assert sorted(p.stem for p in (data / "dataset").glob("*.png")) == sorted(
        p.stem for p in (data / "dataset").glob("*.txt")
    )
    lora = work / "likeness-out" / "Ada_Lovelace-lora"
    assert (lora / "lora" / "Ada_Lovelace.safetensors").is_file() and (lora / "reference.png").is_file()
    job = (work / "job.yaml").read_text()
    assert "job: extension" in job and "folder_path: dataset" in job, job[:500]
    native = next(output for command, output in outputs.items() if "--backend runpod-native" in command)
    assert "NVIDIA H100 80GB HBM3" in native and "3 images" in native, native[-2000:]


def rendered(work: Path, outputs: dict[str, str]) -> None:
    renders = work / "likeness-out" / "Ada_Lovelace-lora" / "renders"
    assert len(list(renders.glob("Ada_Lovelace_image_s0_*.png"))) == 3  # two variations, one prompt of the file
    one(renders, "Ada_Lovelace_video_s3_*.mp4")  # prompts.yaml's video, its own seed
    one(renders, "Ada_Lovelace_video_s0_*_256p.mp4")  # --set render.upscale_long_side=256
    a14b = work / "likeness-out" / "ada-a14b"
    assert (a14b / "lora" / "Ada_Lovelace_high_noise.safetensors").is_file()
    one(a14b, "renders/Ada_Lovelace_animated_s0_*.mp4")


def batched(work: Path, outputs: dict[str, str]) -> None:
    output = next(output for command, output in outputs.items() if " batch " in command)
    assert "batch: 2 rows, 2 produced" in output, output[-2000:]
    one(work / "likeness-out" / "Grace_Hopper", "renders/Grace_Hopper_image_s3_*.png")


def estimated(work: Path, outputs: dict[str, str]) -> None:
    output = next(output for command, output in outputs.items() if " estimate " in command)
    assert "production profile" in output and "H100" in output and "character" in output, output[-2000:]


CHECKS: dict[str, Check] = {
    "Quick start": made_characters,
    "Training the LoRA": trained,
    "Rendering": rendered,
    "Prefect": batched,
    "What a character costs": estimated,
}


def test_the_readmes_commands_run_in_order_from_a_fresh_clone(tmp_path, models_dir, face_photo):
    blocks = readme_blocks(README.read_text())
    work = tmp_path / "reader"
    work.mkdir()
    readers_files(work, face_photo, blocks)
    env = cli_env(work, models_dir, None)
    ran: dict[str, list[str]] = {name: [] for name in RUN_SECTIONS}
    outputs: dict[str, str] = {}
    started = time.monotonic()
    for block in blocks:
        section = section_of(block.section)
        if block.language != "bash" or section is None:
            continue
        before = len(ran[section])
        for command in commands(block):
            reason = why_skipped(command)
            if reason:
                print(f"skipped ({reason}): {command}")
                continue
            # The folder a command starts from is one the README's earlier commands made.
            for named in re.findall(r"--from (\S+)", command):
                assert (work / named).is_dir(), f"{command!r}: no earlier command made {named}"
            line = str(VENV_BIN) + "/" + command.removeprefix(".venv/bin/")
            began = time.monotonic()
            result = subprocess.run(
                ["bash", "-c", line], cwd=work, env=env, capture_output=True, text=True, timeout=900
            )
            print(f"{time.monotonic() - began:6.1f} s  exit {result.returncode}  {command}")
            assert result.returncode == 0, f"{command!r} exited {result.returncode}:\n{result.stderr[-4000:]}"
            outputs[command] = result.stdout + result.stderr
            ran[section].append(command)
        if len(ran[section]) > before:
            CHECKS[section](work, {command: outputs[command] for command in ran[section]})
    assert all(ran.values()), f"a section ran no command (renamed?): {ran}"
    print(f"{sum(map(len, ran.values()))} commands in {time.monotonic() - started:.0f} s")

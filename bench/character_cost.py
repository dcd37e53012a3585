"""What a character costs on one GPU, stage by stage: the production profiles (bf16 and FP8), and the seed's own
workflow.

    .venv/bin/python bench/character_cost.py [--gpu H100]

FLOPs are counted on the real-size models on the meta device (likeness.estimate.roles); seconds from the GPU's
dense peak at the sustained fraction calibrated on Wan 2.2's published H100 render (likeness.estimate.gpus);
dollars from the dated price table. The seed, as it describes itself: 40-step editing with CFG, the same Flux
refine and 14B LoRA at 512 px, and Wan 2.2 at 40 steps with CFG, then with the lightx2v 4-step LoRAs (no CFG).
Figures, not a test. The counts are kept in the data folder's estimate-counts.json: the first run counts (a minute
or two on 2 cores), later ones read them.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

from rich.console import Console  # noqa: E402

from likeness.config import Ceiling, Limit, ModelProfile, RunConfig  # noqa: E402
from likeness.dataset.catalogue import load_catalogue  # noqa: E402
from likeness.estimate import roles  # noqa: E402
from likeness.estimate.character import estimate_character  # noqa: E402
from likeness.estimate.gpus import GPUS, price_per_hour  # noqa: E402
from likeness.estimate.report import estimate_table  # noqa: E402
from likeness.models.profiles import load_profile  # noqa: E402
from likeness.settings import get_settings  # noqa: E402


def seed_without_speed_loras() -> ModelProfile:
    """production-fullstep (the seed's 40-step editing) with Wan 2.2 rendered at its own steps: no speed LoRAs,
    so no 4-step ceiling."""
    profile = load_profile("production-fullstep")
    video = profile.models["video"].model_copy(update={"speed_loras": None, "speed_sigmas": None})
    steps = Limit(soft=Ceiling(max=50, why="the seed renders 40 steps with CFG"))
    limits = profile.limits.model_copy(update={"render": profile.limits.render.model_copy(update={"steps": steps})})
    return profile.model_copy(update={"models": {**profile.models, "video": video}, "limits": limits})


# The seed's own dataset and training: no automatic curation (its person removes odd images by hand: one edit a
# shot) and so no identity guard (one refine from a chosen start step), and AI Toolkit's LoRA on Wan 2.1 T2V-14B,
# "compatible with 2.2": one 14B model where production trains both A14B experts.
SEED = {
    "dataset": {"curation": {"identity": False, "max_tries": 1}},
    # AI Toolkit samples its checkpoints its own way: at the sample steps, with CFG.
    # AI Toolkit checkpoints gradients unless told otherwise.
    "train": {"base": "wan21_14b", "sampler": "training", "gradient_checkpointing": True},
}


def runs() -> dict[str, tuple[ModelProfile, dict]]:
    return {
        "production": (load_profile("production"), {}),
        "production-fp8": (load_profile("production-fp8"), {}),
        "seed, Wan 2.2 40 steps x CFG": (
            seed_without_speed_loras(),
            {**SEED, "render": {"steps": 40, "guidance_scale": 3.5}},
        ),
        "seed, Wan 2.2 + 4-step LoRAs": (load_profile("production-fullstep"), SEED),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu", default="H100", choices=list(GPUS))
    gpu = GPUS[parser.parse_args().gpu]
    price = price_per_hour(gpu, None)
    roles.keep_counts_in(get_settings().estimate_counts_file)
    console = Console(width=150)
    totals = {}
    for name, (profile, overrides) in runs().items():
        config = RunConfig.from_profile(profile, overrides, beyond_limits=True)
        try:
            rows = estimate_character(profile, config, load_catalogue(), gpu, price)
        except ValueError as exc:  # production-fp8 on a GPU without FP8 tensor cores
            print(f"{name}: {exc}")
            continue
        console.print(estimate_table(rows, f"{name}: one {gpu.name} at ${price.usd_per_hour:.2f}/h ({price.source})"))
        totals[name] = rows
    print("side by side, expected seconds per stage (and dollars for the character):")
    stages = list(dict.fromkeys(row.stage for rows in totals.values() for row in rows))
    seconds = {name: {row.stage: row.seconds for row in rows} for name, rows in totals.items()}
    print(f"{'stage':<28}" + "".join(f"{name:>32}" for name in totals))
    for stage in stages:
        print(f"{stage:<28}" + "".join(f"{seconds[name].get(stage, 0):>32,.0f}" for name in totals))
    print(f"{'character':<28}" + "".join(
        f"{f'{sum(r.seconds for r in rows):,.0f} s  ${sum(r.usd for r in rows):.2f}':>32}" for rows in totals.values()
    ))  # fmt: skip


if __name__ == "__main__":
    main()

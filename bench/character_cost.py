"""What a character costs on one GPU, stage by stage: the production profile, and the seed's own workflow.

    .venv/bin/python bench/character_cost.py [--gpu H100]

FLOPs are counted on the real-size models on the meta device (likeness.estimate.roles); seconds from the GPU's
dense peak at the sustained fraction calibrated on Wan 2.2's published H100 render (likeness.estimate.gpus);
dollars from the dated price table. The seed, as it describes itself: 40-step editing with CFG, the same Flux
refine and 14B LoRA at 512 px, and Wan 2.2 at 40 steps with CFG, then with the lightx2v 4-step LoRAs (no CFG).
Figures, not a test.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

from likeness.config import Ceiling, Limit, ModelProfile, RunConfig  # noqa: E402
from likeness.dataset.catalogue import load_catalogue  # noqa: E402
from likeness.estimate.character import estimate_character  # noqa: E402
from likeness.estimate.gpus import GPUS, price_per_hour  # noqa: E402
from likeness.models.profiles import load_profile  # noqa: E402


def seed_without_speed_loras() -> ModelProfile:
    """production-fullstep (the seed's 40-step editing) with Wan 2.2 rendered at its own steps: no speed LoRAs,
    so no 4-step ceiling."""
    profile = load_profile("production-fullstep")
    video = profile.models["video"].model_copy(update={"speed_loras": None, "speed_sigmas": None})
    steps = Limit(soft=Ceiling(max=50, why="the seed renders 40 steps with CFG"))
    limits = profile.limits.model_copy(update={"render": profile.limits.render.model_copy(update={"steps": steps})})
    return profile.model_copy(update={"models": {**profile.models, "video": video}, "limits": limits})


def runs() -> dict[str, tuple[ModelProfile, dict]]:
    return {
        "production": (load_profile("production"), {}),
        "seed, Wan 2.2 40 steps x CFG": (
            seed_without_speed_loras(),
            {"render": {"steps": 40, "guidance_scale": 3.5}},
        ),
        "seed, Wan 2.2 + 4-step LoRAs": (load_profile("production-fullstep"), {}),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu", default="H100", choices=list(GPUS))
    gpu = GPUS[parser.parse_args().gpu]
    price = price_per_hour(gpu, None)
    print(f"one {gpu.name} at ${price.usd_per_hour:.2f}/h ({price.source}); the default catalogue")
    print(f"{'run':<32}{'stage':<28}{'evaluations':>12}{'PFLOP':>9}{'seconds':>9}{'GiB':>7}  {'mode':<11}{'$':>6}")
    for name, (profile, overrides) in runs().items():
        config = RunConfig.from_profile(profile, overrides, beyond_limits=True)
        rows = estimate_character(profile, config, load_catalogue(), gpu, price)
        for row in rows:
            print(f"{name:<32}{row.stage:<28}{row.evaluations:>12}{row.flops / 1e15:>9.1f}{row.seconds:>9.0f}"
                  f"{row.peak_bytes / 2**30:>7.1f}  {row.memory_mode or 'no fit':<11}{row.usd:>6.2f}")  # fmt: skip
        evaluations, flops = sum(r.evaluations for r in rows), sum(r.flops for r in rows) / 1e15
        seconds, usd = sum(row.seconds for row in rows), sum(row.usd for row in rows)
        print(f"{name:<32}{'character':<28}{evaluations:>12}{flops:>9.1f}{seconds:>9.0f}{'':>7}  {'':<11}{usd:>6.2f}")


if __name__ == "__main__":
    main()

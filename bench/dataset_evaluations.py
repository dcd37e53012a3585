"""Transformer evaluations per dataset image under the production profiles, counted from their settings.

    .venv/bin/python bench/dataset_evaluations.py

No model runs: the counts come from the profiles' settings through the code the dataset stage uses (the
catalogue's shot sizes, the refine's tile grid, the identity guard's bisection), so they hold on any machine.
An edit is `steps` evaluations of the editor's transformer, twice that with true CFG; a refine is `steps -
start step` evaluations per tile. The guard refines once per start step it tries: a face that survives every
candidate leads it to the lowest (the most steps), one that survives none to the highest. Curation may edit a
shot again (up to `curation.max_tries` edits): the figures are for an edit kept on its first try, and the most.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flows.dataset import EDIT_MULTIPLE  # noqa: E402
from likeness.catalogue import shot_size  # noqa: E402
from likeness.profiles import load_profile  # noqa: E402
from likeness.tiling import tile_grid  # noqa: E402
from tasks.upscale import choose_start_step, target_size  # noqa: E402

# What production ran before the dataset issue (commit f0aefa5): Qwen-Image-Edit-2509 at 40 steps with true CFG 4,
# one untiled FLUX.1-dev refine of the 2048 px square from step 16 of 20, no curation, no guard.
BEFORE = {"edit": 40 * 2, "edit_px": 1024 * 1024, "refine": 20 - 16, "refine_px": 2048 * 2048}


def refine_evaluations(profile_name: str, aspect: str, face_survives: bool) -> tuple[int, int, int]:
    """(evaluations, tiles, refines) of one image's refine for `aspect`, when every or no candidate keeps the face."""
    profile = load_profile(profile_name)
    upscale = profile.upscale
    width, height = shot_size(aspect, profile.edit.size, EDIT_MULTIPLE)
    tiles = len(tile_grid(*target_size(width, height, upscale.size), upscale.tile, upscale.overlap))
    low, high = upscale.start_steps
    choice = choose_start_step(
        range(low, high + 1), lambda step: 0.3 if face_survives else 0.9, 0.3, upscale.identity_tolerance, 0
    )
    steps = sum(upscale.steps - step for step, _ in choice.tries)
    return steps * tiles, tiles, len(choice.tries)


def main() -> None:
    print("transformer evaluations per dataset image (edit at a 1024 px long side; refine tiles of the 2048 px image)")
    print(
        f"  before (f0aefa5 production): edit {BEFORE['edit']} at 1.0 MP; "
        f"refine {BEFORE['refine']} at 4.2 MP (one untiled 2048 px square)"
    )
    for name in ("production", "production-fullstep", "production-2509", "permissive"):
        profile = load_profile(name)
        edit = profile.edit.steps * (2 if profile.edit.true_cfg_scale > 1 else 1)
        tries = profile.dataset.curation.max_tries
        tile_mp = profile.upscale.tile**2 / 1e6
        for aspect in ("portrait", "square"):
            survives, tiles, refines = refine_evaluations(name, aspect, face_survives=True)
            drifts, _, _ = refine_evaluations(name, aspect, face_survives=False)
            print(
                f"  {name:20s} {aspect:8s}: edit {edit} (up to {edit * tries} with {tries} tries); "
                f"refine {survives} tile evaluations at {tile_mp:.1f} MP if the face survives every start step, "
                f"{drifts} if none ({tiles} tiles, {refines} guarded refines)"
            )


if __name__ == "__main__":
    main()

"""Transformer evaluations per dataset image under the production profiles, counted from their settings.

    .venv/bin/python bench/dataset_evaluations.py

No model runs: the counts come from the profiles' settings through the code the dataset stage uses (the
catalogue's shot sizes, the refine's tile grid, the guard's region around the face, its bisection), so they
hold on any machine. An edit is `steps` evaluations of the editor's transformer, twice that with true CFG; a
refine is `steps - start step` evaluations per tile. The guard refines the tile around the face once per start
step it tries (a face that survives every candidate leads it to the lowest, the most steps; one that survives none
to the highest), then the rest of the image at the step it chose; where no tile holds the face, or with
`guard_on_tile` off (the figures in brackets), it refines the face's surroundings per try and then the whole image.
Curation may edit a shot again (up to `curation.max_tries` edits): the figures are for an edit kept on its first
try, and the most.

How large the face is in a shot is an assumption, by framing: likeness.estimate.refines.FACE_SHARE.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flows.dataset import EDIT_MULTIPLE  # noqa: E402
from likeness.config import UpscaleConfig  # noqa: E402
from likeness.dataset.catalogue import load_catalogue, shot_size  # noqa: E402
from likeness.dataset.guard import target_size  # noqa: E402
from likeness.estimate.refines import FACE_SHARE, face_share_of, guard_outcomes  # noqa: E402
from likeness.models.profiles import load_profile  # noqa: E402

# What production ran before the dataset issue (commit f0aefa5): Qwen-Image-Edit-2509 at 40 steps with true CFG 4,
# one untiled FLUX.1-dev refine of the 2048 px square from step 16 of 20, no curation, no guard.
BEFORE = {"edit": 40 * 2, "refine": 20 - 16}


def refine_evaluations(upscale: UpscaleConfig, size: tuple[int, int], face_share: float | None, survives: bool) -> int:
    """Tile evaluations of one image's guarded refine, when the face survives every start step or none."""
    outcomes = guard_outcomes(upscale, size, face_share)
    return (outcomes[0] if survives else outcomes[-1]).tile_steps


def main() -> None:
    print("transformer evaluations per dataset image (edit at a 1024 px long side; refine in 1024 px tiles at 2048)")
    print(f"  before (f0aefa5 production): edit {BEFORE['edit']}; refine {BEFORE['refine']} untiled at 4.2 MP")
    for name in ("production", "production-fullstep", "production-2509", "permissive"):
        profile = load_profile(name)
        edit = profile.edit.steps * (2 if profile.edit.true_cfg_scale > 1 else 1)
        tries = profile.dataset.curation.max_tries
        print(f"  {name}: edit {edit} (up to {edit * tries} with {tries} tries)")
        totals = {True: 0, False: 0}
        shots = load_catalogue().shots()
        for shot in shots:
            size = target_size(*shot_size(shot.aspect, profile.edit.size, EDIT_MULTIPLE), profile.upscale.size)
            for survives in totals:
                totals[survives] += refine_evaluations(profile.upscale, size, face_share_of(shot), survives)
        print(
            f"    refine, mean over the {len(shots)} default shots: {totals[True] / len(shots):.0f} tile evaluations "
            f"if the face survives every start step, {totals[False] / len(shots):.0f} if none"
        )
        if name == "production":
            for framing, share in FACE_SHARE.items():
                size = (1536, 2048) if framing in ("full body", "upper body") else (2048, 2048)
                off = profile.upscale.model_copy(update={"guard_on_tile": False})
                figures = [refine_evaluations(profile.upscale, size, share, s) for s in (True, False)]
                before = [refine_evaluations(off, size, share, s) for s in (True, False)]
                print(
                    f"      {framing:20s} {size[0]}x{size[1]}: {figures[0]} / {figures[1]}"
                    f" (off the tile: {before[0]} / {before[1]})"
                )


if __name__ == "__main__":
    main()

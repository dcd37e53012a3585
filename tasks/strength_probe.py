"""Probe strengths: render the chosen checkpoint at each pair of character and speed LoRA strengths
(`render.probe`), score each still against the reference face, and choose the pair renders default to.

The stills are ordinary image renders (the render settings' size, steps and guidance: 4 steps with the speed
LoRAs), at fixed seeds; flows hand over `RenderConfig.for_probe()`, so that a change to the renders' own settings
(`render.seed`, say) finds the probe cached. The grid of stills with their distances goes into the LoRA's record,
the output folder and the Prefect UI.

    lora = probe_strengths.fn(lora, training.reference, True, run.render.for_probe(), profile)
"""

from __future__ import annotations

from likeness.config import ModelProfile, RenderConfig, render_template
from likeness.identity import Face, FaceIdentityModel, get_identity_model, main_face_distance, reference_face
from likeness.records import LoraRef, RenderItem, Strengths, StrengthStill
from likeness.render.jobs import RenderJob
from likeness.render.strengths import by_pair, choose_strengths, probe_pairs, strengths_grid
from likeness.run.memory import memory_for_renders
from likeness.run.pictures import publish_strengths
from likeness.run.progress import StageProgress
from likeness.stages import stage_task
from likeness.storage.artifacts import ArtifactRef, load_image, put_image
from tasks.render import render_media

STAGE_VERSION = 1


def still_distance(item: RenderItem, face: Face, model: FaceIdentityModel) -> float | None:
    """The identity distance of the still's main face to the reference face (None: no face found)."""
    return main_face_distance(face, model.faces(load_image(item.output)))


@stage_task("probe-strengths", STAGE_VERSION)
def probe_strengths(
    lora: LoraRef, reference: ArtifactRef | None, identity: bool, config: RenderConfig, profile: ModelProfile
) -> LoraRef:
    """The LoRA with the strengths its best checkpoint's stills look most like the reference at."""
    probe = config.probe
    if not probe.enabled or not identity or reference is None:
        why = "render.probe.enabled=false" if not probe.enabled else "--no-identity" if not identity else "no reference"
        print(f"{lora.trigger}: strengths not probed ({why}); renders use the strengths set, else 1.0")
        return lora
    prompt = render_template(probe.prompt, trigger=lora.trigger)
    pairs = probe_pairs(probe, bool(profile.models["video"].speed_loras))
    # Each pair as given, whatever strengths the settings hold; post FX are alike at every strength.
    settings = {
        (lora_scale, speed): config.model_copy(
            update={"lora_scale": lora_scale, "speed_lora_scale": speed, "fx": "none"}
        ).with_strengths()
        for lora_scale, speed in pairs
    }
    # The stills are ordinary renders: the video model's memory mode is chosen for them as for any.
    jobs = [RenderJob(kind="image", prompt=prompt, seed=0, config=settings[pair]) for pair in pairs]
    profile = memory_for_renders(profile, config, jobs, False, say=print)
    model = get_identity_model()
    face, _ = reference_face(load_image(reference), "the reference photo", model)
    progress = StageProgress("strengths", len(pairs) * probe.seeds, f"{lora.trigger}-probe", unit="stills")
    best, stills, images = lora.best, [], []
    for (lora_scale, speed_scale), settings_of_pair in settings.items():
        for seed in range(probe.seeds):
            item = render_media.fn(best.weights, "image", prompt, settings_of_pair, seed, profile, best.low_noise)
            stills.append(
                StrengthStill(
                    lora_scale=lora_scale,
                    speed_lora_scale=speed_scale,
                    seed=seed,
                    image=item.output,
                    identity_distance=still_distance(item, face, model),
                )
            )
            images.append(load_image(item.output))
            progress.advance(f"LoRA {lora_scale:g}" + ("" if speed_scale is None else f", speed {speed_scale:g}"))
    choice = choose_strengths(by_pair(stills))
    chosen, median = choice if choice else (None, None)
    title = f"{lora.trigger}: identity distance of stills by strength (lower is closer)"
    grid = put_image(strengths_grid(stills, images, chosen, title), f"{lora.trigger}_strengths.png")
    strengths = Strengths(
        stills=tuple(stills),
        grid=grid,
        lora_scale=chosen[0] if chosen else None,
        speed_lora_scale=chosen[1] if chosen else None,
        identity_median=median,
    )
    # The grid and each pair's distances as pictures a browser loads from the store (likeness.run.pictures).
    publish_strengths(lora.trigger, strengths)
    if chosen is None:
        print(f"{lora.trigger}: no strengths chosen (no pair drew the face in most of its stills)")
    else:
        speed = "" if chosen[1] is None else f", speed LoRAs {chosen[1]:g}"
        print(f"{lora.trigger}: render strengths LoRA {chosen[0]:g}{speed} (median identity distance {median:.3f})")
    return lora.model_copy(update={"strengths": strengths})

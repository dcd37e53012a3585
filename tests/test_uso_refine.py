"""USO on the refine, as a run uses it: the profile's files, the settings and their limits, the preflight, the
subject crop, and the tiny refine conditioned on it (the model code itself: tests/test_uso.py)."""

from __future__ import annotations

import pytest
from PIL import Image

from likeness.config import InvalidSettings, RunConfig
from likeness.models import pipelines
from likeness.models.profiles import ProfileUnavailable, load_profile, preflight, uso_paths
from likeness.settings import get_settings
from likeness.storage.artifacts import load_image, put_file, put_image

TINY = load_profile("tiny")


@pytest.fixture
def reference(likeness_env, face_photo):
    return put_file(face_photo)


def test_production_refines_with_the_published_uso_files_and_permissive_without():
    production = load_profile("production")
    uso = production.models["refiner"].uso
    assert uso is not None and production.upscale.uso and not production.upscale.uso_style
    assert (uso.source, uso.lora, uso.projector, uso.image_encoder) == (
        "bytedance-research/USO",
        "uso_flux_v1.0/dit_lora.safetensors",
        "uso_flux_v1.0/projector.safetensors",
        "google/siglip-so400m-patch14-384",
    )
    assert production.upscale.uso_subject_size == 512
    assert load_profile("production-fp8").models["refiner"].uso == uso
    permissive = load_profile("permissive")
    assert permissive.models["refiner"].uso is None and not permissive.upscale.uso
    # The tiny twin names the same files, built offline.
    tiny = TINY.models["refiner"].uso
    assert (tiny.source, tiny.lora, tiny.projector, tiny.image_encoder) == (
        "tiny:uso",
        uso.lora,
        uso.projector,
        "tiny:siglip",
    )


def test_a_run_cannot_turn_uso_on_where_the_refiner_has_none():
    with pytest.raises(InvalidSettings, match=r"dataset\.upscale\.uso=true: profile 'permissive' names no USO files"):
        RunConfig.from_profile(load_profile("permissive"), {"dataset": {"upscale": {"uso": True}}})


def test_uso_style_needs_uso():
    with pytest.raises(InvalidSettings, match="uso_style needs uso"):
        RunConfig.from_profile(TINY, {"dataset": {"upscale": {"uso": False, "uso_style": True}}})


@pytest.mark.parametrize(
    ("size", "message"),
    [
        (520, "uso_subject_size=520 is not a multiple of 16"),
        (768, "uso_subject_size=768 is above 512, the content reference size USO runs at"),
        (2048, "uso_subject_size=2048 is above 1024, the largest content reference USO's own demo takes"),
    ],
)
def test_the_subject_size_stays_within_what_uso_was_trained_on(size, message):
    with pytest.raises(InvalidSettings, match=message):
        RunConfig.from_profile(load_profile("production"), {"dataset": {"upscale": {"uso_subject_size": size}}})


def test_a_run_needs_only_the_uso_files_it_uses():
    off = RunConfig.from_profile(TINY, {"dataset": {"upscale": {"uso": False}}})
    assert TINY.for_upscale(off.dataset.upscale).models["refiner"].uso is None
    # The subject alone: the DiT LoRA, not the style reference's projector and SigLIP.
    subject = TINY.for_upscale(RunConfig.from_profile(TINY, {}).dataset.upscale).models["refiner"].uso
    assert (subject.lora, subject.projector, subject.image_encoder) == (TINY.models["refiner"].uso.lora, None, None)
    style = RunConfig.from_profile(TINY, {"dataset": {"upscale": {"uso_style": True}}})
    assert TINY.for_upscale(style.dataset.upscale) is TINY


def test_a_subject_only_run_passes_the_preflight_without_the_style_files(likeness_env, tmp_path):
    folder = tmp_path / "USO"
    (folder / "uso_flux_v1.0").mkdir(parents=True)
    (folder / "uso_flux_v1.0" / "dit_lora.safetensors").write_bytes(b"")
    refiner = TINY.models["refiner"]
    uso = refiner.uso.model_copy(update={"source": str(folder), "image_encoder": str(tmp_path / "no-siglip")})
    profile = TINY.model_copy(update={"models": {**TINY.models, "refiner": refiner.model_copy(update={"uso": uso})}})
    subject_only = profile.for_upscale(TINY.upscale)
    preflight(subject_only, get_settings(), ("refiner",))
    assert uso_paths(subject_only, get_settings()).projector is None
    style = profile.for_upscale(TINY.upscale.model_copy(update={"uso_style": True}))
    with pytest.raises(ProfileUnavailable, match=r"USO projector file .*projector\.safetensors does not exist"):
        preflight(style, get_settings(), ("refiner",))
    (folder / "uso_flux_v1.0" / "projector.safetensors").write_bytes(b"")
    with pytest.raises(ProfileUnavailable, match=r"USO image encoder weights \(.*no-siglip\) are neither a folder"):
        preflight(style, get_settings(), ("refiner",))


def test_a_missing_uso_file_fails_the_preflight_naming_it(likeness_env, tmp_path):
    folder = tmp_path / "USO"
    (folder / "uso_flux_v1.0").mkdir(parents=True)
    (folder / "uso_flux_v1.0" / "projector.safetensors").write_bytes(b"")
    refiner = TINY.models["refiner"]
    uso = refiner.uso.model_copy(update={"source": str(folder)})
    profile = TINY.model_copy(update={"models": {**TINY.models, "refiner": refiner.model_copy(update={"uso": uso})}})
    with pytest.raises(ProfileUnavailable, match=r"USO DiT LoRA file .*uso_flux_v1\.0/dit_lora\.safetensors"):
        preflight(profile, get_settings(), ("refiner",))
    with pytest.raises(ProfileUnavailable, match=r"USO DiT LoRA file"):
        uso_paths(profile, get_settings())


def test_the_subject_is_the_face_and_its_surroundings_at_usos_size(reference):
    from likeness.identity import get_identity_model, main_face
    from tasks.upscale import uso_subject

    photo = load_image(reference)
    subject = load_image(uso_subject.fn(reference, 64))
    # Grace Hopper's portrait is 512x600: the crop around her face is smaller than the photo, its long side 64
    # and each side a multiple of 16.
    assert max(subject.size) == 64 and all(side % 16 == 0 for side in subject.size)
    face = main_face(get_identity_model().faces(photo))
    left, top, right, bottom = face.box
    assert (right - left) / photo.width < 0.9
    # A photo without a face is taken whole.
    plain = put_image(Image.new("RGB", (300, 100), (90, 120, 150)), "plain.png")
    assert load_image(uso_subject.fn(plain, 64)).size == (64, 16)


def test_the_tiny_refine_is_conditioned_on_the_subject(reference):
    from tasks.upscale import upscale_image, uso_subject

    edit = put_image(load_image(reference).resize((48, 64)), "front.png")
    subject = uso_subject.fn(reference, TINY.upscale.uso_subject_size)
    transformer = pipelines.get_pipeline("refiner", TINY).transformer
    tokens = []
    hook = transformer.register_forward_hook(
        lambda module, args, kwargs, output: tokens.append(kwargs["hidden_states"].shape[1]), with_kwargs=True
    )
    try:
        plain = upscale_image.fn(edit, TINY.upscale, "photo of Ada", 0, TINY, None)
        plain_tokens, tokens[:] = list(tokens), []
        conditioned = upscale_image.fn(edit, TINY.upscale, "photo of Ada", 0, TINY, None, subject)
    finally:
        hook.remove()
    assert plain.uso_subject is None and conditioned.uso_subject == subject
    # Every pass of every tile carries the subject's tokens after the tile's own.
    width, height = load_image(subject).size
    subject_tokens = (width // 16) * (height // 16)
    assert len(tokens) == len(plain_tokens) and tokens
    assert [count - subject_tokens for count in tokens] == plain_tokens
    assert load_image(conditioned.image).size == load_image(plain.image).size
    assert load_image(conditioned.image).tobytes() != load_image(plain.image).tobytes()


def test_the_style_reference_loads_the_image_encoder_once(reference):
    from tasks.upscale import upscale_image, uso_subject

    pipelines.clear()
    edit = put_image(load_image(reference).resize((48, 64)), "front.png")
    subject = uso_subject.fn(reference, TINY.upscale.uso_subject_size)
    config = TINY.upscale.model_copy(update={"uso_style": True})
    subject_only = upscale_image.fn(edit, TINY.upscale, "photo of Ada", 0, TINY, None, subject)
    with_style = upscale_image.fn(edit, config, "photo of Ada", 0, TINY, None, subject)
    upscale_image.fn(edit, config, "photo of Ada", 1, TINY, None, subject)
    assert pipelines.load_counts["refiner-uso-encoders"] == 1
    assert load_image(with_style.image).tobytes() != load_image(subject_only.image).tobytes()
    pipelines.release("refiner")
    assert not any(key[0] == "refiner" for key in pipelines._loaded)


def test_uso_on_a_flux2_klein_refiner_is_refused_naming_both(likeness_env):
    refiner = TINY.models["refiner"].model_copy(update={"source": "tiny:refiner-klein"})
    klein = TINY.model_copy(update={"models": {**TINY.models, "refiner": refiner}, "name": "tiny-klein"})
    with pytest.raises(ValueError, match="USO is a LoRA for FLUX.1 transformers, not for Flux2KleinPipeline's"):
        pipelines.get_pipeline("refiner", klein)

"""The process-wide pipeline cache: each model is loaded once per process and shared by every task.

GPU work in one process is serialised through `gpu_lock`; loads are serialised too, so two threads
asking for the same role wait for one load instead of doing two.
"""

from __future__ import annotations

import gc
import logging
import os
import sys
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from likeness.config import ModelProfile, Offload, Role
from likeness.heap import freeze_what_lives_now
from likeness.models.profiles import device_for, model_path
from likeness.settings import Settings, get_settings

log = logging.getLogger(__name__)

gpu_lock = threading.RLock()
load_counts: Counter[str] = Counter()
_loaded: dict[tuple[Any, ...], Any] = {}
_loading = threading.Lock()
_frozen = False


def _torch_dtype(profile: ModelProfile) -> Any:
    import torch

    return getattr(torch, profile.dtype)


def _place(pipe: Any, profile: ModelProfile, role: Role, device: str) -> Any:
    """Put a diffusers pipeline on `device`, or let it move one component (or layer) there at a time, as `role`'s
    memory mode says; with the profile's VAE memory modes on."""
    vae = getattr(pipe, "vae", None)
    if profile.vae_tiling and vae is not None:
        vae.enable_tiling()
    if profile.vae_slicing and vae is not None:
        vae.enable_slicing()
    weights = profile.models[role].weights
    if weights == "fp8":
        _store_denoisers_in_fp8(pipe, profile)
    elif weights == "fp8-matmul":
        _multiply_denoisers_in_fp8(pipe, role, device)
    mode = memory_mode(role, profile, device)
    if mode == "model":
        pipe.enable_model_cpu_offload(device=device)
        return pipe
    if mode == "sequential":
        pipe.enable_sequential_cpu_offload(device=device)
        return pipe
    return pipe.to(device)


# A pipeline's denoisers: what runs at every step and holds most of its weights.
DENOISERS = ("transformer", "transformer_2")


def _store_denoisers_in_fp8(pipe: Any, profile: ModelProfile) -> None:
    """Keep the denoisers' weights in float8 e4m3, each layer cast to the profile's dtype while it computes."""
    from likeness.models.fp8 import store_in_fp8

    for name in DENOISERS:
        denoiser = getattr(pipe, name, None)
        if denoiser is not None:
            store_in_fp8(denoiser, _torch_dtype(profile))


def _multiply_denoisers_in_fp8(pipe: Any, role: Role, device: str) -> None:
    """The linear layers of the denoisers' blocks multiplied in FP8, the blocks compiled (likeness.models.fp8)."""
    from likeness.models.fp8 import use_fp8_matmuls

    for name in DENOISERS:
        denoiser = getattr(pipe, name, None)
        if denoiser is None:
            continue
        replaced, kept = use_fp8_matmuls(denoiser, device)
        denoiser.compile_repeated_blocks()
        log.info(
            "%s: %d linear layers of the %s's blocks multiply in FP8 (%d kept as they were); the blocks compile at "
            "their first call", role, replaced, name, kept,
        )  # fmt: skip


def _check_fp8_matmuls(role: Role, profile: ModelProfile, device: str) -> None:
    """ValueError before `role` loads where its fp8-matmul weights cannot run: a GPU without FP8 tensor cores, or
    sequential offload (it moves each layer's parameters in as it runs; compiled FP8 blocks are not tested with it)."""
    from likeness.models.fp8 import check_fp8_matmuls

    if memory_mode(role, profile, device) == "sequential":
        raise ValueError(
            f"{role}: weights fp8-matmul do not run under sequential offload; this GPU is too small to hold the "
            f"{role} resident or one part at a time. Use weights fp8 here"
        )
    check_fp8_matmuls(role, device)


def memory_mode(role: Role, profile: ModelProfile, device: str) -> Offload:
    """The memory mode `role` loads in on `device`: on the CPU, resident; on a GPU, the profile's for the role, which
    a stage has resolved from `auto` for its GPU before it loads (likeness.run.memory)."""
    if device == "cpu":
        return "none"
    mode = profile.memory_mode(role)
    if mode == "auto":
        raise ValueError(
            f"{role}: memory mode 'auto' is chosen per GPU when a stage starts (likeness.run.memory.choose_memory); "
            "this stage loads it without choosing"
        )
    return mode


def _load_editor(path: Path, profile: ModelProfile, device: str) -> Any:
    from likeness.models.profiles import lora_path
    from likeness.models.qwen_edit import load_editor

    spec = profile.models["editor"]
    lora = lora_path("editor", profile, get_settings())
    scale = spec.lora.scale if spec.lora else 1.0
    pipe = load_editor(path, _torch_dtype(profile), lora=lora, lora_scale=scale, scheduler=spec.scheduler)
    return _place(pipe, profile, "editor", device)


# The img2img pipeline for each text-to-image pipeline a refiner repo declares. FLUX.2 klein's own pipeline takes
# the image only as a reference; its inpainting pipeline has a strength, and an all-white mask makes it img2img.
_REFINER_PIPELINES = {
    "FluxPipeline": "FluxImg2ImgPipeline",
    "FluxImg2ImgPipeline": "FluxImg2ImgPipeline",
    "Flux2KleinPipeline": "Flux2KleinInpaintPipeline",
    "Flux2KleinInpaintPipeline": "Flux2KleinInpaintPipeline",
}


def _load_refiner(path: Path, profile: ModelProfile, device: str) -> Any:
    import json

    import diffusers

    declared = json.loads((path / "model_index.json").read_text())["_class_name"]
    if declared not in _REFINER_PIPELINES:
        raise ValueError(f"refiner {path}: {declared} is not supported; use a FLUX.1 or FLUX.2 klein repo")
    pipeline = getattr(diffusers, _REFINER_PIPELINES[declared])
    pipe = pipeline.from_pretrained(path, dtype=_torch_dtype(profile))
    if profile.models["refiner"].uso:
        if not isinstance(pipe, diffusers.FluxImg2ImgPipeline):
            raise ValueError(f"refiner {path}: USO is a LoRA for FLUX.1 transformers, not for {declared}'s")
        from likeness.models.profiles import uso_paths
        from likeness.models.uso import load_uso_lora

        # Fused before any fp8 storage or offload: a refine step then costs a base step.
        load_uso_lora(pipe, uso_paths(profile, get_settings()).lora)
    return _place(pipe, profile, "refiner", device)


def _load_upscaler(path: Path, profile: ModelProfile, device: str) -> Any:
    from likeness.models.spandrel_compat import import_spandrel

    spandrel = import_spandrel()
    descriptor = spandrel.ModelLoader(device=device).load_from_file(path)
    if not isinstance(descriptor, spandrel.ImageModelDescriptor):
        raise TypeError(f"{path} is not an image-to-image model spandrel can run")
    # Half precision halves the feature maps at 4x, where ESRGAN's memory goes; not every architecture takes it.
    if {"bfloat16": descriptor.supports_bfloat16, "float16": descriptor.supports_half}.get(profile.dtype):
        descriptor.to(_torch_dtype(profile))
    return descriptor.eval()


def _load_captioner(path: Path, profile: ModelProfile, device: str) -> Any:
    """(processor, model) of a Qwen3-VL repo, or of a LLaVA one such as JoyCaption, told apart by its config."""
    from transformers import AutoConfig, AutoProcessor, LlavaForConditionalGeneration, Qwen3VLForConditionalGeneration

    from likeness.models.qwen_vl import load_qwen3_vl_processor

    model_type = AutoConfig.from_pretrained(path).model_type
    if model_type == "qwen3_vl":
        processor, model_class = load_qwen3_vl_processor(path), Qwen3VLForConditionalGeneration
    elif model_type == "llava":
        processor, model_class = AutoProcessor.from_pretrained(path), LlavaForConditionalGeneration
    else:
        raise ValueError(f"captioner {path}: model_type {model_type!r} is not supported; use a qwen3_vl or llava repo")
    model = model_class.from_pretrained(path, dtype=_torch_dtype(profile)).to(device).eval()
    return processor, model


def _load_animator(path: Path, profile: ModelProfile, device: str) -> Any:
    from diffusers import WanImageToVideoPipeline

    pipe = WanImageToVideoPipeline.from_pretrained(path, dtype=_torch_dtype(profile))
    return _place(pipe, profile, "animator", device)


def _load_video(path: Path, profile: ModelProfile, device: str) -> Any:
    from diffusers import WanPipeline

    return _place(WanPipeline.from_pretrained(path, dtype=_torch_dtype(profile)), profile, "video", device)


LOADERS: dict[Role, Callable[[Path, ModelProfile, str], Any]] = {
    "editor": _load_editor,
    "refiner": _load_refiner,
    "upscaler": _load_upscaler,
    "captioner": _load_captioner,
    "video": _load_video,
    "animator": _load_animator,
}


def _freeze_the_model_libraries() -> None:
    """Import what every loader uses and freeze the heap, before the first model of the process loads (and never
    again): `release`'s full collections then walk the models and the run's own objects, not the libraries
    (likeness.heap)."""
    global _frozen
    if _frozen:
        return
    import diffusers.models  # noqa: F401
    import peft  # noqa: F401
    import transformers.modeling_utils  # noqa: F401

    freeze_what_lives_now()
    _frozen = True


def get_pipeline(role: Role, profile: ModelProfile, settings: Settings | None = None) -> Any:
    """The loaded model for `role` under `profile`, loading it on first use in this process."""
    settings = settings or get_settings()
    spec = profile.models[role]
    # Precision, memory modes and a fused USO LoRA are set when a model loads: a profile with others gets a load of
    # its own.
    modes = (profile.memory_mode(role), profile.vae_tiling, profile.vae_slicing)
    key = (role, spec.source, spec.weights, profile.dtype, *modes, spec.uso is not None)
    with _loading:
        if key not in _loaded:
            if os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS"):
                # diffusers has its own switch for its loading bars and ignores the hub's variable; transformers
                # reads it once, when first imported, which a command may do before it sets it.
                from diffusers.utils import logging as diffusers_logging
                from transformers.utils import logging as transformers_logging

                diffusers_logging.disable_progress_bar()
                transformers_logging.disable_progress_bar()
            _freeze_the_model_libraries()
            device = device_for(profile, settings)
            if spec.weights == "fp8-matmul":
                _check_fp8_matmuls(role, profile, device)
            path = model_path(role, profile, settings)
            log.info("loading %s from %s on %s", role, spec.source, device)
            model = LOADERS[role](path, profile, device)
            if hasattr(model, "set_progress_bar_config"):
                # Stage progress is reported per image and step; per-denoise-step bars are noise.
                model.set_progress_bar_config(disable=True)
            _loaded[key] = model
            load_counts[role] += 1
        return _loaded[key]


def get_uso_encoders(profile: ModelProfile, settings: Settings | None = None) -> Any:
    """The refiner's USO style encoders (SigLIP and the projector), loaded on first use; released with the refiner."""
    from likeness.models.profiles import uso_paths
    from likeness.models.uso import load_uso_encoders

    settings = settings or get_settings()
    uso = profile.models["refiner"].uso
    if uso is None:
        raise ValueError(f"profile {profile.name!r}: its refiner names no USO files")
    key = ("refiner", uso.source, uso.image_encoder, profile.dtype, "uso-encoders", False, False, True)
    with _loading:
        if key not in _loaded:
            _freeze_the_model_libraries()
            paths = uso_paths(profile, settings)
            if paths.projector is None or paths.image_encoder is None:
                raise ValueError(f"profile {profile.name!r}: a USO style reference needs a projector and an encoder")
            device = device_for(profile, settings)
            log.info("loading the refiner's USO style encoders from %s and %s", uso.source, uso.image_encoder)
            _loaded[key] = load_uso_encoders(paths.projector, paths.image_encoder, _torch_dtype(profile), device)
            load_counts["refiner-uso-encoders"] += 1
        return _loaded[key]


def release(*roles: Role) -> None:
    """Forget the loaded models of `roles` and return their memory, when the flow is done with them."""
    with _loading:
        released = [key for key in _loaded if key[0] in roles]
        for key in released:
            del _loaded[key]
    if not released:
        return  # a full collection walks every model and object of the run (likeness.heap)
    gc.collect()
    if "torch" in sys.modules:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def clear() -> None:
    """Forget every loaded model (tests; a worker between unrelated jobs)."""
    with _loading:
        _loaded.clear()
        load_counts.clear()

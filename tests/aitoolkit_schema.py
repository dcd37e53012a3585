"""The job config AI Toolkit's LoRA trainer reads, written down by hand, and a checker that names what it would not.

Read from github.com/ostris/ai-toolkit at commit 27a03a91f23eb1b757d5ec2e80ee3e129cfcc350 (2026-08-21):

- toolkit/config_modules.py: the `kwargs.get(...)` keys of SaveConfig, LoggingConfig, SampleConfig, NetworkConfig,
  TrainConfig, EMAConfig, ModelConfig and DatasetConfig;
- jobs/BaseJob.py, jobs/ExtensionJob.py, toolkit/job.py, toolkit/config.py: the top level and `config`;
- jobs/process/BaseProcess.py, BaseTrainProcess.py, BaseSDTrainProcess.py, extensions_built_in/sd_trainer/: the
  process keys (`get_conf`) and the trainer process types (extension uids);
- the `arch = "..."` of every model class AI Toolkit registers (toolkit/util/get_model.py BUILT_IN_MODELS,
  extensions_built_in/*/__init__.py AI_TOOLKIT_MODELS) and the legacy Stable Diffusion archs in ModelConfig; an arch
  that matches no class silently loads as Stable Diffusion, so an unknown one is worth refusing here;
- toolkit/util/quantize.py and its backends (uintx, convrot, nvfp4, orbit, orbit_vq), optimum.quanto: the qtypes.

Only the standard library and PyYAML: a fake AI Toolkit pod imports this to refuse a bad YAML.

    problems = check_aitoolkit_config(yaml.safe_load(text))
"""

from __future__ import annotations

from typing import Any

AITOOLKIT_COMMIT = "27a03a91f23eb1b757d5ec2e80ee3e129cfcc350"

TOP_KEYS = frozenset({"job", "config", "meta"})
# BaseJob reads name and process; ExtensionJob reads device.
CONFIG_KEYS = frozenset({"name", "process", "device"})
# The extensions whose process is BaseSDTrainProcess (the examples use sd_trainer, the UI diffusion_trainer).
TRAINER_TYPES = frozenset({"sd_trainer", "ui_trainer", "diffusion_trainer"})
# `device` is in every example though the trainer takes its device from accelerate; sqlite_db_path: UI trainers.
PROCESS_KEYS = frozenset(
    {
        "type", "name", "device", "performance_log_every", "training_seed", "training_folder", "log_dir",
        "network", "train", "model", "save", "sample", "first_sample", "logging", "trigger_word", "guidance",
        "datasets", "embedding", "decorator", "adapter", "do_lorm", "lorm_extract_mode", "lorm_extract_mode_param",
        "torch_profiler", "sqlite_db_path",
    }
)  # fmt: skip
# What a LoRA run needs: without network it is a full fine-tune; without training_folder there is nowhere to save.
REQUIRED_PROCESS_KEYS = ("training_folder", "network", "datasets", "train", "model")

SAVE_KEYS = frozenset(
    {"save_every", "dtype", "max_step_saves_to_keep", "save_format", "push_to_hub", "hf_repo_id", "hf_private"}
)
LOGGING_KEYS = frozenset({"log_every", "verbose", "use_wandb", "use_ui_logger", "project_name", "run_name"})
SAMPLE_KEYS = frozenset(
    {
        "sampler", "sample_every", "sample_start_step", "width", "height", "neg", "seed", "walk_seed",
        "guidance_scale", "sample_steps", "network_multiplier", "guidance_rescale", "format",
        "adapter_conditioning_scale", "refiner_start_at", "extra_values", "num_frames", "fps", "prompts", "samples",
        "do_cfg_norm",
    }
)  # fmt: skip
NETWORK_KEYS = frozenset(
    {
        "type", "rank", "linear", "conv", "alpha", "linear_alpha", "conv_alpha", "dropout", "network_kwargs", "lorm",
        "transformer_only", "lokr_full_rank", "lokr_factor", "old_lokr_format", "split_multistage_loras",
        "layer_offloading", "pretrained_lora_path", "all_layers",
    }
)  # fmt: skip
NETWORK_TYPES = frozenset({"lora", "locon", "lorm", "lokr"})
EMA_KEYS = frozenset({"use_ema", "ema_decay", "use_feedback", "param_multiplier"})
TRAIN_KEYS = frozenset(
    {
        "adapter_assist_name_or_path", "adapter_assist_type", "adapter_lr", "adaptive_scaling_factor",
        "attention_backend", "audio_loss_multiplier", "batch_noise_correction_scale", "batch_size",
        "blank_prompt_preservation", "blank_prompt_preservation_multiplier", "blended_blur_noise",
        "bypass_guidance_embedding", "cache_text_embeddings", "cfg_rescale", "cfg_scale", "content_or_style",
        "correct_pred_norm", "correct_pred_norm_multiplier", "diff_output_preservation",
        "diff_output_preservation_class", "diff_output_preservation_multiplier", "differential_guidance_scale",
        "diffusion_feature_extractor_path", "diffusion_feature_extractor_weight", "disable_sampling",
        "do_batch_noise_correction", "do_blank_stabilization", "do_cfg", "do_differential_guidance", "do_fft_loss",
        "do_fft_velocity_equiv_weight", "do_guidance_loss", "do_guidance_loss_cfg_zero", "do_paramiter_swapping",
        "do_prior_divergence", "do_random_cfg", "do_signal_amplification", "do_signal_correction_noise", "dtype",
        "dynamic_noise_offset", "ema_config", "embedding_lr", "force_consistent_noise", "force_first_sample",
        "free_u", "gradient_accumulation", "gradient_accumulation_steps", "gradient_checkpointing",
        "guidance_loss_schedule", "guidance_loss_target", "img_multiplier", "inverted_mask_prior",
        "inverted_mask_prior_multiplier", "latent_feature_extractor_path", "latent_feature_loss_weight",
        "latent_multiplier", "learnable_snr_gos", "linear_timesteps", "linear_timesteps2", "loss_target",
        "loss_type", "lr", "lr_scheduler", "lr_scheduler_params", "match_adapter_assist", "match_adapter_chance",
        "match_noise_norm", "max_cfg_scale", "max_denoising_steps", "max_grad_norm", "max_loss", "max_loss_debug",
        "max_negative_prompts", "merge_network_on_save", "merge_network_on_save_strength", "min_denoising_steps",
        "min_snr_gamma", "negative_prompt", "next_sample_timesteps", "noise_multiplier", "noise_offset",
        "noise_scheduler", "noisy_latent_multiplier", "num_train_timesteps", "optimal_noise_pairing_samples",
        "optimizer", "optimizer_params", "paramiter_swapping_factor", "pred_scaler", "prompt_dropout_prob",
        "prompt_saturation_chance", "random_noise_multiplier", "random_noise_shift", "refiner_lr", "reg_weight",
        "sdp", "short_and_long_captions", "short_and_long_captions_encoder_split", "show_turbo_outputs",
        "signal_amplification_strength", "signal_correction_noise_scale", "single_item_batching",
        "skip_first_sample", "snr_gamma", "standardize_images", "standardize_latents", "start_step", "steps",
        "switch_boundary_every", "t0_loss_target", "t0_velocity_equiv_weight", "target_noise_multiplier",
        "target_norm_std", "target_norm_std_value", "text_encoder_lr", "timestep_type", "train_refiner",
        "train_text_encoder", "train_turbo", "train_unet", "unconditional_prompt", "unet_lr", "unload_text_encoder",
        "validation_config", "weight_jitter", "xformers",
    }
)  # fmt: skip
MODEL_KEYS = frozenset(
    {
        "accuracy_recovery_adapter", "arch", "assistant_lora_path", "attn_masking", "auto_memory", "block_compile",
        "cache_size_limit", "compile", "compile_dynamic", "compile_fullgraph", "compile_mode", "dtype",
        "experimental_xl", "extras_name_or_path", "ignore_if_contains", "in_context", "inference_lora_path",
        "is_auraflow", "is_flux", "is_lumina2", "is_pixart", "is_pixart_sigma", "is_ssd", "is_v2", "is_v3",
        "is_v_pred", "is_vega", "is_xl", "latent_space_version", "layer_offloading",
        "layer_offloading_text_encoder_percent", "layer_offloading_transformer_percent", "lora_path", "low_vram",
        "model_kwargs", "model_paths", "name_or_path", "only_if_contains", "qtype", "qtype_te", "quantize",
        "quantize_kwargs", "quantize_te", "refiner_name_or_path", "refiner_start_at",
        "split_model_other_module_param_count_scale", "split_model_over_gpus", "te_device", "te_dtype",
        "te_name_or_path", "text_encoder_bits", "unconditional_lora_path", "unet_path", "unet_sample_size",
        "use_flux_cfg", "use_text_encoder_1", "use_text_encoder_2", "vae_device", "vae_dtype", "vae_path",
    }
)  # fmt: skip
# `poi` is left out: DatasetConfig raises on it (deprecated).
DATASET_KEYS = frozenset(
    {
        "alpha_mask", "audio_normalize", "audio_preserve_pitch", "augmentations", "augments", "auto_frame_count",
        "batch_size", "bucket_tolerance", "buckets", "cache_clip_vision_to_disk", "cache_latents",
        "cache_latents_num_workers", "cache_latents_to_disk", "cache_tensors_to_disk", "cache_text_embeddings",
        "caption_dropout_rate", "caption_ext", "caption_type", "clip_image_augmentations",
        "clip_image_from_same_folder", "clip_image_path", "clip_image_shuffle_augmentations",
        "control_from_same_folder", "control_path", "control_path_1", "control_path_2", "control_path_3",
        "control_transparent_color", "controls", "dataset_path", "debug", "default_caption",
        "diff_output_preservation", "diff_output_preservation_class", "do_audio", "do_i2v", "extra_values",
        "fast_image_size", "flip_x", "flip_y", "folder_path", "fps", "full_size_control_images", "guidance_type",
        "inpaint_path", "invert_mask", "is_reg", "keep_tokens", "load_image_when_caching_latents",
        "loss_multiplier", "mask_min_value", "mask_path", "network_weight", "num_controls_from_same_folder",
        "num_frames", "num_repeats", "num_workers", "prefetch_factor", "prior_reg", "random_crop", "random_scale",
        "random_triggers", "random_triggers_max", "replacements", "replay_transforms", "resolution", "scale",
        "shrink_video_to_frames", "shuffle_augmentations", "shuffle_tokens", "square_crop", "standardize_images",
        "token_dropout_rate", "trigger_word", "trim_auto_frame_count_tail", "type", "unconditional_path",
        "use_short_captions",
    }
)  # fmt: skip
SECTION_KEYS: dict[str, frozenset[str]] = {
    "network": NETWORK_KEYS,
    "save": SAVE_KEYS,
    "train": TRAIN_KEYS,
    "model": MODEL_KEYS,
    "sample": SAMPLE_KEYS,
    "first_sample": SAMPLE_KEYS,
    "logging": LOGGING_KEYS,
}

# Model classes' `arch` (get_model_class matches the part before a `:` tag, e.g. `qwen_image:2512`).
MODEL_CLASS_ARCHES = frozenset(
    {
        "wan21", "wan21_i2v", "cogview4",
        "ace_step_15", "ace_step_15_xl", "anima", "boogu_image", "boogu_image_edit", "chroma", "chroma_radiance",
        "ernie_image", "f-lite", "flex2", "flux2", "flux2_klein_4b", "flux2_klein_9b", "flux_kontext", "hidream",
        "hidream_e1", "hidream_o1", "ideogram4", "krea2", "ltx2", "ltx2.3", "ltx2.5", "mageflow", "mageflow_edit",
        "minimax_h3", "minimax_h3_ref2va", "nucleus_image", "omnigen2", "prx_pixel", "qwen_image",
        "qwen_image_edit", "qwen_image_edit_plus", "wan22_14b", "wan22_14b_i2v", "wan22_5b", "zeta_chroma",
        "zimage", "zimage_l2p",
    }
)  # fmt: skip
# ModelConfig's archs that load through the legacy StableDiffusion class (flex1 is renamed flux).
LEGACY_ARCHES = frozenset(
    {"sd1", "sd2", "sd3", "sdxl", "pixart", "pixart_sigma", "auraflow", "flux", "flex1", "lumina2", "vega", "ssd"}
)
ARCHES = MODEL_CLASS_ARCHES | LEGACY_ARCHES
# The older spelling of a legacy arch, which ModelConfig turns into one.
LEGACY_FLAGS = (
    "is_v2",
    "is_v3",
    "is_xl",
    "is_pixart",
    "is_pixart_sigma",
    "is_auraflow",
    "is_flux",
    "is_lumina2",
    "is_vega",
    "is_ssd",
)
# model.model_kwargs the Wan classes read (Wan2214bModel.__init__, Wan21's vae tiling).
WAN_MODEL_KWARGS: dict[str, frozenset[str]] = {
    "wan21": frozenset({"vae_tiling"}),
    "wan22_5b": frozenset({"vae_tiling"}),
    "wan22_14b": frozenset({"train_high_noise", "train_low_noise", "vae_tiling"}),
}
# The part of qtype / qtype_te before an `|accuracy-recovery-adapter`: optimum.quanto's, torchao's and AI Toolkit's
# own backends.
QTYPES = frozenset(
    {"qint2", "qint4", "qint8", "qfloat8", "qfloat8_e4m3fn", "qfloat8_e4m3fnuz", "qfloat8_e5m2", "int8", "float8"}
    | {f"uint{bits}" for bits in range(2, 9)}
    | {"convrot4", "convrot8", "convrotbitnet", "convrotcomfyw4a4"}
    | {f"convrotint{bits}" for bits in range(2, 9)}
    | {"nvfp4", "orbit2", "orbit3", "orbit4", "orbitvq2", "orbitvq3", "orbitvq4"}
)
SAVE_FORMATS = frozenset({"safetensors", "diffusers"})


def check_aitoolkit_config(config: dict) -> list[str]:
    """What AI Toolkit's trainer would reject, ignore or misread in `config`, one problem per line; [] if none."""
    if not isinstance(config, dict):
        return [f"the config is a {type(config).__name__}, not a mapping"]
    problems = _unknown("", config, TOP_KEYS)
    if config.get("job") != "extension":
        problems.append(f"job: {config.get('job')!r} is not 'extension', the job AI Toolkit's trainers run in")
    body = config.get("config")
    if not isinstance(body, dict):
        return [*problems, "config: missing or not a mapping (it holds name and process)"]
    problems += _unknown("config", body, CONFIG_KEYS)
    if not isinstance(body.get("name"), str) or not body["name"]:
        problems.append("config.name: missing; it names the output folder and every checkpoint")
    processes = body.get("process")
    if not isinstance(processes, list) or not processes:
        problems.append("config.process: missing or empty (a list of processes)")
    else:
        for index, process in enumerate(processes):
            problems += _process_problems(f"config.process[{index}]", process)
    problems += [
        f"{path}: ${{...}} is replaced from the environment when AI Toolkit reads the file"
        for path, text in _strings("", config)
        if "${" in text
    ]
    return problems


def _process_problems(path: str, process: Any) -> list[str]:
    if not isinstance(process, dict):
        return [f"{path}: not a mapping"]
    problems = []
    if process.get("type") not in TRAINER_TYPES:
        problems.append(f"{path}.type: {process.get('type')!r} is not one of {sorted(TRAINER_TYPES)}")
    problems += _unknown(path, process, PROCESS_KEYS)
    problems += [f"{path}.{key}: missing" for key in REQUIRED_PROCESS_KEYS if key not in process]
    for key, known in SECTION_KEYS.items():
        if key in process:
            if isinstance(process[key], dict):
                problems += _unknown(f"{path}.{key}", process[key], known)
            else:
                problems.append(f"{path}.{key}: not a mapping")
    sections = {key: value for key, value in process.items() if isinstance(value, dict)}
    arch = _arch(sections.get("model", {}))
    if "model" in sections:
        problems += _model_problems(f"{path}.model", sections["model"], arch)
    if "network" in sections:
        problems += _network_problems(f"{path}.network", sections["network"])
    if "train" in sections:
        problems += _train_problems(f"{path}.train", sections["train"])
    if "datasets" in process:
        problems += _datasets_problems(f"{path}.datasets", process["datasets"])
    save_format = sections.get("save", {}).get("save_format", "safetensors")
    if save_format not in SAVE_FORMATS:
        problems.append(f"{path}.save.save_format: {save_format!r} is not one of {sorted(SAVE_FORMATS)}")
    prompts = sections.get("sample", {}).get("prompts", [])
    if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
        problems.append(f"{path}.sample.prompts: not a list of strings")
    elif process.get("trigger_word") is None:
        problems += [
            f"{path}.sample.prompts[{i}]: [trigger] stays literal, as no trigger_word is set"
            for i, prompt in enumerate(prompts)
            if "[trigger]" in prompt
        ]
    return problems


def _arch(model: dict) -> str | None:
    arch = model.get("arch")
    return arch.split(":")[0] if isinstance(arch, str) else None


def _model_problems(path: str, model: dict, arch: str | None) -> list[str]:
    problems = []
    if not isinstance(model.get("name_or_path"), str) or not model["name_or_path"]:
        problems.append(f"{path}.name_or_path: missing (AI Toolkit raises)")
    if "arch" in model:
        if arch not in ARCHES:
            problems.append(f"{path}.arch: {model['arch']!r} is no model class's arch; AI Toolkit would load it as SD")
    elif not any(model.get(flag) for flag in LEGACY_FLAGS):
        problems.append(f"{path}.arch: missing; AI Toolkit would load the model as Stable Diffusion 1")
    for key in ("qtype", "qtype_te"):
        qtype = model.get(key)
        if qtype is not None and (not isinstance(qtype, str) or qtype.split("|")[0] not in QTYPES):
            problems.append(f"{path}.{key}: {qtype!r} is not a quantisation AI Toolkit has")
    kwargs = model.get("model_kwargs", {})
    if not isinstance(kwargs, dict):
        return [*problems, f"{path}.model_kwargs: not a mapping"]
    if arch in WAN_MODEL_KWARGS:
        problems += _unknown(f"{path}.model_kwargs", kwargs, WAN_MODEL_KWARGS[arch])
    if arch == "wan22_14b" and not kwargs.get("train_high_noise", True) and not kwargs.get("train_low_noise", True):
        problems.append(f"{path}.model_kwargs: trains neither expert (AI Toolkit raises)")
    return problems


def _network_problems(path: str, network: dict) -> list[str]:
    problems = []
    if network.get("type", "lora") not in NETWORK_TYPES:
        problems.append(f"{path}.type: {network['type']!r} is not one of {sorted(NETWORK_TYPES)}")
    problems += _positive_int(f"{path}.linear", network.get("linear", network.get("rank", 4)))
    return problems


def _train_problems(path: str, train: dict) -> list[str]:
    problems = _positive_int(f"{path}.steps", train.get("steps", 1000))
    ema = train.get("ema_config")
    if isinstance(ema, dict):
        problems += _unknown(f"{path}.ema_config", ema, EMA_KEYS)
    elif ema is not None:
        problems.append(f"{path}.ema_config: not a mapping")
    if train.get("cache_text_embeddings") and train.get("unload_text_encoder"):
        problems.append(f"{path}: cache_text_embeddings with unload_text_encoder (the examples say one, not both)")
    return problems


def _datasets_problems(path: str, datasets: Any) -> list[str]:
    if not isinstance(datasets, list) or not datasets:
        return [f"{path}: not a non-empty list"]
    problems = []
    for index, dataset in enumerate(datasets):
        where = f"{path}[{index}]"
        if not isinstance(dataset, dict):
            problems.append(f"{where}: not a mapping")
            continue
        problems += _unknown(where, dataset, DATASET_KEYS)
        if not dataset.get("folder_path") and not dataset.get("dataset_path"):
            problems.append(f"{where}.folder_path: missing")
        resolution = dataset.get("resolution", 512)
        for size in resolution if isinstance(resolution, list) else [resolution]:
            problems += _positive_int(f"{where}.resolution", size)
    return problems


def _unknown(path: str, section: dict, known: frozenset[str]) -> list[str]:
    prefix = f"{path}." if path else ""
    return [f"{prefix}{key}: unknown key; AI Toolkit does not read it" for key in section if key not in known]


def _positive_int(path: str, value: Any) -> list[str]:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        return [f"{path}: {value!r} is not a positive integer"]
    return []


def _strings(path: str, value: Any) -> list[tuple[str, str]]:
    """(path, text) of every string in a nested config."""
    if isinstance(value, dict):
        prefix = f"{path}." if path else ""
        return [found for key, item in value.items() for found in _strings(f"{prefix}{key}", item)]
    if isinstance(value, list):
        return [found for i, item in enumerate(value) for found in _strings(f"{path}[{i}]", item)]
    return [(path, value)] if isinstance(value, str) else []

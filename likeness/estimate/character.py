"""What one character costs under a profile and its settings, stage by stage, before any GPU is rented.

Each stage's evaluations come from the run's settings (shots in the catalogue, steps, CFG, tiles, the identity
guard's bisection, curation's tries, frames, training steps, checkpoint samples); each evaluation's FLOPs and
activation bytes from the real-size models counted on the meta device (`likeness.estimate.roles`); seconds, memory
and dollars from the GPU model (`likeness.estimate.gpus`).

    rows = estimate_character(load_profile("production"), config, load_catalogue(), GPUS["H100"], price)

A row is what the stage is expected to cost, and at most: curation edits a refused shot again (up to
`dataset.curation.max_tries` edits), and the guard's bisection refines more steps the more start steps keep the
face. Expected: every shot kept on its first edit, and each outcome of the bisection (the lowest start step that
keeps the face, or none) as likely as any other; at most: every shot edited `max_tries` times, and every face kept
down to the lowest start step. How large a face is in a shot is an assumption, by its framing (`refines.FACE_SHARE`).

Counted: every transformer evaluation, the text encoders, the VAEs, the upscaler, the captioner and the identity
model's descriptors; then, on rows of their own, reading each stage's weights, compiling fp8-matmul models and a
training pod's start (`likeness.estimate.overheads`). Not counted: face detection (dlib's HOG, on the CPU).
"""

from __future__ import annotations

import math

from likeness.config import (
    FP8_MATMUL_ROLES,
    Backend,
    DatasetConfig,
    ModelProfile,
    Offload,
    RenderConfig,
    Role,
    RunConfig,
)
from likeness.dataset.catalogue import Catalogue, Shot, shot_size
from likeness.dataset.guard import target_size
from likeness.estimate import gpus, roles
from likeness.estimate.calibration import calibrated_seconds
from likeness.estimate.counts import Measure
from likeness.estimate.gpus import GpuType, MemoryMode, Price
from likeness.estimate.overheads import compile_row, load_seconds, overhead_row, pod_start_seconds
from likeness.estimate.refines import face_share_of, guard_outcomes
from likeness.estimate.training import checkpointing_decided, training_work
from likeness.estimate.work import BF16_BYTES, Count, StageEstimate, Work, choose_mode
from likeness.media.tiling import tile_grid
from likeness.records import StageCost
from likeness.render.jobs import RenderJob, plan_renders
from likeness.render.strengths import probe_pairs

EDIT_MULTIPLE = 16  # Qwen-Image's VAE downsamples 8x and its transformer packs 2x2 patches


def estimate_character(
    profile: ModelProfile,
    config: RunConfig,
    catalogue: Catalogue,
    gpu: GpuType,
    price: Price,
    backend: Backend = "local",
    process_per_stage: bool = False,
) -> list[StageEstimate]:
    """The stages of one character (dataset, training, renders) on `gpu` at `price`, in run order, then loading
    their models and, for a pod `backend`, starting the pod; ValueError for a profile of tiny twins, whose real-size
    counts would say nothing about it. `process_per_stage`: deployment runs, where renders load the video model
    again instead of finding it loaded by local training."""
    tiny = sorted(role for role, spec in profile.models.items() if spec.source.startswith("tiny:"))
    if tiny:
        raise ValueError(
            f"profile {profile.name!r} runs tiny twins ({', '.join(tiny)}): the estimate counts real models; "
            "give a production profile (--profile production)"
        )
    shots = catalogue.shots(config.dataset.variations, garments=0, poses=0)
    dataset = config.dataset
    memory = gpu.memory_gib * 2**30 if backend == "local" else None  # a pod's GPU is picked as it starts
    train = checkpointing_decided(config.train, len(shots), profile, memory)
    training = training_work(train, len(shots), profile, backend)
    stages = [
        (edit_work(dataset, shots, profile), profile.memory_mode("editor")),
        (upscale_work(dataset, shots, profile), profile.memory_mode("refiner")),
        (caption_work(dataset, shots), "none"),
        (training, profile.memory_mode("video")),
        (rendering_work(config.render, profile), profile.memory_mode("video")),
    ]
    if config.render.probe.enabled and config.dataset.curation.identity:
        stages.append((probe_work(config.render, profile), profile.memory_mode("video")))
    rows = [_on_gpu(work, gpu, price, mode) for work, mode in stages]
    loads = {work.stage: (work, row.memory_mode) for (work, _), row in zip(stages, rows, strict=True)}
    loads.pop("strength probe", None)  # it renders with the video model training or the renders loaded
    on_pod = backend != "local"
    if on_pod:
        del loads["training"]  # a pod reads the base model it trains on itself, after downloading it: its start
    elif not process_per_stage and _reused(loads["training"], loads["renders"]) and not _fp8(profile, "video"):
        del loads["renders"]  # in one process renders find the video model training loaded, in the same mode
    loading = [
        load_seconds(sum(w.parameters.values()) * BF16_BYTES, sum(w.weight_bytes().values()), mode == "none", gpu)
        for w, mode in loads.values()
    ]
    rows.append(overhead_row("model loading", sum(loading), price))
    compiled = [role for role in FP8_MATMUL_ROLES if profile.models[role].weights == "fp8-matmul"]
    if compiled:
        rows.append(compile_row(len(compiled), price))  # each once, in the dataset stage that runs them
    if on_pod:
        pod_start = pod_start_seconds(sum(training.weight_bytes().values()))
        rows.append(overhead_row("pod start", pod_start, price))
    return rows


def _reused(trained: tuple[Work, MemoryMode | None], rendered: tuple[Work, MemoryMode | None]) -> bool:
    """Whether renders run the very model training loaded: the same weights (a base other than the video model's,
    as the seed's Wan 2.1, is another model), held the same way."""
    return sum(trained[0].parameters.values()) == sum(rendered[0].parameters.values()) and trained[1] == rendered[1]


def _fp8(profile: ModelProfile, role: Role) -> bool:
    """Whether `role`'s denoisers hold a byte a weight (stored in fp8, or multiplied in FP8)."""
    return profile.models[role].weights in ("fp8", "fp8-matmul")


def _fp8_matmul_flops(profile: ModelProfile, role: Role, evaluation: Measure) -> int:
    """The FLOPs of one evaluation of `role`'s denoiser that run at the FP8 rate: all but its attention's where its
    weights are fp8-matmul (the linear layers of its blocks, compiled, about all of the rest), else none."""
    return evaluation.flops - evaluation.attention_flops if profile.models[role].weights == "fp8-matmul" else 0


def edit_work(dataset: DatasetConfig, shots: list[Shot], profile: ModelProfile) -> Work:
    """The editor's work on `shots`: each edit's passes, prompt, conditions, decode and identity check (its
    transformer stored as the profile's editor says)."""
    edit = dataset.edit
    fp8_parts = _denoisers(_fp8(profile, "editor"), "transformer")
    work = Work("dataset: edit", calibrated_part="editor.transformer", fp8_parts=fp8_parts)
    parts = {"transformer": "editor.transformer", "text_encoder": "editor.text_encoder", "vae": "editor.vae_decode"}
    work.parameters = {part: roles.parameter_count(role_part) for part, role_part in parts.items()}
    cfg = 2 if edit.true_cfg_scale > 1 else 1
    for shot in shots:
        width, height = shot_size(shot.aspect, edit.size, EDIT_MULTIPLE)
        conditions = 1 + (shot.needs is not None)
        prompt = {
            "conditions": conditions,
            "vl_condition_area": edit.vl_condition_area,
            "prompt_tokens": roles.EDIT_PROMPT_TOKENS,
        }
        transformer = roles.evaluation(
            "editor.transformer", width=width, height=height, condition_area=edit.condition_area, **prompt
        )
        text = roles.evaluation("editor.text_encoder", **prompt)
        condition_width, condition_height = roles.condition_size(edit.condition_area)
        encode = roles.evaluation("editor.vae_encode", width=condition_width, height=condition_height)
        decode = roles.evaluation("editor.vae_decode", width=width, height=height)
        # Each try: the denoising passes, the prompt (twice with CFG), the conditions encoded, the output decoded,
        # and the identity model on it (its descriptor, compared with the reference's).
        one_try = edit.steps * cfg * transformer.flops + cfg * text.flops + conditions * encode.flops + decode.flops
        if dataset.curation.identity:
            one_try += roles.evaluation_flops("identity")
        work.evaluations += edit.steps * cfg
        fp8 = edit.steps * cfg * _fp8_matmul_flops(profile, "editor", transformer)
        one = Count(one_try, sum(work.weight_bytes().values()), edit.steps * cfg, fp8)
        work.add(one, one.times(dataset.curation.max_tries))
        work.working("transformer", transformer.activation_bytes)
        work.working("text_encoder", text.activation_bytes)
        work.working("vae", max(encode.activation_bytes, decode.activation_bytes))
    return work


def upscale_work(dataset: DatasetConfig, shots: list[Shot], profile: ModelProfile) -> Work:
    """The upscaler's and the refiner's work on `shots`, the guard's outcomes averaged (expected) and the worst (the
    refiner's transformer stored as the profile's refiner says)."""
    edit, upscale = dataset.edit, dataset.upscale
    fp8_parts = _denoisers(_fp8(profile, "refiner"), "transformer")
    work = Work("dataset: upscale + refine", calibrated_part="refiner.transformer", fp8_parts=fp8_parts)
    parts = {
        "transformer": "refiner.transformer",
        "text_encoder": "refiner.text_encoder",
        "text_encoder_2": "refiner.text_encoder_2",
        "vae": "refiner.vae_decode",
        "upscaler": "upscaler",
    }
    if upscale.uso_style:
        parts["image_encoder"] = "refiner.image_encoder"
    work.parameters = {part: roles.parameter_count(role_part) for part, role_part in parts.items()}
    uso_tokens = roles.uso_tokens(upscale)
    texts = [roles.evaluation("refiner.text_encoder"), roles.evaluation("refiner.text_encoder_2")]
    # USO's subject is encoded once an image (and, with uso_style, its style tokens); its LoRA is fused, no weights.
    subject = upscale.uso_subject_size
    uso = [roles.evaluation("refiner.vae_encode", width=subject, height=subject)] if upscale.uso else []
    uso += [roles.evaluation("refiner.image_encoder")] if upscale.uso_style else []
    esrgan = roles.evaluation("upscaler", width=upscale.esrgan_tile, height=upscale.esrgan_tile)
    identity = roles.evaluation_flops("identity")
    for shot in shots:
        width, height = shot_size(shot.aspect, edit.size, EDIT_MULTIPLE)
        esrgan_tiles = len(tile_grid(width, height, upscale.esrgan_tile, upscale.esrgan_overlap))
        fixed = esrgan_tiles * esrgan.flops + sum(part.flops for part in (*texts, *uso))
        # Without identity (--no-identity) there is no reference to guard the face against.
        face_share = face_share_of(shot) if dataset.curation.identity else None
        outcomes = guard_outcomes(upscale, target_size(width, height, upscale.size), face_share)
        # The prompt is encoded once an image; each refined tile is a pipeline call of its own (the transformer and
        # the VAE), at the tile's own size: the guard's region can be smaller than a tile.
        weights = work.weight_bytes()
        prompt_bytes = weights["text_encoder"] + weights["text_encoder_2"] + weights.get("image_encoder", 0)
        tile_bytes = weights["transformer"] + weights["vae"]
        counts = []
        for refine in outcomes:
            flops, fp8 = fixed + refine.face_checks * identity, 0
            for call in refine.calls:
                tile = {"width": call.width, "height": call.height}
                transformer = roles.evaluation("refiner.transformer", **tile, **uso_tokens)
                vae = [roles.evaluation("refiner.vae_encode", **tile), roles.evaluation("refiner.vae_decode", **tile)]
                flops += call.steps * transformer.flops + call.calls * sum(part.flops for part in vae)
                fp8 += call.steps * _fp8_matmul_flops(profile, "refiner", transformer)
                work.working("transformer", transformer.activation_bytes)
                work.working("vae", max(part.activation_bytes for part in vae))
            counts.append(Count(flops, prompt_bytes + refine.tiles * tile_bytes, refine.tile_steps, fp8))
        mean = Count(*(sum(values) / len(counts) for values in zip(*counts, strict=True)))
        work.add(mean, max(counts))
        work.evaluations += sum(refine.tile_steps for refine in outcomes) / len(outcomes)
    work.working("text_encoder", texts[0].activation_bytes)
    work.working("text_encoder_2", texts[1].activation_bytes)
    work.working("upscaler", esrgan.activation_bytes)
    if upscale.uso_style:
        work.working("image_encoder", uso[-1].activation_bytes)
    return work


def caption_work(dataset: DatasetConfig, shots: list[Shot]) -> Work:
    """The captioner's work: one caption a shot."""
    work = Work("dataset: caption", parameters={"captioner": roles.parameter_count("captioner")})
    for shot in shots:
        width, height = target_size(*shot_size(shot.aspect, dataset.edit.size, EDIT_MULTIPLE), dataset.upscale.size)
        caption = roles.evaluation(
            "captioner",
            width=width,
            height=height,
            prompt_tokens=roles.CAPTION_PROMPT_TOKENS,
            new_tokens=dataset.caption.max_new_tokens,
        )
        work.evaluations += 1
        # Each token generated is an evaluation of the language model; it stays on the GPU between captions (a
        # transformers model, not an offloaded pipeline).
        work.add(Count(caption.flops, 0, dataset.caption.max_new_tokens))
        work.working("captioner", caption.activation_bytes)
    return work


def _denoisers(fp8: bool, *parts: str) -> frozenset[str]:
    """The parts stored in fp8: the denoisers, where the role's weights are fp8."""
    return frozenset(parts if fp8 else ())


def probe_work(render: RenderConfig, profile: ModelProfile) -> Work:
    """The strength probe's stills: an image render at each pair of strengths and seed, scored (after the best
    checkpoint, in the process that has the video model loaded: no load of its own)."""
    probe = render.probe
    pairs = probe_pairs(probe, bool(profile.models["video"].speed_loras))
    still = RenderJob(kind="image", prompt=probe.prompt, seed=0, config=render)
    work = rendering_work(render, profile, [still] * (len(pairs) * probe.seeds))
    work.stage = "strength probe"
    return work


def rendering_work(render: RenderConfig, profile: ModelProfile, jobs: list[RenderJob] | None = None) -> Work:
    """The renders a character gets (`jobs`, or those `render` plans), each denoised, decoded and scored."""
    if jobs is None:
        jobs = plan_renders(render, "character", None, profile.limits.render, beyond_limits=True)
    cfg = 2 if render.guidance_scale > 1 else 1
    # The A14B's two experts share the steps (one resident at a time under model offload); the TI2V-5B is one model.
    five_b = "TI2V-5B" in profile.models["video"].source
    family = "video-5b" if five_b else "video"
    experts = ("transformer",) if five_b else ("high_noise", "low_noise")
    fp8 = _denoisers(_fp8(profile, "video"), *experts)
    work = Work("renders", calibrated_part=f"{family}.transformer", fp8_parts=fp8)
    work.parameters = {
        **dict.fromkeys(experts, roles.parameter_count(f"{family}.transformer")),
        "text_encoder": roles.parameter_count("video.text_encoder"),
        "vae": roles.parameter_count(f"{family}.vae_decode"),
    }
    text = roles.evaluation("video.text_encoder")
    work.working("text_encoder", text.activation_bytes)
    for job in jobs:
        frames = job.config.video_frames if job.kind == "video" else 1
        shape = {"frames": frames, "width": job.config.size, "height": job.config.size}
        transformer = roles.evaluation(f"{family}.transformer", **shape)
        decode = roles.evaluation(f"{family}.vae_decode", **shape)
        work.evaluations += job.config.steps * cfg
        flops = (
            job.config.steps * cfg * transformer.flops
            + cfg * text.flops
            + decode.flops
            + math.ceil(frames / 4) * roles.evaluation_flops("identity")  # the frames sampled for the score
        )
        work.add(Count(flops, sum(work.weight_bytes().values()), job.config.steps * cfg))
        for expert in experts:
            work.working(expert, transformer.activation_bytes)
        work.working("vae", decode.activation_bytes)
    return work


def _on_gpu(work: Work, gpu: GpuType, price: Price, requested: Offload) -> StageEstimate:
    """The stage on `gpu` in the memory mode a run would choose there (`choose_mode`)."""
    mode, peak, _ = choose_mode(work, gpu.memory_gib * 2**30, requested)

    def seconds(count: Count) -> tuple[float, float]:
        offload = 0.0
        if mode == "model":
            offload = gpus.transfer_seconds(count.moved_bytes, gpu)
        elif mode in ("sequential", None):
            offload = gpus.transfer_seconds(count.streams * max(work.weight_bytes().values()), gpu)
        return calibrated_seconds(count.flops, gpu, work.calibrated_part, fp8_flops=count.fp8_flops) + offload, offload

    (expected, offload_seconds), (most, _) = seconds(work.expected), seconds(work.most)
    dollars = price.usd_per_hour / 3600
    return StageEstimate(
        work.stage, round(work.evaluations), work.expected.flops, expected, peak, mode, expected * dollars,
        work.most.flops, most, most * dollars, offload_seconds,
    )  # fmt: skip


def stage_costs(rows: list[StageEstimate], gpu: GpuType) -> tuple[StageCost, ...]:
    """The estimate as the run's record keeps it."""
    return tuple(
        StageCost(
            stage=row.stage,
            gpu=gpu.name,
            evaluations=row.evaluations,
            tflop=round(row.flops / 1e12, 1),
            seconds=round(row.seconds, 1),
            peak_gib=round(row.peak_bytes / 2**30, 1),
            memory_mode=row.memory_mode,
            usd=round(row.usd, 4),
            most_seconds=round(row.most_seconds, 1),
            most_usd=round(row.most_usd, 4),
        )
        for row in rows
    )

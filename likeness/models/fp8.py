"""Denoisers in 8-bit floats, the two ways a role's `weights` can ask for:

- "fp8": the weights stored in float8 e4m3 and each layer cast to the profile's dtype as it computes (diffusers'
  layerwise casting): half the memory on any GPU, the arithmetic unchanged on rounded weights.
- "fp8-matmul": the linear layers of the denoiser's repeated blocks (nearly all of its weights and, beside
  attention, of its FLOPs) replaced by `Fp8Linear`: e4m3 weights with a scale per output row, each input scaled per
  row and rounded to e4m3 as it comes, multiplied by PyTorch's `torch.nn.functional.scaled_mm` on the FP8 tensor
  cores (compute capability 8.9 and later; on the CPU, PyTorch's own kernel, which is what the tiny profile's tests
  run). The blocks are then compiled (`compile_repeated_blocks`): run eagerly, rounding each input costs about what
  the FP8 product saves (diffusers-torchao's CogVideoX-5B on an H100: 113 s in FP8 against 112 s in bf16; compiled,
  75 s against 87 s).

    pipe = FluxImg2ImgPipeline.from_pretrained(path, dtype=torch.bfloat16)
    check_fp8_matmuls("refiner", "cuda")                  # ValueError on a GPU without FP8 tensor cores
    multiplied, kept = use_fp8_matmuls(pipe.transformer, "cuda")
    pipe.transformer.compile_repeated_blocks()

The rowwise recipe is torchao's `Float8DynamicActivationFloat8WeightConfig(granularity=PerRow())`, the FP8 setting
diffusers documents for FLUX and Wan. It is written here on PyTorch's own scaled product rather than taken from
torchao because diffusers imports torchao in every process that loads a model once it is installed (a second more
of start-up each).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

# FP8 tensor cores: Ada (8.9: L40S, RTX 4090), Hopper (9.0: H100, H200), Blackwell (10.0, 12.0: B200, RTX 5090).
FP8_CAPABILITY = (8, 9)
# scaled_mm multiplies matrices whose sides are multiples of 16; a block's linear layer that is not stays as it is.
FP8_MULTIPLE = 16
E4M3 = torch.float8_e4m3fn
E4M3_LARGEST = torch.finfo(E4M3).max
SMALLEST_SCALE = 1e-12  # a row of zeros: any scale rounds it to zeros


def store_in_fp8(denoiser: Any, compute_dtype: torch.dtype) -> None:
    """Keep `denoiser`'s weights in float8 e4m3, each layer cast to `compute_dtype` while it computes; the layers
    diffusers keeps whole (norms, embeddings, the output projection) stay as they are."""
    denoiser.enable_layerwise_casting(storage_dtype=E4M3, compute_dtype=compute_dtype)


def fp8_matmul_refusal(role: str, gpu_name: str, capability: tuple[int, int]) -> str | None:
    """Why `role`'s fp8-matmul weights cannot run on the GPU `gpu_name` of compute `capability`, or None where they
    can."""
    if capability >= FP8_CAPABILITY:
        return None
    major, minor = capability
    return (
        f"{role}: weights fp8-matmul multiply on FP8 tensor cores, which the {gpu_name} (compute capability "
        f"{major}.{minor}) has none of; they need 8.9 or later (L40S, RTX 4090, H100, H200, RTX 5090). "
        "Use weights fp8 on this GPU (stored in fp8, computed in bf16)"
    )


def check_fp8_matmuls(role: str, device: str) -> None:
    """ValueError, before `role` loads, where `device` is a GPU without FP8 tensor cores (the CPU has PyTorch's
    kernel)."""
    if not device.startswith("cuda"):
        return
    refusal = fp8_matmul_refusal(role, torch.cuda.get_device_name(device), torch.cuda.get_device_capability(device))
    if refusal:
        raise ValueError(refusal)


def rowwise_e4m3(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`matrix` in e4m3, each row scaled to use the format's whole range, and the (rows, 1) float32 scales that undo
    it."""
    wide = matrix.float()
    scale = (wide.abs().amax(dim=1, keepdim=True) / E4M3_LARGEST).clamp(min=SMALLEST_SCALE)
    return (wide / scale).clamp(-E4M3_LARGEST, E4M3_LARGEST).to(E4M3), scale


class Fp8Linear(torch.nn.Module):
    """A linear layer whose product runs in FP8: e4m3 weights with a float32 scale per output row, each input row
    scaled and rounded to e4m3 as it comes, the product accumulated and returned in the input's dtype."""

    def __init__(self, linear: torch.nn.Linear, device: str | torch.device) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        home = linear.weight.device
        weight, scale = rowwise_e4m3(linear.weight.detach().to(device))
        # Buffers, not parameters: a pipeline reads its model's dtype from its first parameter, which must stay the
        # compute dtype; `.to()` and the offload hooks move buffers alike.
        self.register_buffer("weight", weight.to(home))
        self.register_buffer("weight_scale", scale.to(home))
        self.bias = None if linear.bias is None else torch.nn.Parameter(linear.bias.detach(), requires_grad=False)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        quantized, scale = rowwise_e4m3(inputs.reshape(-1, self.in_features))
        out = F.scaled_mm(
            quantized, self.weight.t(), scale, F.ScalingType.RowWise, self.weight_scale.t(), F.ScalingType.RowWise,
            bias=self.bias, output_dtype=inputs.dtype, use_fast_accum=True,
        )  # fmt: skip
        return out.reshape(*inputs.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, float8_e4m3fn rowwise"


def use_fp8_matmuls(denoiser: Any, device: str) -> tuple[int, int]:
    """Replace the linear layers of `denoiser`'s repeated blocks by `Fp8Linear`s, each rounded on `device` (the GPU,
    where a bf16 weight rounds in a moment) and kept where its weight was. Returns how many were replaced, and how
    many stay as they were (a side not a multiple of 16)."""
    blocks = set(getattr(denoiser, "_repeated_blocks", None) or ())
    if not blocks:
        raise ValueError(f"{type(denoiser).__name__} declares no repeated blocks to multiply in FP8")
    replaced = kept = 0
    for block in [module for module in denoiser.modules() if type(module).__name__ in blocks]:
        for name, linear in list(block.named_modules()):
            if not isinstance(linear, torch.nn.Linear):
                continue
            if linear.in_features % FP8_MULTIPLE or linear.out_features % FP8_MULTIPLE:
                kept += 1
                continue
            parent_name, _, child = name.rpartition(".")
            setattr(block.get_submodule(parent_name) if parent_name else block, child, Fp8Linear(linear, device))
            replaced += 1
    return replaced, kept

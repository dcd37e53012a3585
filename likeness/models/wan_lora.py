"""Character LoRA files in the original Wan key layout: one file that diffusers and ComfyUI both load.

Our trainer adapts diffusers' `WanTransformer3DModel` with peft, whose module names (`blocks.0.attn1.to_q`) ComfyUI
has no rule for: it matches a LoRA key `diffusion_model.<name>` to each weight `diffusion_model.<name>.weight` of the
original Wan model (`blocks.0.self_attn.q`) and ignores every other key. diffusers converts the original layout back
on `load_lora_weights`. AI Toolkit writes its Wan LoRAs in this layout too.

    from pathlib import Path

    from diffusers import WanPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    from likeness.models.tiny import build_tiny_models
    from likeness.models.wan_lora import (
        LORA_TARGETS, is_complete_safetensors, lora_metadata, read_lora_metadata, save_wan_lora, to_wan_layout,
    )

    pipe = WanPipeline.from_pretrained(build_tiny_models(Path("/tmp/tiny"), roles=["video"])["video"])
    pipe.transformer.add_adapter(LoraConfig(r=4, lora_alpha=8, target_modules=LORA_TARGETS), adapter_name="ada")
    wan_state = to_wan_layout(get_peft_model_state_dict(pipe.transformer, adapter_name="ada"), alpha=8)
    pipe.transformer.delete_adapters("ada")
    path = Path("/tmp/Ada_000000500.safetensors")
    save_wan_lora(path, wan_state, lora_metadata("Ada", "tiny:video", "wan22_5b", 4, 8, 500, {"steps": 500}))
    pipe.load_lora_weights(path)  # ComfyUI's LoraLoaderModelOnly takes the same file
    assert read_lora_metadata(path)["modelspec.trigger_phrase"] == "Ada" and is_complete_safetensors(path)

Module names (diffusers -> original Wan, in every block N; the oracle is diffusers' own
`convert_wan_transformer_to_diffusers` and `_convert_non_diffusers_wan_lora_to_diffusers`):

    attn1.to_q / to_k / to_v / to_out.0  ->  self_attn.q / k / v / o
    attn2.to_q / to_k / to_v / to_out.0  ->  cross_attn.q / k / v / o
    ffn.net.0.proj / ffn.net.2           ->  ffn.0 / ffn.2

These are all the linear layers of a text-to-video Wan block, the layers musubi-tuner's Wan LoRAs adapt (its
`WanAttentionBlock` target); the embedders and the output head are left alone.

Alpha: peft scales a LoRA by alpha / rank. The file stores alpha the way both loaders read it, a scalar
`<module>.alpha` beside each module's pair (ComfyUI multiplies by alpha / rank; diffusers folds alpha / rank into the
pair on load); no `.alpha` means a scale of 1 to both, so the keys are written only when alpha != rank (as AI Toolkit,
which always trains alpha == rank, writes none).

Metadata: the keys LoRA managers and UIs read (A1111 and Forge, ComfyUI's LoRA managers): kohya's `ss_*`
(`ss_output_name`, `ss_sd_model_name`, `ss_base_model_version` in AI Toolkit's spelling, `ss_network_dim`,
`ss_network_alpha`, `ss_steps`, `ss_tag_frequency`), Stability's ModelSpec (`modelspec.*`, with the trigger in
`modelspec.trigger_phrase`), AI Toolkit's `training_info` (the step it resumes from), and our settings whole in
`likeness.settings`. No date: the same training gives a byte-identical file, which the content cache relies on.

`is_complete_safetensors` and `read_lora_metadata` read only the file's header, with the standard library: a pod
agent without torch uses them to skip a checkpoint cut off mid-write.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from likeness.files import atomic_file

if TYPE_CHECKING:
    import torch

# diffusers' WanTransformer3DModel block module -> the original Wan (and ComfyUI) name of the same layer.
_WAN_NAMES: dict[str, str] = {
    "attn1.to_q": "self_attn.q",
    "attn1.to_k": "self_attn.k",
    "attn1.to_v": "self_attn.v",
    "attn1.to_out.0": "self_attn.o",
    "attn2.to_q": "cross_attn.q",
    "attn2.to_k": "cross_attn.k",
    "attn2.to_v": "cross_attn.v",
    "attn2.to_out.0": "cross_attn.o",
    "ffn.net.0.proj": "ffn.0",
    "ffn.net.2": "ffn.2",
}
_DIFFUSERS_NAMES = {wan: diffusers for diffusers, wan in _WAN_NAMES.items()}

# peft `target_modules`: suffixes of module names in diffusers' WanTransformer3DModel.
LORA_TARGETS: list[str] = list(_WAN_NAMES)

_PEFT_KEY = re.compile(r"blocks\.(\d+)\.(.+)\.(lora_A|lora_B)\.weight")
_WAN_KEY = re.compile(r"diffusion_model\.blocks\.(\d+)\.(.+)\.(lora_A\.weight|lora_B\.weight|alpha)")

# AI Toolkit's `arch` names -> (ModelSpec architecture, reference implementation, AI Toolkit's ss_base_model_version).
_ARCHITECTURES: dict[str, tuple[str, str, str]] = {
    "wan21_14b": ("wan2.1-t2v-14b", "https://github.com/Wan-Video/Wan2.1", "wan_2.1"),
    "wan22_14b": ("wan2.2-t2v-a14b", "https://github.com/Wan-Video/Wan2.2", "wan_2.2_14b"),
    "wan22_5b": ("wan2.2-ti2v-5b", "https://github.com/Wan-Video/Wan2.2", "wan_2.2_5b"),
}

# Bits per element of each safetensors dtype.
_DTYPE_BITS: dict[str, int] = {
    "BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8, "I16": 16, "U16": 16, "F16": 16,
    "BF16": 16, "I32": 32, "U32": 32, "F32": 32, "C64": 64, "I64": 64, "U64": 64, "F64": 64, "F4": 4,
    "F6_E2M3": 6, "F6_E3M2": 6,
}  # fmt: skip
# The safetensors format's own limit on the JSON header.
_MAX_HEADER = 100_000_000


def to_wan_layout(peft_state: dict[str, torch.Tensor], alpha: float) -> dict[str, torch.Tensor]:
    """peft's LoRA state of the Wan transformer (`blocks.0.attn1.to_q.lora_A.weight`) in the original Wan layout."""
    import torch

    wan_state = {}
    for key, tensor in peft_state.items():
        match = _PEFT_KEY.fullmatch(key)
        if not match or match[2] not in _WAN_NAMES:
            raise ValueError(f"{key!r} is not a LoRA weight of a Wan block layer in {LORA_TARGETS}")
        block, module, matrix = match.groups()
        name = f"diffusion_model.blocks.{block}.{_WAN_NAMES[module]}"
        wan_state[f"{name}.{matrix}.weight"] = tensor
        # lora_A is (rank, in_features); a float32 scalar keeps an alpha like 0.3 exact where bf16 would not.
        if matrix == "lora_A" and alpha != tensor.shape[0]:
            wan_state[f"{name}.alpha"] = torch.tensor(float(alpha), dtype=torch.float32)
    return wan_state


def from_wan_layout(wan_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of `to_wan_layout`, for `set_peft_model_state_dict`; `.alpha` goes (peft's LoraConfig holds it)."""
    peft_state = {}
    for key, tensor in wan_state.items():
        match = _WAN_KEY.fullmatch(key)
        if not match or match[2] not in _DIFFUSERS_NAMES:
            raise ValueError(f"{key!r} is not a LoRA key of a Wan block layer in {list(_DIFFUSERS_NAMES)}")
        block, module, suffix = match.groups()
        if suffix != "alpha":
            peft_state[f"blocks.{block}.{_DIFFUSERS_NAMES[module]}.{suffix}"] = tensor
    return peft_state


def lora_metadata(
    trigger: str,
    base_model: str,
    arch: str,
    rank: int,
    alpha: float,
    step: int,
    settings: dict[str, Any],
    captions: Sequence[str] = (),
    expert: str | None = None,
) -> dict[str, str]:
    """The header metadata of a checkpoint: what LoRA managers show (its name, trigger, base model, rank, alpha,
    step, the tags of the `captions` it trained on). `expert`: which of an A14B's two files this is, in its name, so
    that a manager lists the two apart."""
    if arch not in _ARCHITECTURES:
        raise ValueError(f"unknown Wan architecture {arch!r}; expected one of {list(_ARCHITECTURES)}")
    architecture, implementation, base_model_version = _ARCHITECTURES[arch]
    name = f"{trigger}_{expert}" if expert else trigger
    return {
        "ss_output_name": name,
        "ss_sd_model_name": base_model,
        "ss_base_model_version": base_model_version,
        # kohya's name for a LoRA network: what managers read to tell a LoRA from a LyCORIS or a full model.
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(rank),
        "ss_network_alpha": str(float(alpha)),
        "ss_steps": str(step),
        "ss_num_train_images": str(len(captions)),
        # A1111 and trigger-word readers take tags from here: each comma-separated tag of the captions and how many
        # captions carry it, under kohya's (and AI Toolkit's) "<repeats>_<folder>" key.
        "ss_tag_frequency": json.dumps({f"1_{trigger}": tag_frequency(captions)}),
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": f"{architecture}/lora",
        "modelspec.implementation": implementation,
        "modelspec.title": name,
        "modelspec.trigger_phrase": trigger,
        "training_info": json.dumps({"step": step}),
        "likeness.settings": json.dumps(settings, sort_keys=True),
    }


def tag_frequency(captions: Sequence[str]) -> dict[str, int]:
    """How many captions carry each comma-separated tag, as kohya's trainer counts them (a tag once a caption)."""
    counts: dict[str, int] = {}
    for caption in captions:
        for tag in {part.strip() for part in caption.split(",")} - {""}:
            counts[tag] = counts.get(tag, 0) + 1
    return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))


def save_wan_lora(path: Path, wan_state: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Write one safetensors file atomically: a temp file beside `path`, renamed over it once complete."""
    from safetensors.torch import save

    bad = [key for key, value in metadata.items() if not isinstance(key, str) or not isinstance(value, str)]
    if bad:
        raise TypeError(f"safetensors metadata must map str to str; not so for {bad}")
    # diffusers would build its LoraConfig from this key and scale by alpha / rank again, on top of the `.alpha`
    # it has already folded into the weights.
    if "lora_adapter_metadata" in metadata:
        raise ValueError("a Wan-layout LoRA must not carry diffusers' lora_adapter_metadata (alpha would apply twice)")
    data = save({key: tensor.detach().contiguous() for key, tensor in wan_state.items()})
    # safetensors writes __metadata__ in hash order, a new one each call: the header is rebuilt with the metadata
    # sorted, so that the same checkpoint is the same bytes (its tensor entries are already sorted).
    size = int.from_bytes(data[:8], "little")
    header = {"__metadata__": dict(sorted({"format": "pt", **metadata}.items())), **json.loads(data[8 : 8 + size])}
    raw = json.dumps(header, ensure_ascii=False, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # as safetensors pads it, so that the tensors start 8-byte aligned
    with atomic_file(Path(path)) as file:
        file.write(len(raw).to_bytes(8, "little") + raw)
        file.write(memoryview(data)[8 + size :])


def read_lora_metadata(path: Path) -> dict[str, str]:
    """The header metadata of a safetensors file (empty if it has none); ValueError if it is not safetensors."""
    metadata = _read_header(Path(path))[1].get("__metadata__", {})
    if not isinstance(metadata, dict):
        raise ValueError(f"{path}: __metadata__ is not a JSON object")
    return metadata


def is_complete_safetensors(path: Path) -> bool:
    """True only if the header and every tensor's bytes fit the file exactly: False for a file cut off mid-write."""
    path = Path(path)
    try:
        header_size, header = _read_header(path)
    except ValueError:
        return False
    spans = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(entry, dict) or not _is_tensor_entry(entry):
            return False
        begin, end = entry["data_offsets"]
        elements = 1
        for dim in entry["shape"]:
            elements *= dim
        if (elements * _DTYPE_BITS[entry["dtype"]] + 7) // 8 != end - begin:
            return False
        spans.append((begin, end))
    # The format's rule: tensors tile the data section from its start to the end of the file, no gaps, no overlaps.
    position = 0
    for begin, end in sorted(spans):
        if begin != position:
            return False
        position = end
    return position == path.stat().st_size - 8 - header_size


def _is_tensor_entry(entry: dict[str, Any]) -> bool:
    offsets, shape = entry.get("data_offsets"), entry.get("shape")
    return (
        isinstance(entry.get("dtype"), str)
        and entry["dtype"] in _DTYPE_BITS
        and isinstance(shape, list)
        and all(_is_count(dim) for dim in shape)
        and isinstance(offsets, list)
        and len(offsets) == 2
        and all(_is_count(offset) for offset in offsets)
        and offsets[0] <= offsets[1]
    )


def _is_count(value: Any) -> bool:
    # JSON true and false arrive as bools, which are ints to Python.
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _read_header(path: Path) -> tuple[int, dict[str, Any]]:
    """The JSON header's size and content; ValueError if the file has no whole safetensors header."""
    with open(path, "rb") as file:
        prefix = file.read(8)
        if len(prefix) < 8:
            raise ValueError(f"{path}: shorter than a safetensors header")
        size = int.from_bytes(prefix, "little")
        if size > min(_MAX_HEADER, path.stat().st_size - 8):
            raise ValueError(f"{path}: header of {size} bytes does not fit the file")
        raw = file.read(size)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: header is not JSON ({exc})") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path}: header is not a JSON object")
    return size, header

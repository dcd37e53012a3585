"""Counting one call on the meta device: FLOPs, peak activation bytes, and counts kept between processes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch.utils.checkpoint import checkpoint

from likeness.estimate import counts, roles
from likeness.estimate.counting import count_flops, measure, measure_with_grad
from likeness.estimate.counts import CountFile, Measure, fingerprint

BF16 = 2


def meta(*shape: int) -> torch.Tensor:
    return torch.empty(shape, device="meta", dtype=torch.bfloat16)


def mlp(widths: tuple[int, ...]) -> torch.nn.Sequential:
    layers: list[torch.nn.Module] = []
    for inputs, outputs in zip(widths, widths[1:], strict=False):
        layers += [torch.nn.Linear(inputs, outputs), torch.nn.GELU()]
    return torch.nn.Sequential(*layers[:-1]).to("meta", torch.bfloat16)


def test_the_counter_counts_two_flops_per_multiply_add_of_each_matrix_product():
    linear, network = mlp((64, 32)), mlp((64, 128, 16))
    x = meta(4, 10, 64)
    assert count_flops(lambda: linear(x[0])) == 2 * 10 * 64 * 32
    assert count_flops(lambda: network(x)) == 2 * 40 * 64 * 128 + 2 * 40 * 128 * 16


def test_activations_are_the_most_the_calls_own_tensors_take_at_once():
    network = mlp((64, 128, 16))
    x = meta(40, 64)
    # The first layer's output and the GELU's of it are alive together (the GELU reads one, writes the other);
    # then the first goes, and the last layer's output is smaller. The input and the weights existed before.
    assert measure(lambda: network(x)) == Measure(2 * 40 * 64 * 128 + 2 * 40 * 128 * 16, 2 * 40 * 128 * BF16)
    # Views and in-place operations allocate nothing.
    assert measure(lambda: x.view(64, 40).t().mul_(2)).activation_bytes == 0
    # What the call keeps (appends to a list it outlives) is counted while it is made.
    kept: list[torch.Tensor] = []
    assert measure(lambda: kept.extend(meta(1000) for _ in range(3))).activation_bytes == 3 * 1000 * BF16


def test_attention_counts_its_output_as_a_fused_kernel_but_all_its_flops():
    heads, tokens, dim = 8, 1024, 64
    q = meta(1, heads, tokens, dim)
    measured = measure(lambda: torch.nn.functional.scaled_dot_product_attention(q, q, q))
    # Q K^T and the scores times V: 2 matrix products of tokens x tokens x dim per head.
    assert measured.flops == 2 * 2 * heads * tokens * tokens * dim
    # The output alone, no tokens x tokens scores (16 MB of them in bf16, 32 MB upcast).
    assert measured.activation_bytes == heads * tokens * dim * BF16
    # Its FLOPs are counted apart too (they stay bf16 where linear layers run in FP8); a linear layer's are not.
    assert measured.attention_flops == measured.flops
    assert measure(lambda: mlp((64, 32))(meta(10, 64))).attention_flops == 0
    assert torch.nn.functional.scaled_dot_product_attention.__name__ == "scaled_dot_product_attention"


def test_a_backward_pass_counts_what_the_forward_saved_and_checkpointing_saves_less():
    torch.manual_seed(0)
    blocks = [mlp((256, 1024, 256)) for _ in range(6)]
    for block in blocks:
        block[0].weight.requires_grad_(True)
    x = meta(512, 256)

    def step(checkpointed: bool) -> None:
        out = x
        for block in blocks:
            out = checkpoint(block, out, use_reentrant=False) if checkpointed else block(out)
        out.float().sum().backward()

    plain, saved = measure_with_grad(lambda: step(False)), measure_with_grad(lambda: step(True))
    # Checkpointing runs each block's forward again in the backward pass, as far as the backward needs: up to the
    # GELU's output, the second linear's input (PyTorch stops a recompute early once it has what was saved).
    assert saved.flops - plain.flops == 6 * 2 * 512 * 256 * 1024
    # Each block keeps its 512 x 1024 hidden states for the backward; checkpointed, only its input.
    assert plain.activation_bytes > 6 * 2 * 512 * 1024 * BF16
    assert saved.activation_bytes < plain.activation_bytes / 2


def test_counts_are_kept_in_a_file_under_a_fingerprint(tmp_path: Path):
    path = tmp_path / "counts.json"
    kept = CountFile(path, "abc")
    assert kept.get("part:width=8") is None
    kept.put("part:width=8", {"flops": 10, "activation_bytes": 4})
    assert CountFile(path, "abc").get("part:width=8") == {"flops": 10, "activation_bytes": 4}
    # Another fingerprint (other code, other libraries): the file's counts are not read, and are replaced.
    other = CountFile(path, "def")
    assert other.get("part:width=8") is None
    other.put("part:width=9", {"flops": 1})
    assert json.loads(path.read_text()) == {"fingerprint": "def", "counts": {"part:width=9": {"flops": 1}}}
    path.write_text("{ not json")
    assert CountFile(path, "def").get("part:width=9") is None


def test_the_fingerprint_follows_the_counting_code(tmp_path: Path):
    source = tmp_path / "roles.py"
    source.write_text("A = 1\n")
    first = fingerprint((source,))
    assert fingerprint((source,)) == first
    source.write_text("A = 2\n")
    assert fingerprint((source,)) != first
    assert all(path.is_file() for path in roles.COUNTING_SOURCES)
    assert set(counts.LIBRARIES) == {"torch", "diffusers", "transformers", "peft"}


def test_a_kept_count_is_read_not_counted_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    path = tmp_path / "counts.json"
    roles.keep_counts_in(path)
    try:
        monkeypatch.setattr(roles, "_KEPT", {})
        counted = roles.evaluation("upscaler", width=64, height=64)  # a shape no packaged estimate has
        assert json.loads(path.read_text())["counts"]["upscaler:height=64,width=64"] == counted._asdict()
        # A new process: nothing in memory, the file says; no model is built for it.
        monkeypatch.setattr(roles, "_KEPT", {})
        monkeypatch.setattr(roles, "_shared_model", lambda module: pytest.fail(f"{module} was built again"))
        assert roles.evaluation("upscaler", width=64, height=64) == counted
        # The production shapes come with Likeness: a fresh machine reads them too.
        assert roles.evaluation("video.transformer").flops > 0
        assert "video.transformer:" not in path.read_text()
    finally:
        roles.keep_counts_in(None)


def test_the_packaged_counts_are_of_this_code():
    packaged = json.loads(roles.PACKAGED_COUNTS.read_text())
    assert packaged["fingerprint"] == fingerprint(roles.COUNTING_SOURCES), (
        "the counting code or its libraries changed: run bin/refresh-estimate-counts"
    )
    for part in ("editor.transformer", "refiner.transformer", "captioner", "video.transformer", "video-5b.transformer"):
        shape = ",".join(f"{name}={value}" for name, value in sorted(roles.production_shape(part).items()))
        assert f"{part}:{shape}" in packaged["counts"]

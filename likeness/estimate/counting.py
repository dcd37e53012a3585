"""Counting one call of a model on PyTorch's `meta` device: its FLOPs and the peak bytes of the tensors it makes.

FLOPs come from `torch.utils.flop_counter.FlopCounterMode`: twice the multiply-adds of matrix products and
convolutions, attention included, and counted apart too (what runs at the bf16 rate where the linear layers run in
FP8). Activation bytes are the most the call's own tensors (not the weights, not what
existed before it) take at once: every storage an operator allocates counts from its creation until its last
reference goes. Attention counts as a fused kernel would run it on a GPU (flash or memory-efficient attention: its
output, no attention matrix), though on the meta device PyTorch decomposes it into the matrix products the FLOPs
count.

    measured = measure(lambda: model(hidden_states=torch.empty(1, 4096, 64, device="meta")))
    measured.flops, measured.activation_bytes, measured.attention_flops

Counting the real-size models takes seconds each: `likeness.estimate.counts.CountFile` keeps them between processes.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch.utils import _pytree
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from likeness.estimate.counts import Measure


def measure(call: Callable[[], Any]) -> Measure:
    """Run `call()` once without autograd and count its FLOPs (and those of its attention), and its peak activation
    bytes."""
    with torch.no_grad():
        live = LiveBytes()
        with FlopCounterMode(display=False) as counter, live, fused_attention(live, counter) as attention:
            call()
    return Measure(counter.get_total_flops(), live.peak, attention.flops)


def measure_with_grad(call: Callable[[], Any]) -> Measure:
    """`measure` with autograd as the caller left it, so a backward pass in `call` counts, and the tensors the forward
    pass saves for it. It runs `call()` twice: FlopCounterMode's module hooks keep tensors alive in a backward pass
    that would otherwise be freed, so the FLOPs are counted in one run and the bytes in the other."""
    with FlopCounterMode(display=False) as counter:
        call()
    live = LiveBytes()
    with live, fused_attention(live):
        call()
    return Measure(counter.get_total_flops(), live.peak)


def count_flops(call: Callable[[], Any]) -> int:
    """The FLOPs FlopCounterMode counts while `call()` runs, without autograd."""
    return measure(call).flops


class LiveBytes(TorchDispatchMode):
    """Tracks the storages operators allocate (outputs that alias no input) until they are freed: `peak` bytes."""

    def __init__(self) -> None:
        super().__init__()
        # Storage address -> (bytes, a weak reference whose callback forgets the storage when it is freed).
        self.live: dict[int, tuple[int, weakref.ref]] = {}
        self.current = self.peak = 0
        self.paused = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        if not self.paused:
            returns = func._schema.returns
            outputs = [out] if len(returns) == 1 else list(out)
            for schema, output in zip(returns, outputs, strict=True):
                if schema.alias_info is None:
                    self.track(output)
        return out

    def track(self, output: Any) -> None:
        """Count the storages of the tensors in `output` not yet counted."""
        for tensor in _pytree.tree_leaves(output):
            if not isinstance(tensor, torch.Tensor):
                continue
            storage = tensor.untyped_storage()
            address = storage._cdata
            if address in self.live:
                continue
            # PyTorch keeps a storage's Python object for as long as the storage lives, so the callback runs when
            # the last tensor on it goes, before its address can be reused.
            self.live[address] = (storage.nbytes(), weakref.ref(storage, partial(self._freed, address)))
            self.current += storage.nbytes()
            self.peak = max(self.peak, self.current)

    def _freed(self, address: int, _reference: weakref.ref) -> None:
        size, _ = self.live.pop(address)
        self.current -= size


@dataclass
class AttentionFlops:
    """The FLOPs of the attention calls made so far."""

    flops: int = 0


@contextmanager
def fused_attention(live: LiveBytes, counter: FlopCounterMode | None = None) -> Iterator[AttentionFlops]:
    """While inside, an attention call counts its output alone, as a fused GPU kernel allocates, not the tensors of
    its decomposition, and its FLOPs (what `counter` counts during it) add to the `AttentionFlops` yielded. It
    replaces `torch.nn.functional.scaled_dot_product_attention` for the while (diffusers and transformers look it up
    at each call): a function mode would miss the calls gradient checkpointing replays in the backward pass, which
    runs without the caller's function modes."""
    sdpa = torch.nn.functional.scaled_dot_product_attention
    attention = AttentionFlops()

    def counted_as_fused(*args: Any, **kwargs: Any) -> Any:
        before = counter.get_total_flops() if counter else 0
        live.paused += 1
        try:
            out = sdpa(*args, **kwargs)
        finally:
            live.paused -= 1
        live.track(out)
        attention.flops += counter.get_total_flops() - before if counter else 0
        return out

    torch.nn.functional.scaled_dot_product_attention = counted_as_fused
    try:
        yield attention
    finally:
        torch.nn.functional.scaled_dot_product_attention = sdpa

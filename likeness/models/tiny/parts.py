"""What every tiny twin is built from: modules made right after a fixed seed, and tokenizers built in memory from
one word list (so two builds write byte-identical files)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import torch

# Common English words: the vocabulary of every tiny tokenizer, so that random weights still
# decode to word strings (captions) and prompts tokenize into real tokens rather than bytes.
_WORDS = """
a an the of in on at with and or to from by for is are was be this that it its his her their
photo picture image portrait close up shot of person man woman boy girl child face hair eyes
nose mouth smile smiling looking standing sitting walking running holding wearing red green
blue yellow black white brown gray pink orange purple dark light bright soft warm cold sunny
park street city beach forest mountain room kitchen office studio garden road sky water tree
trees grass flower flowers house building car dog cat bird table chair window door wall floor
shirt dress jacket hat glasses coat suit background front side left right top bottom young old
happy calm serious camera lens film cinematic dramatic lighting natural daylight night evening
morning sunset golden hour high quality detailed sharp blurry style realistic painting drawing
""".split()


def seeded(seed: int, make: Callable[[], torch.nn.Module]) -> torch.nn.Module:
    torch.manual_seed(seed)
    # eval(): dropout (UMT5) would otherwise make outputs differ between calls.
    return make().eval()


def byte_level_bpe(special_tokens: list[str]):
    """A byte-level BPE (Qwen2 style) trained on the word list: (vocab, merges)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=1000,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator([" ".join(_WORDS)], trainer)
    model = json.loads(tokenizer.to_str())["model"]
    # transformers takes merges as tuples; the JSON form gives lists.
    return model["vocab"], [tuple(merge) for merge in model["merges"]]


def t5_tokenizer():
    """A T5 (Unigram, sentencepiece-style) tokenizer over the word list, as used by Flux and Wan."""
    from transformers import T5TokenizerFast

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [(f"▁{word}", -1.0) for word in dict.fromkeys(_WORDS)]
    pieces += [(char, -5.0) for char in sorted(set("".join(_WORDS)))]
    return T5TokenizerFast(vocab=pieces, extra_ids=0, model_max_length=512)


def qwen3_tokenizer():
    """Qwen3's tokenizer layout over the word list, with its chat template (FLUX.2 klein, the prompter)."""
    from transformers import Qwen2Tokenizer

    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    vocab, merges = byte_level_bpe(special)
    tokenizer = Qwen2Tokenizer(
        vocab=vocab, merges=merges, unk_token=None, bos_token=None, eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )
    tokenizer.add_special_tokens({"additional_special_tokens": special[1:]})
    tokenizer.chat_template = _QWEN3_CHAT_TEMPLATE
    return tokenizer


def clip_tokenizer():
    from transformers import CLIPTokenizer

    vocab, merges = byte_level_bpe(["<|startoftext|>", "<|endoftext|>"])
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)


def qwen_tokenizer() -> Any:
    """A Qwen2 tokenizer: a byte-level BPE trained in memory, with the special tokens Qwen's VL models use."""
    from transformers import Qwen2Tokenizer

    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
               "<|image_pad|>", "<|video_pad|>"]  # fmt: skip
    vocab, merges = byte_level_bpe(special)
    tokenizer = Qwen2Tokenizer(
        vocab=vocab, merges=merges, unk_token=None, bos_token=None, eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )
    tokenizer.add_special_tokens({"additional_special_tokens": special[1:]})
    return tokenizer


# Qwen3's chat template for one user message, with the empty thinking block FLUX.2 klein's prompt asks for.
_QWEN3_CHAT_TEMPLATE = (
    "{%- for message in messages %}{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}"
    "{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}"
    "{%- endif %}"
)

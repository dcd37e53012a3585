"""The tiny twins of the language roles: the captioner (Qwen3-VL) and the prompter (a Qwen3 chat LM)."""

from __future__ import annotations

from pathlib import Path

from likeness.models.tiny.parts import qwen3_tokenizer, qwen_tokenizer, seeded

# Qwen3-VL's chat template, for the messages a captioner gets (no tools): the same text the real one makes.
_QWEN_VL_CHAT_TEMPLATE = (
    "{%- for message in messages %}{{- '<|im_start|>' + message.role + '\\n' }}"
    "{%- if message.content is string %}{{- message.content }}{%- else %}{%- for content in message.content %}"
    "{%- if content.type == 'image' or 'image' in content %}{{- '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{%- elif 'text' in content %}{{- content.text }}{%- endif %}{%- endfor %}{%- endif %}"
    "{{- '<|im_end|>\\n' }}{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def build_captioner(folder: Path) -> None:
    from transformers import GenerationConfig, Qwen3VLConfig, Qwen3VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    tokenizer = qwen_tokenizer()
    tokenizer.chat_template = _QWEN_VL_CHAT_TEMPLATE
    token_id = tokenizer.convert_tokens_to_ids
    end_of_text, end_of_turn = token_id("<|endoftext|>"), token_id("<|im_end|>")
    # Qwen3-VL-8B's layout at toy width: grouped KV heads, interleaved M-RoPE (its sections sum to head_dim / 2),
    # 16 px patches merged 2x2, one DeepStack layer, untied output embedding.
    config = Qwen3VLConfig(
        text_config=dict(
            vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
            num_attention_heads=2, num_key_value_heads=1, head_dim=8,
            rope_parameters={"rope_type": "default", "rope_theta": 5e6, "mrope_section": [2, 1, 1],
                             "mrope_interleaved": True},
            bos_token_id=end_of_text, eos_token_id=end_of_turn, pad_token_id=end_of_text,
        ),
        vision_config=dict(depth=2, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=16,
                           patch_size=16, num_position_embeddings=16, deepstack_visual_indexes=[0]),
        image_token_id=token_id("<|image_pad|>"),
        video_token_id=token_id("<|video_pad|>"),
        vision_start_token_id=token_id("<|vision_start|>"),
        vision_end_token_id=token_id("<|vision_end|>"),
        tie_word_embeddings=False,
    )  # fmt: skip
    # Seed 7: with seeds 1 and 3 these random weights end every answer within a few tokens, leaving tiny
    # captions no description to cut to length.
    model = seeded(7, lambda: Qwen3VLForConditionalGeneration(config))
    # The real repos sample by default; the captioner must override this to decode greedily.
    model.generation_config = GenerationConfig(
        bos_token_id=end_of_text, eos_token_id=[end_of_turn, end_of_text], pad_token_id=end_of_text,
        do_sample=True, temperature=0.7, top_k=20, top_p=0.8,
    )  # fmt: skip
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    # The real preprocessor settings except the area: images become at most 64x64 px, 2x2 merged patches.
    image_processor = Qwen2VLImageProcessorPil(
        size={"shortest_edge": 32 * 32, "longest_edge": 64 * 64}, patch_size=16, merge_size=2, temporal_patch_size=2,
        image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5],
    )  # fmt: skip
    image_processor.save_pretrained(folder)


def build_prompter(folder: Path) -> None:
    """A chat LM as Qwen/Qwen3-4B-Instruct-2507 is laid out: Qwen3 with Qwen's tokenizer and chat template."""
    from transformers import GenerationConfig, Qwen3Config, Qwen3ForCausalLM

    tokenizer = qwen3_tokenizer()
    end, pad = tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.convert_tokens_to_ids("<|endoftext|>")
    config = Qwen3Config(
        vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, head_dim=8, max_position_embeddings=2048, tie_word_embeddings=True,
        bos_token_id=None, eos_token_id=end, pad_token_id=pad,
    )  # fmt: skip
    model = seeded(6, lambda: Qwen3ForCausalLM(config))
    model.generation_config = GenerationConfig(eos_token_id=end, pad_token_id=pad)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)

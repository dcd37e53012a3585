"""Training captions: the tiny Qwen3-VL captioner, the prompt, the caption's assembly, the diversity check."""

from __future__ import annotations

import json
import unicodedata

import pytest
import torch
from PIL import Image

from likeness.config import CaptionConfig, InvalidSettings, RunConfig
from likeness.dataset.captions import (
    DEFAULT_PROMPT,
    caption_messages,
    caption_prompt,
    compose_caption,
    phrases_in_every_caption,
)
from likeness.models import pipelines
from likeness.models.profiles import load_profile
from likeness.models.tiny import build_tiny_models
from likeness.storage.artifacts import put_file

TINY = load_profile("tiny")
TAGS = ["side view", "neutral expression", "full body"]


@pytest.fixture(scope="module")
def captioner(tmp_path_factory):
    return build_tiny_models(tmp_path_factory.mktemp("tiny"), roles=["captioner"])["captioner"]


# The tiny captioner -------------------------------------------------------------------------------------------------


def test_the_tiny_captioner_builds_byte_identical_twice(captioner, tmp_path):
    again = build_tiny_models(tmp_path, roles=["captioner"])["captioner"]
    files = sorted(p.name for p in captioner.iterdir())
    assert {"model.safetensors", "config.json", "tokenizer.json", "chat_template.jinja"} <= set(files)
    assert sorted(p.name for p in again.iterdir()) == files
    for name in files:
        assert (again / name).read_bytes() == (captioner / name).read_bytes(), name
    config = json.loads((captioner / "config.json").read_text())
    assert config["model_type"] == "qwen3_vl" and config["architectures"] == ["Qwen3VLForConditionalGeneration"]


def test_the_production_loader_loads_the_tiny_qwen3_vl(captioner):
    from transformers import Qwen3VLForConditionalGeneration

    processor, model = pipelines._load_captioner(captioner, TINY, "cpu")
    assert isinstance(model, Qwen3VLForConditionalGeneration) and not model.training
    # This machine has no torchvision: the processor is the image-only one, with the repo's chat template.
    assert processor.video_processor is None
    chat = processor.apply_chat_template(
        caption_messages("qwen3_vl", "Describe."), tokenize=False, add_generation_prompt=True
    )
    assert (
        chat
        == "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Describe.<|im_end|>\n<|im_start|>assistant\n"
    )
    inputs = processor(text=[chat], images=[Image.new("RGB", (128, 96), "tan")], return_tensors="pt")
    # Scaled to at most 64x64 px of area in steps of 32 px (128x96 -> 64x32): 2x4 patches of 16 px, merged 2x2.
    assert inputs["image_grid_thw"].tolist() == [[1, 2, 4]]
    assert (inputs["input_ids"] == model.config.image_token_id).sum() == 2


def test_the_loader_refuses_a_model_it_cannot_caption_with(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "blip"}))
    with pytest.raises(ValueError, match="model_type 'blip' is not supported; use a qwen3_vl or llava repo"):
        pipelines._load_captioner(tmp_path, TINY, "cpu")


def test_a_tiny_caption_is_trigger_tags_then_a_cut_description(likeness_env, face_photo):
    from tasks.caption import caption_image

    reference = put_file(face_photo)
    config = TINY.caption.model_copy(update={"max_words": 3})
    caption = caption_image.fn(reference, "Ada", TAGS, config, TINY)
    assert isinstance(caption, str)
    assert caption.startswith("Ada, side view, neutral expression, full body, ")
    description = caption.removeprefix("Ada, side view, neutral expression, full body, ")
    assert 1 <= len(description.split()) <= 3
    assert not any(unicodedata.category(char).startswith("C") for char in caption)
    assert caption == " ".join(caption.split())
    # Greedy decoding, though the repo's generation config samples: the same image gets the same caption.
    assert caption_image.fn(reference, "Ada", TAGS, config, TINY) == caption
    longer = caption_image.fn(reference, "Ada", TAGS, TINY.caption.model_copy(update={"max_words": 6}), TINY)
    assert longer.startswith(caption) and len(longer.split()) > len(caption.split())


def test_a_llava_repo_like_joycaption_loads_and_gets_its_own_chat(tmp_path):
    from transformers import LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor, Qwen2Tokenizer
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    from likeness.models.tiny import _byte_level_bpe
    from tasks.caption import describe

    # JoyCaption's layout at toy size: Llama 3 chat, a SigLIP tower, the image token placed by the template.
    image_token = "<|reserved_special_token_70|>"
    special = ["<|begin_of_text|>", "<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>", image_token]
    vocab, merges = _byte_level_bpe(special)
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=merges, unk_token=None, bos_token=special[0], eos_token=special[1])
    tokenizer.add_special_tokens({"additional_special_tokens": special[2:]})
    template = (
        "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m.role }}<|end_header_id|>\n\n"
        "{% if m.role == 'user' %}" + image_token + "{% endif %}{{ m.content }}<|eot_id|>{% endfor %}"
        "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
    )
    config = LlavaConfig(
        text_config=dict(model_type="llama", vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32,
                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                         eos_token_id=tokenizer.eos_token_id),
        vision_config=dict(model_type="siglip_vision_model", hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                           num_attention_heads=2, image_size=32, patch_size=8),
        image_token_id=tokenizer.convert_tokens_to_ids(image_token), vision_feature_select_strategy="full",
    )  # fmt: skip
    torch.manual_seed(0)
    LlavaForConditionalGeneration(config).save_pretrained(tmp_path)
    LlavaProcessor(
        image_processor=SiglipImageProcessorPil(size={"height": 32, "width": 32}), tokenizer=tokenizer, patch_size=8,
        vision_feature_select_strategy="full", chat_template=template, image_token=image_token,
    ).save_pretrained(tmp_path)  # fmt: skip

    processor, model = pipelines._load_captioner(tmp_path, TINY, "cpu")
    assert isinstance(model, LlavaForConditionalGeneration)
    messages = caption_messages(model.config.model_type, "Describe the pose.")
    assert messages[0] == {"role": "system", "content": "You are a helpful image captioner."}
    chat = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert chat.count(image_token) == 1
    answer = describe(processor, model, Image.new("RGB", (50, 40), "tan"), "Describe the pose.", 8)
    assert isinstance(answer, str) and answer == describe(
        processor, model, Image.new("RGB", (50, 40), "tan"), "Describe the pose.", 8
    )


# The prompt ---------------------------------------------------------------------------------------------------------


def test_the_prompt_asks_for_what_varies_and_not_the_fixed_traits():
    (message,) = caption_messages("qwen3_vl", caption_prompt(DEFAULT_PROMPT, 40))
    image, text = message["content"]
    assert message["role"] == "user" and image == {"type": "image"} and text["type"] == "text"
    asked, _, refused = text["text"].partition("Do not describe")
    for varies in ("pose", "expression", "clothing", "background", "lighting", "framing"):
        assert varies in asked and varies not in refused
    for fixed in ("face", "hair colour", "eye colour", "ethnicity", "age", "body type"):
        assert fixed in refused
    assert text["text"].endswith("Use at most 40 words.")
    assert "one sentence" in asked


def test_caption_settings_are_checked():
    with pytest.raises(ValueError, match=r"max_new_tokens \(8\) is below max_words \(12\)"):
        CaptionConfig(max_words=12, max_new_tokens=8)
    with pytest.raises(ValueError, match="the caption prompt is empty"):
        CaptionConfig(max_words=12, max_new_tokens=16, prompt="  ")
    with pytest.raises(InvalidSettings, match=r"dataset.caption.max_words=300 is above 200, a paragraph"):
        RunConfig.from_profile(TINY, {"dataset": {"caption": {"max_words": 300, "max_new_tokens": 400}}})
    config = RunConfig.from_profile(
        TINY, {"dataset": {"caption": {"max_words": 300, "max_new_tokens": 400}}}, beyond_limits=True
    )
    assert config.dataset.caption.max_words == 300
    production = load_profile("production")
    with pytest.raises(InvalidSettings, match="above 262144, Qwen3-VL's 256K-token context"):
        RunConfig.from_profile(production, {"dataset": {"caption": {"max_new_tokens": 300_000}}}, beyond_limits=True)


# Assembling a caption -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("trigger", "tags", "description", "max_words", "expected"),
    [
        ("Ada", TAGS, "standing by a window, arms crossed.", 40,
         "Ada, side view, neutral expression, full body, standing by a window, arms crossed"),
        # Cut at a word boundary, and the comma the cut leaves at the end goes.
        ("Ada", ["front view"], "sitting on a bench, soft light", 4, "Ada, front view, sitting on a bench"),
        # A tag the description already says (any case) is not repeated; the others keep their order.
        ("Ada", TAGS, "A Full Body shot of a person walking", 40,
         "Ada, side view, neutral expression, A Full Body shot of a person walking"),
        # Not a tag said in the description: "full body" is not "full bodysuit".
        ("Ada", ["full body"], "wearing a full bodysuit", 40, "Ada, full body, wearing a full bodysuit"),
        # A tag said only in the part cut away stays.
        ("Ada", ["smiling"], "standing at a desk, smiling", 3, "Ada, smiling, standing at a"),
        # Newlines, tabs, control characters and runs of spaces become single spaces; tags are cleaned the same way.
        (" Ada ", ["side\nview"], "standing\n\nin  the\train\x02 at night", 40,
         "Ada, side view, standing in the rain at night"),
        # Repeated tags, empty tags and the trigger as a tag appear once.
        ("Ada", ["side view", "Side View", "", "ada"], "walking", 40, "Ada, side view, walking"),
        # A VLM's opening about the picture itself is dropped.
        ("Ada", [], "The image shows a woman reading in a cafe.", 40, "Ada, a woman reading in a cafe"),
        ("Ada", [], "In this photo, a man jogs.", 40, "Ada, a man jogs"),
        ("Ada", [], "The photo is dark and grainy.", 40, "Ada, The photo is dark and grainy"),
        # Nothing described: no trailing comma.
        ("Ada", ["front view"], " \n ", 40, "Ada, front view"),
    ],
)  # fmt: skip
def test_compose_caption(trigger, tags, description, max_words, expected):
    assert compose_caption(trigger, tags, description, max_words) == expected


def test_compose_caption_refuses_an_empty_trigger_or_word_limit():
    with pytest.raises(ValueError, match="the trigger word is empty"):
        compose_caption(" \n", ["side view"], "walking", 10)
    with pytest.raises(ValueError, match="max_words must be at least 1, got 0"):
        compose_caption("Ada", [], "walking", 0)


# The diversity check ------------------------------------------------------------------------------------------------


STUDIO = [
    "Ada, side view, full body, standing with arms crossed in front of a white studio background",
    "Ada, front view, smiling, sitting on a stool against a white studio background, soft light",
    "Ada, back view, full body, walking away; White Studio Background and soft light",
]


def test_a_phrase_in_every_caption_is_found_in_its_longest_form():
    ignore = ["Ada", "side view", "front view", "back view", "full body", "smiling"]
    assert phrases_in_every_caption(STUDIO, ignore=ignore) == ["white studio background"]


def test_the_trigger_and_tags_are_not_flagged_but_do_not_hide_what_surrounds_them():
    captions = ["Ada Lovelace, full body, in a red coat", "Ada Lovelace, full body, in a red coat by a lake"]
    assert phrases_in_every_caption(captions) == ["ada lovelace", "full body", "in a red coat"]
    assert phrases_in_every_caption(captions, ignore=["Ada Lovelace", "full body"]) == ["in a red coat"]
    # An ignored phrase splits the words around it: no phrase is made across it.
    joined = ["ada smiling at dusk in the rain", "ada smiling at dusk under a tree"]
    assert phrases_in_every_caption(joined, ignore=["smiling"]) == ["at dusk"]


def test_phrases_that_differ_or_say_nothing_are_not_flagged():
    assert phrases_in_every_caption(["Ada, in a park", "Ada, in a kitchen"]) == []
    assert phrases_in_every_caption(["Ada, sitting in a chair", "Ada, lying in a bed"], min_words=1) == ["ada"]
    # One caption has nothing to compare with.
    assert phrases_in_every_caption(STUDIO[:1]) == []
    assert phrases_in_every_caption([]) == []
    assert phrases_in_every_caption(STUDIO, min_words=4) == []
    with pytest.raises(ValueError, match="min_words must be at least 1, got 0"):
        phrases_in_every_caption(STUDIO, min_words=0)

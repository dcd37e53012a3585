"""Rendering with the character's LoRA: prompts, and (later) the renders made from them."""

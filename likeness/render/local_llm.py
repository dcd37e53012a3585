"""A prompter LLM in this process: any transformers causal LM with a chat template (a local folder or hub repo).

It answers the same chat `likeness.render.llm` sends an endpoint, so its answers go through the same checks and
the same fallback to the templates. Sampling is seeded: the same seed gives the same prompts.

    prompter = TransformersPrompter(Path("models/Qwen3-4B-Instruct-2507"))
    prompts, source = prompt_variations(character, count=4, seed=7, llm=prompter)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from likeness.render.llm import LlmUnusable, Message


class TransformersPrompter:
    """A `Prompter` that generates with a transformers causal LM, loaded on first use."""

    def __init__(self, path: Path, device: str = "cpu", temperature: float = 0.9) -> None:
        self.path, self.device, self.temperature = path, device, temperature
        self._loaded: tuple[Any, Any] | None = None

    def _model(self) -> tuple[Any, Any]:
        if self._loaded is None:
            from transformers import AutoModelForCausalLM, AutoTokenizer

            try:
                tokenizer = AutoTokenizer.from_pretrained(self.path)
                model = AutoModelForCausalLM.from_pretrained(self.path).to(self.device).eval()
            except (OSError, ValueError) as exc:
                raise LlmUnusable(f"the prompter model at {self.path} does not load: {exc}") from None
            self._loaded = tokenizer, model
        return self._loaded

    def complete(self, messages: Sequence[Message], seed: int, max_tokens: int) -> str:
        """The model's answer to `messages`, sampled from `seed`."""
        answer, finished = self.generate(messages, seed, max_tokens)
        if not finished:
            raise LlmUnusable(f"the prompter model at {self.path} wrote {max_tokens} tokens without finishing")
        return answer

    def generate(self, messages: Sequence[Message], seed: int, max_tokens: int) -> tuple[str, bool]:
        """The text sampled from `seed` for `messages`, and whether the model ended it before `max_tokens`."""
        import torch

        tokenizer, model = self._model()
        inputs = tokenizer.apply_chat_template(
            list(messages), add_generation_prompt=True, return_tensors="pt", return_dict=True
        ).to(self.device)
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(seed)
            output = model.generate(
                **inputs, max_new_tokens=max_tokens, do_sample=True, temperature=self.temperature, top_p=0.95
            )
        answer = output[0, inputs["input_ids"].shape[1] :]
        return tokenizer.decode(answer, skip_special_tokens=True), len(answer) < max_tokens

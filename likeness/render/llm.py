"""Prompts written by an LLM behind any OpenAI-compatible chat endpoint, with the seeded templates to fall back on.

The LLM is asked for a JSON list of prompts, and its answer is checked. A server that is down, answers
late (the whole call is bounded by `timeout_s`), answers an HTTP error, or answers anything but the
prompts asked for raises `LlmUnusable` with the reason; `prompt_variations` and `make_video_prompt` log
that reason and use the templates instead, so a flow never hangs on an LLM. The API key is sent as a
bearer token and appears in no message and no log record.

    llm = LlmSettings(url="http://127.0.0.1:8080/v1", model="qwen3-4b-instruct", api_key=None, timeout_s=30)
    prompts, source = prompt_variations(character, count=8, seed=7, llm=llm)   # source: "llm" or "templates"
    clip, source = make_video_prompt(prompts[0], seed=7, llm=llm)
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
import unicodedata
from collections.abc import Sequence
from typing import Any, Literal, Protocol
from urllib.parse import urlsplit

import httpx
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from likeness.inputs import InvalidInput
from likeness.render.prompts import CharacterPrompt, template_variations, video_prompt

log = logging.getLogger(__name__)

Source = Literal["llm", "templates"]
Message = dict[str, str]

# A list of prompts is a few kilobytes: more is a server answering something else.
MAX_ANSWER_BYTES = 2**20
# Twice the 1024 characters Wan's text encoder reads (render.prompt_chars): longer is a runaway answer.
MAX_PROMPT_CHARS = 2048
# Fewer words than this beside the trigger word describe no shot.
MIN_PROMPT_WORDS = 3
# About 80 words a prompt at 1.3 tokens a word, and room for a fence around the list.
TOKENS_PER_PROMPT = 160


class LlmUnusable(InvalidInput):
    """An LLM that gave no usable answer: unreachable, too slow, an HTTP error, or an answer of the wrong shape."""


class LlmSettings(BaseModel):
    """Where the prompter LLM is: an OpenAI-compatible base URL (`.../v1`), the model's name, the key if any."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    url: str
    model: str = Field(min_length=1)
    api_key: SecretStr | None = None
    # The most one call may take, connecting and answering together.
    timeout_s: float = Field(default=60.0, gt=0, le=600)
    temperature: float = Field(default=0.9, ge=0, le=2)

    @field_validator("url")
    @classmethod
    def _http_url(cls, url: str) -> str:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("the LLM's URL must be http:// or https:// and name a host, e.g. http://127.0.0.1:8080/v1")
        return url.rstrip("/")

    @property
    def endpoint(self) -> str:
        """The chat completions URL."""
        return f"{self.url}/chat/completions"

    @property
    def shown_url(self) -> str:
        """The endpoint for messages: without any user:password or query, which may hold credentials."""
        parts = urlsplit(self.endpoint)
        port = f":{parts.port}" if parts.port else ""
        return f"{parts.scheme}://{parts.hostname}{port}{parts.path}"


class Prompter(Protocol):
    """A model that answers chat messages; every failure is an `LlmUnusable` naming the reason."""

    def complete(self, messages: Sequence[Message], seed: int, max_tokens: int) -> str:
        """The model's answer to `messages`."""
        ...


class ChatEndpoint:
    """A `Prompter` behind an OpenAI-compatible `POST {url}/chat/completions`."""

    def __init__(self, settings: LlmSettings) -> None:
        self.settings = settings

    def complete(self, messages: Sequence[Message], seed: int, max_tokens: int) -> str:
        """The content of the first choice's message, within `timeout_s` in all."""
        body = {
            "model": self.settings.model,
            "messages": list(messages),
            "temperature": self.settings.temperature,
            "seed": seed,
            "max_tokens": max_tokens,
        }
        return self._content(self._post(body))

    def _post(self, body: dict[str, Any]) -> bytes:
        # httpx's timeouts bound each connect and each read, not their sum, and a server may trickle bytes:
        # the caller waits for the request's thread no longer than timeout_s in all.
        deadline = time.monotonic() + self.settings.timeout_s
        outcome: list[bytes | Exception] = []

        def call() -> None:
            try:
                outcome.append(self._request(body, deadline))
            except Exception as exc:  # handed to the caller's thread, raised there
                outcome.append(exc)

        worker = threading.Thread(target=call, name="likeness-llm", daemon=True)
        worker.start()
        worker.join(self.settings.timeout_s)
        if not outcome:
            raise self._unusable(f"no answer within {self.settings.timeout_s:g} s")
        if isinstance(outcome[0], Exception):
            raise outcome[0]
        return outcome[0]

    def _request(self, body: dict[str, Any], deadline: float) -> bytes:
        headers = {"Accept": "application/json"}
        if self.settings.api_key is not None:
            headers["Authorization"] = f"Bearer {self.settings.api_key.get_secret_value()}"
        try:
            with (
                httpx.Client(timeout=httpx.Timeout(self.settings.timeout_s)) as client,
                client.stream("POST", self.settings.endpoint, json=body, headers=headers) as response,
            ):
                data = bytearray()
                # Checked as bytes arrive, so the thread a late answer leaves behind ends soon after too.
                for chunk in response.iter_bytes():
                    data += chunk
                    if len(data) > MAX_ANSWER_BYTES:
                        raise self._unusable(f"answered more than {MAX_ANSWER_BYTES} bytes")
                    if time.monotonic() > deadline:
                        raise self._unusable(f"no complete answer within {self.settings.timeout_s:g} s")
        except httpx.TimeoutException:
            raise self._unusable(f"no answer within {self.settings.timeout_s:g} s") from None
        except httpx.ConnectError as exc:
            raise self._unusable(f"cannot connect ({exc})") from None
        except httpx.HTTPError as exc:
            raise self._unusable(f"the request failed ({exc.__class__.__name__}: {exc})") from None
        if not response.is_success:
            raise self._unusable(
                f"answered HTTP {response.status_code} {response.reason_phrase}: {_snippet(bytes(data))}"
            )
        return bytes(data)

    def _content(self, data: bytes) -> str:
        try:
            answer = json.loads(data)
        except ValueError:
            raise self._unusable(f"answered something that is not JSON: {_snippet(data)}") from None
        try:
            choice = answer["choices"][0]
            content = choice["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise self._unusable(f"answered JSON without choices[0].message.content: {_snippet(data)}") from None
        if not isinstance(content, str) or not content.strip():
            raise self._unusable("answered no text in choices[0].message.content")
        if choice.get("finish_reason") == "length":
            raise self._unusable("stopped at max_tokens before its answer was complete")
        return content

    def _unusable(self, reason: str) -> LlmUnusable:
        key = self.settings.api_key.get_secret_value() if self.settings.api_key else ""
        # A server may echo the key back (in a 401's body): it never reaches a message.
        if key:
            reason = reason.replace(key, "***")
        return LlmUnusable(f"LLM {self.settings.model!r} at {self.settings.shown_url}: {reason}")


def _snippet(data: bytes | str, limit: int = 160) -> str:
    text = data.decode("utf-8", errors="replace") if isinstance(data, bytes) else data
    text = " ".join(text.split())
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")


def _prompter(llm: LlmSettings | Prompter) -> Prompter:
    return ChatEndpoint(llm) if isinstance(llm, LlmSettings) else llm


# Image prompts -----------------------------------------------------------------------------------------------------


def variation_messages(prompt: CharacterPrompt, count: int, seed: int) -> list[Message]:
    """The chat asking for `count` prompts of the character, with two seeded template prompts as examples."""
    examples = "\n".join(f"- {example}" for example in template_variations(prompt, 2, seed))
    extra = (
        f"Also put these words in every prompt: {', '.join(prompt.lora_triggers)}.\n" if prompt.lora_triggers else ""
    )
    user = (
        f"The character's trigger word: {prompt.trigger}\n"
        f"Who the character is: {prompt.description or '(not described)'}\n"
        f"The style: {prompt.style}\n{extra}\n"
        f"Write {count} different prompts, each for one photograph of this character alone: a situation, a "
        "framing, the lighting and a lens, photographic and hyperrealistic (natural skin texture). Start every "
        f"prompt with the trigger word {prompt.trigger} and a comma; at most 80 words each. Prompts of this "
        f"form:\n{examples}"
    )
    return [
        {
            "role": "system",
            "content": "You write prompts for a text-to-image model that renders photographs of one consistent "
            f"character. Answer with a JSON array of exactly {count} strings and nothing else.",
        },
        {"role": "user", "content": user},
    ]


def parse_variations(answer: str, prompt: CharacterPrompt, count: int) -> list[str]:
    """The first `count` distinct prompts of the LLM's JSON list, each starting with the trigger word.

    A prompt without the trigger word first gets it (and any LoRA trigger word it lacks) added rather than
    being refused: small models drop it often while the rest is good, and the LoRA needs it first.
    Anything else unlike a list of prompts (not JSON, a non-string, an empty or runaway item, too few
    prompts) raises `LlmUnusable`.
    """
    # Chat models wrap JSON in a ``` fence or a sentence: the list runs from the first [ to the last ].
    start, end = answer.find("["), answer.rfind("]")
    if start < 0 or end < start:
        raise LlmUnusable(f"the LLM's answer holds no JSON list: {_snippet(answer)}")
    try:
        items = json.loads(answer[start : end + 1])
    except ValueError:
        raise LlmUnusable(f"the LLM's answer is not a valid JSON list: {_snippet(answer)}") from None
    prompts: list[str] = []
    for number, item in enumerate(items, start=1):
        if not isinstance(item, str):
            raise LlmUnusable(f"item {number} of the LLM's list is {type(item).__name__}, not a prompt (text)")
        text = _prompt_text(item, f"item {number} of the LLM's list")
        text = _with_words(text, prompt.trigger, prompt.lora_triggers)
        if text not in prompts:
            prompts.append(text)
    if len(prompts) < count:
        raise LlmUnusable(f"the LLM gave {len(prompts)} different prompts where {count} were asked for")
    return prompts[:count]


def _prompt_text(item: str, what: str) -> str:
    # Control characters and undecodable bytes are a model emitting tokens at random, not a description.
    if any(char == "\ufffd" or (unicodedata.category(char) == "Cc" and not char.isspace()) for char in item):
        raise LlmUnusable(f"{what} holds control characters or broken text: {_snippet(item)}")
    text = " ".join(item.split())
    if len(text) > MAX_PROMPT_CHARS:
        raise LlmUnusable(f"{what} is {len(text)} characters long, more than {MAX_PROMPT_CHARS}")
    if len(re.findall(r"\w+", text)) < MIN_PROMPT_WORDS:
        raise LlmUnusable(f"{what} describes nothing: {_snippet(text)}")
    return text


def _starts_with(text: str, word: str) -> bool:
    return re.match(rf"{re.escape(word)}(?![\w-])", text) is not None


def _with_words(text: str, trigger: str, lora_triggers: Sequence[str]) -> str:
    if not _starts_with(text, trigger):
        text = f"{trigger}, {text}"
    missing = [word for word in lora_triggers if word.casefold() not in text.casefold()]
    return ", ".join([text.rstrip(" ,."), *missing]) if missing else text


def chat_variations(prompt: CharacterPrompt, count: int, seed: int, llm: LlmSettings | Prompter) -> list[str]:
    """`count` prompts of the character written by the LLM; `LlmUnusable` where it gives none."""
    if count <= 0:
        return []
    answer = _prompter(llm).complete(variation_messages(prompt, count, seed), seed, count * TOKENS_PER_PROMPT + 64)
    return parse_variations(answer, prompt, count)


def prompt_variations(
    prompt: CharacterPrompt,
    count: int,
    seed: int,
    llm: LlmSettings | Prompter | None,
    template: str | None = None,
) -> tuple[list[str], Source]:
    """`count` prompts and where they came from: the LLM's where it is set and usable, else the templates'."""
    if llm is not None:
        try:
            return chat_variations(prompt, count, seed, llm), "llm"
        except LlmUnusable as exc:
            log.warning("Using the seeded prompt templates, as the LLM's prompts are unusable: %s", exc)
    return template_variations(prompt, count, seed, template), "templates"


# Video prompts -----------------------------------------------------------------------------------------------------


def video_messages(image_prompt: str) -> list[Message]:
    """The chat asking for the image prompt as a video prompt: the same picture, with a camera move and motion."""
    return [
        {
            "role": "system",
            "content": "You turn prompts for a text-to-image model into prompts for a text-to-video model. Answer "
            "with the video prompt alone: one paragraph, no quotes, no preamble.",
        },
        {
            "role": "user",
            "content": "Keep the character, the place, the light and the first word exactly as they are; add one "
            "camera move (e.g. slow dolly-in, handheld drift) and what moves in five seconds (e.g. she turns her "
            f"head and smiles, hair moving in the breeze). At most 100 words.\n\nImage prompt: {image_prompt}",
        },
    ]


def parse_video_prompt(answer: str, image_prompt: str) -> str:
    """The LLM's video prompt, with the image prompt's first word (the trigger word) put first if it lost it."""
    text = answer.strip().strip("`").strip().strip("\"'")
    # Markup or JSON is a server or a model answering something else, not a prompt.
    if text[:1] in ("<", "{", "["):
        raise LlmUnusable(f"the LLM's video prompt is markup or JSON, not a prompt: {_snippet(text)}")
    text = _prompt_text(text, "the LLM's video prompt")
    lead = image_prompt.strip().split(",")[0].split()[0] if image_prompt.strip() else ""
    if lead and not re.search(rf"(?<![\w-]){re.escape(lead)}(?![\w-])", text):
        text = f"{lead}, {text}"
    return text


def chat_video_prompt(image_prompt: str, llm: LlmSettings | Prompter, seed: int = 0) -> str:
    """The image prompt as a video prompt written by the LLM; `LlmUnusable` where it gives none."""
    if not image_prompt.strip():
        raise InvalidInput("an empty prompt cannot become a video prompt")
    answer = _prompter(llm).complete(video_messages(image_prompt), seed, 2 * TOKENS_PER_PROMPT)
    return parse_video_prompt(answer, image_prompt)


def make_video_prompt(image_prompt: str, seed: int, llm: LlmSettings | Prompter | None) -> tuple[str, Source]:
    """The image prompt as a video prompt and where it came from: the LLM where it is set and usable, else templates."""
    if llm is not None:
        try:
            return chat_video_prompt(image_prompt, llm, seed), "llm"
        except LlmUnusable as exc:
            log.warning("Using the video prompt template, as the LLM's video prompt is unusable: %s", exc)
    return video_prompt(image_prompt, seed), "templates"

"""Prompts files: a person's own prompts for a render, one a line in a `.txt` file, or a `.yaml` list whose entries
may carry options (kind, seed, frames, negative prompt, LoRA scale, post FX) that replace the run's settings.

    entries = read_prompts_file(Path("prompts.yaml"))   # [PromptEntry(prompt=..., kind="video", seed=3, ...)]

A file Likeness refuses raises `PromptsFileProblem`, one line per problem, each naming the file and the line or entry.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from likeness.inputs import InvalidInput, TooBig, compose_yaml, read_at_most
from likeness.render.prompts import Text

# config.SEED_RANGE, the range every generator takes; config is not imported, as it loads the dataset's models.
SEED_RANGE = 2**32
# What a person hands in with --prompts, refused before it is parsed (the file) or before any prompt is checked (the
# count, the length): every prompt is a render of its own, so a longer list is several runs, not one; a prompt's
# length is four times the 1024 characters Wan's text encoder reads (render.prompt_chars, a soft limit that
# --beyond-limits passes), past which it is pasted text rather than a prompt. The file holds the most prompts at
# about that soft length. A 100,000-line file ran for minutes before.
MAX_PROMPTS = 1000
MAX_PROMPT_CHARS = 4096
MAX_PROMPTS_FILE_BYTES = 2**20
TEXT_SUFFIXES = ("", ".txt")
YAML_SUFFIXES = (".yaml", ".yml")


class PromptsFileProblem(InvalidInput):
    """A prompts file Likeness refuses, one line per problem, each naming the file (and the line or entry)."""

    def __init__(self, path: Path, problems: Sequence[str]) -> None:
        self.path = path
        self.problems = tuple(problems)
        super().__init__("\n".join(f"prompts file {path}: {problem}" for problem in self.problems))


class PromptEntry(BaseModel):
    """One prompt of a prompts file, with the options that replace the run's settings for it (None: the run's)."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    prompt: Text
    kind: Literal["image", "video"] | None = None
    seed: int | None = Field(default=None, ge=0, lt=SEED_RANGE)
    frames: int | None = Field(default=None, gt=0)
    negative_prompt: str | None = None
    lora_scale: float | None = Field(default=None, ge=0.0)
    fx: Text | None = None

    @model_validator(mode="after")
    def _frames_are_for_video(self) -> PromptEntry:
        if self.frames is not None and self.kind == "image":
            raise ValueError("frames is an option of video prompts, and this one is kind: image")
        return self


def read_prompts_file(path: Path) -> list[PromptEntry]:
    """The prompts of a `.txt` file (one a line; blank lines and # comments skipped) or a `.yaml`/`.yml` list."""
    suffix = path.suffix.lower()
    if suffix not in TEXT_SUFFIXES + YAML_SUFFIXES:
        raise PromptsFileProblem(
            path, [f"unknown kind of file {suffix!r}: use .txt (one prompt a line) or .yaml (a list of prompts)"]
        )
    text = _read_text(path)
    return _yaml_entries(path, text) if suffix in YAML_SUFFIXES else _text_entries(path, text)


def _read_text(path: Path) -> str:
    try:
        if path.is_dir():
            raise PromptsFileProblem(path, ["is a folder, not a file"])
        data = read_at_most(path, MAX_PROMPTS_FILE_BYTES, "", "a prompts file")
    except TooBig as exc:
        raise PromptsFileProblem(path, [exc.problem]) from None
    except FileNotFoundError:
        raise PromptsFileProblem(path, ["no such file"]) from None
    except OSError as exc:
        raise PromptsFileProblem(path, [f"cannot be read ({exc.strerror or exc.__class__.__name__})"]) from None
    if b"\0" in data:
        raise PromptsFileProblem(path, ["is not text: it holds NUL bytes (a binary file, or UTF-16: save it as UTF-8)"])
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise PromptsFileProblem(
            path, [f"is not text: byte 0x{data[exc.start]:02x} at offset {exc.start} is not UTF-8"]
        ) from None
    if not text.strip():
        raise PromptsFileProblem(path, ["is empty"])
    return text


def _text_entries(path: Path, text: str) -> list[PromptEntry]:
    entries, problems = [], []
    # Split on newlines only: str.splitlines also breaks at form feeds and other separators inside a line.
    lines = [(number, line.strip()) for number, line in enumerate(text.split("\n"), start=1)]
    lines = [(number, line) for number, line in lines if line and not line.startswith("#")]
    _check_count(path, len(lines))
    for number, line in lines:
        if len(line) > MAX_PROMPT_CHARS:
            problems.append(f"line {number}: {_too_long('the prompt', line)}")
            continue
        control = control_character(line)
        if control is not None:
            problems.append(f"line {number}: control character U+{ord(control):04X}: is it text?")
            continue
        entries.append(PromptEntry(prompt=line))
    if problems:
        raise PromptsFileProblem(path, problems)
    if not entries:
        raise PromptsFileProblem(path, ["holds no prompts, only blank lines and # comments"])
    return entries


def _yaml_entries(path: Path, text: str) -> list[PromptEntry]:
    # A SafeLoader builds plain data only; its node tree gives each entry's line.
    try:
        node, data = compose_yaml(text)
    except TooBig as exc:
        raise PromptsFileProblem(path, [exc.problem]) from None
    except yaml.YAMLError as exc:
        raise PromptsFileProblem(path, [f"not valid YAML ({_yaml_problem(exc)})"]) from None
    if data is None or data == []:
        raise PromptsFileProblem(path, ["holds no prompts"])
    if not isinstance(data, list) or not isinstance(node, yaml.SequenceNode):
        raise PromptsFileProblem(
            path, [f"must be a list of prompts (text, or mappings with a prompt and options), not {_kind(data)}"]
        )
    _check_count(path, len(data))
    entries, problems = [], []
    for index, (raw, item) in enumerate(zip(data, node.value, strict=True), start=1):
        where = f"entry {index} (line {item.start_mark.line + 1})"
        if isinstance(raw, str):
            raw = {"prompt": raw}
        if not isinstance(raw, dict):
            problems.append(f"{where}: a prompt is text or a mapping with a prompt and options, not {_kind(raw)}")
            continue
        long = [
            _too_long(option, raw[option])
            for option in ("prompt", "negative_prompt")
            if isinstance(raw.get(option), str) and len(raw[option].strip()) > MAX_PROMPT_CHARS
        ]
        if long:
            problems += [f"{where}: {problem}" for problem in long]
            continue
        unknown = [key for key in raw if key not in PromptEntry.model_fields]
        if unknown:
            names = ", ".join(repr(key) for key in unknown)
            known = ", ".join(PromptEntry.model_fields)
            problems.append(f"{where}: unknown option{'s' if len(unknown) > 1 else ''} {names}; known: {known}")
            continue
        try:
            entries.append(PromptEntry.model_validate(raw))
        except ValidationError as exc:
            problems += [f"{where}: {problem}" for problem in _validation_problems(exc)]
    if problems:
        raise PromptsFileProblem(path, problems)
    return entries


def control_character(text: str) -> str | None:
    """The first control character in a prompt (a tab is fine): a sign it is not text."""
    return next((ch for ch in text if ch != "\t" and unicodedata.category(ch) == "Cc"), None)


def _check_count(path: Path, count: int) -> None:
    if count > MAX_PROMPTS:
        raise PromptsFileProblem(
            path, [f"holds {count} prompts; a prompts file may hold at most {MAX_PROMPTS}: split it into several runs"]
        )


def _too_long(what: str, text: str) -> str:
    return f"{what} is {len(text.strip())} characters; a prompt may be at most {MAX_PROMPT_CHARS}"


def _yaml_problem(exc: yaml.YAMLError) -> str:
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        return f"line {mark.line + 1}, column {mark.column + 1}: {exc.problem}"
    return str(exc).splitlines()[0]


def _kind(value: object) -> str:
    """A value's type in the words of the YAML a user writes."""
    if value is None:
        return "nothing"
    words = {bool: "true or false", str: "text", int: "a number", float: "a number", dict: "a mapping", list: "a list"}
    return words.get(type(value), f"a {type(value).__name__}")


def _validation_problems(error: ValidationError) -> list[str]:
    """pydantic's errors as one line each: the option, its value where it is one, the message."""
    problems = []
    for detail in error.errors(include_url=False):
        option = ".".join(str(part) for part in detail["loc"])
        message = detail["msg"].removeprefix("Value error, ")
        value = detail.get("input")
        if detail["type"] == "missing":
            problems.append(f"no {option}")
        elif detail["type"] == "string_too_short":
            problems.append(f"{option} is empty")
        elif not option:
            problems.append(message)
        elif isinstance(value, str | int | float) and not isinstance(value, bool):
            problems.append(f"{option}={value!r}: {message}")
        else:
            problems.append(f"{option}: {message}")
    return problems

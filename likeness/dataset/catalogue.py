"""The variation catalogue: each entry is one edit of the reference image, with what it shows.

The catalogue is data: `catalogue/default.yaml` ships with Likeness, and a user's file adds entries or
replaces them by id, without code. The labels (view, expression, framing, tags) go into the caption,
so the LoRA learns to tie them to words. An entry expands into shots, the images the dataset makes:
one per emotion intensity, one per garment or pose image, else one. The entries, shots and catalogue themselves
are `likeness.dataset.entries`'s (their names are importable from here too); this module reads them from files.

    catalogue = load_catalogue(Path("mine.yaml"))   # the default, with mine.yaml on top
    for shot in catalogue.shots(garments=1):
        width, height = shot_size(shot.aspect, 1024, 16)
        print(shot.id, width, height, shot.prompt)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from likeness.dataset.entries import (
    ASPECTS,
    MAX_ID_LENGTH,
    PLACEHOLDERS,
    Catalogue,
    Entry,
    InvalidCatalogue,
    Level,
    Shot,
    check_inputs_used,
    placeholders_known,
    shot_clashes,
    shot_size,
)
from likeness.inputs import TooBig, compose_yaml, read_at_most

__all__ = [
    "ASPECTS",
    "DEFAULT_CATALOGUE",
    "MAX_ID_LENGTH",
    "PLACEHOLDERS",
    "Catalogue",
    "Entry",
    "InvalidCatalogue",
    "MAX_CATALOGUE_ENTRIES",
    "MAX_CATALOGUE_FILE_BYTES",
    "MAX_CATALOGUE_JSON_BYTES",
    "Level",
    "Shot",
    "check_inputs_used",
    "load_catalogue",
    "shot_size",
]

DEFAULT_CATALOGUE = Path(__file__).parent / "catalogue" / "default.yaml"
# What a person hands in with --catalogue (or a deployment's catalogue): refused before it is parsed when it is
# bigger, and before its entries are checked when it has more; --beyond-limits does not lift them. The default is
# 14 KB for 23 entries and a profile's soft limit is 60 shots (limits.dataset.variations), so 500 entries are far
# more than a dataset uses. Parsing a file at the cap takes about a second; a 50 MB one took minutes.
MAX_CATALOGUE_FILE_BYTES = 2**20
MAX_CATALOGUE_ENTRIES = 500
# The JSON copy of a whole catalogue that the CLI stores for a deployment's stages: every entry with its defaults
# spelled out and its file's keep sentence in its prompt, about 1.6 times the YAML (the default's is 17 KB).
MAX_CATALOGUE_JSON_BYTES = 16 * 2**20
_TOP_LEVEL_KEYS = ("keep", "entries")
# pydantic's words for Python types, in the words of the YAML a user writes.
_YAML_WORDS = {
    "Input should be a valid tuple": "Input should be a list",
    "Input should be a valid dictionary or instance of Level": "Input should be a mapping like {upto: 1.0, words: ...}",
}


def load_catalogue(extra: Path | None = None) -> Catalogue:
    """The default catalogue, then `extra` on top: an entry with the same id replaces, a new id is added."""
    files = [DEFAULT_CATALOGUE] if extra is None else [DEFAULT_CATALOGUE, Path(extra)]
    merged: dict[str, tuple[Entry, str]] = {}
    keep = ""
    for path in files:
        keep, entries = _read_file(path, keep)
        merged.update((entry.id, (entry, where)) for entry, where in entries)
    entries = [entry for entry, _ in merged.values()]
    problems = [
        f"{merged[b.id][1]}: makes shot {shot_id!r}, as does {merged[a.id][1]}"
        for a, b, shot_id in shot_clashes(entries)
    ]
    if problems:
        raise InvalidCatalogue(problems)
    return Catalogue(entries=tuple(entries), sources=tuple(str(path) for path in files))


class _FileEntry(Entry):
    # In a file only: whether the file's `keep` sentence is appended to the prompt.
    keep: bool = True


class _StrictKeysLoader(yaml.SafeLoader):
    """YAML that refuses a key written twice in one mapping (PyYAML keeps the last one silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        # Checked before merge keys (`<<: *emotion`) are expanded: keys a merge brings in may be overridden.
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:str":
                if key_node.value in seen:
                    problem = f"key {key_node.value!r} written twice"
                    raise yaml.constructor.ConstructorError(None, None, problem, key_node.start_mark)
                seen.add(key_node.value)
        return super().construct_mapping(node, deep)


def _read_file(path: Path, inherited_keep: str) -> tuple[str, list[tuple[Entry, str]]]:
    """A file's `keep` sentence and its entries, each with a label naming the file and the entry."""
    name = f"catalogue {path}"
    try:
        text = read_at_most(path, MAX_CATALOGUE_FILE_BYTES, name, "a catalogue").decode("utf-8")
        # A SafeLoader: builds plain data only, never Python objects.
        _, data = compose_yaml(text, _StrictKeysLoader)
    except FileNotFoundError:
        raise InvalidCatalogue([f"{name}: no such file"]) from None
    except TooBig as exc:
        raise InvalidCatalogue([f"{name}: {exc.problem}"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidCatalogue([f"{name}: cannot be read as UTF-8 text ({exc.__class__.__name__})"]) from None
    except yaml.YAMLError as exc:
        raise InvalidCatalogue([f"{name}: not valid YAML ({_yaml_problem(exc)})"]) from None
    if not isinstance(data, dict):
        raise InvalidCatalogue([f"{name}: must be a mapping with an 'entries' list, not {_kind(data)}"])
    known = ", ".join(_TOP_LEVEL_KEYS)
    problems = [f"{name}: unknown top-level key {key!r}; known: {known}" for key in data if key not in _TOP_LEVEL_KEYS]
    keep = data.get("keep", inherited_keep)
    if not isinstance(keep, str):
        problems.append(f"{name}: keep must be a sentence (text), not {_kind(keep)}")
        keep = ""
    else:
        try:
            keep = placeholders_known(keep.strip())
        except ValueError as exc:
            problems.append(f"{name}: keep: {exc}")
            keep = ""
    raw_entries = data.get("entries")
    if not isinstance(raw_entries, list) or not raw_entries:
        problems.append(f"{name}: no entries: 'entries' must be a non-empty list, not {_kind(raw_entries)}")
        raw_entries = []
    if len(raw_entries) > MAX_CATALOGUE_ENTRIES:
        raise InvalidCatalogue(
            [f"{name}: has {len(raw_entries)} entries; a catalogue may have at most {MAX_CATALOGUE_ENTRIES}"]
        )
    entries: list[tuple[Entry, str]] = []
    first_index: dict[str, int] = {}
    for index, raw in enumerate(raw_entries, start=1):
        raw_id = raw.get("id") if isinstance(raw, dict) else None
        where = f"{name}, entry {raw_id!r} (#{index})" if isinstance(raw_id, str) else f"{name}, entry #{index}"
        if not isinstance(raw, dict):
            problems.append(f"{where}: must be a mapping of keys to values, not {_kind(raw)}")
            continue
        try:
            parsed = _FileEntry.model_validate(raw)
        except ValidationError as exc:
            problems += [f"{where}: {problem}" for problem in _validation_problems(exc)]
            continue
        if parsed.id in first_index:
            problems.append(f"{where}: duplicate id, first used by entry #{first_index[parsed.id]}")
            continue
        first_index[parsed.id] = index
        fields = parsed.model_dump(exclude={"keep"})
        if parsed.keep and keep:
            fields["prompt"] = f"{_sentence(parsed.prompt)} {keep}"
        entries.append((Entry.model_validate(fields), where))
    if problems:
        raise InvalidCatalogue(problems)
    return keep, entries


def _sentence(text: str) -> str:
    return text if text.endswith((".", "!", "?")) else f"{text}."


def _kind(value: object) -> str:
    return "nothing" if value is None else f"a {type(value).__name__}"


def _yaml_problem(exc: yaml.YAMLError) -> str:
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        return f"line {mark.line + 1}, column {mark.column + 1}: {exc.problem}"
    return str(exc).splitlines()[0]


def _validation_problems(error: ValidationError) -> list[str]:
    """pydantic's errors as one line each: the key's path, the value where it is one, the message."""
    problems = []
    for detail in error.errors(include_url=False):
        path = _path(detail["loc"])
        message = detail["msg"].removeprefix("Value error, ")
        message = _YAML_WORDS.get(message, message)
        value = detail.get("input")
        if detail["type"] == "extra_forbidden":
            parent = _path(detail["loc"][:-1])
            problems.append(f"{parent + ': ' if parent else ''}unknown key {detail['loc'][-1]!r}")
        elif detail["type"] == "missing":
            problems.append(f"missing key {path!r}")
        elif not path:
            problems += message.splitlines()
        elif isinstance(value, str | int | float) and not isinstance(value, bool):
            problems.append(f"{path}={value!r}: {message}")
        else:
            problems.append(f"{path}: {message}")
    return problems


def _path(loc: Sequence[int | str]) -> str:
    """A key's place in an entry as written in messages: levels[0].upto."""
    return "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc).lstrip(".")

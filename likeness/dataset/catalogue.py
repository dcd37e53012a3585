"""The variation catalogue: each entry is one edit of the reference image, with what it shows.

The catalogue is data: `catalogue/default.yaml` ships with Likeness, and a user's file adds entries or
replaces them by id, without code. The labels (view, expression, framing, tags) go into the caption,
so the LoRA learns to tie them to words. An entry expands into shots, the images the dataset makes:
one per emotion intensity, one per garment or pose image, else one.

    catalogue = load_catalogue(Path("mine.yaml"))   # the default, with mine.yaml on top
    for shot in catalogue.shots(garments=1):
        width, height = shot_size(shot.aspect, 1024, 16)
        print(shot.id, width, height, shot.prompt)
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from string import Formatter
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    model_validator,
)

from likeness.inputs import InvalidInput

DEFAULT_CATALOGUE = Path(__file__).parent / "catalogue" / "default.yaml"
# Width to height; AI Toolkit buckets images by aspect, so each entry picks the one that suits its framing.
ASPECTS: dict[str, tuple[int, int]] = {"portrait": (3, 4), "square": (1, 1), "landscape": (4, 3)}
PLACEHOLDERS = frozenset({"expression"})
MAX_ID_LENGTH = 48
_SLUG = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")
_TOP_LEVEL_KEYS = ("keep", "entries")
# pydantic's words for Python types, in the words of the YAML a user writes.
_YAML_WORDS = {
    "Input should be a valid tuple": "Input should be a list",
    "Input should be a valid dictionary or instance of Level": "Input should be a mapping like {upto: 1.0, words: ...}",
}


class InvalidCatalogue(InvalidInput):
    """A catalogue Likeness refuses, one line per problem, each naming the file and the entry."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = tuple(problems)
        super().__init__("\n".join(self.problems))


def _slug(value: str) -> str:
    if len(value) > MAX_ID_LENGTH or not _SLUG.fullmatch(value):
        raise ValueError(
            f"not a slug: use lowercase letters, digits and single hyphens, at most {MAX_ID_LENGTH} characters"
        )
    return value


def _placeholders_known(text: str) -> str:
    try:
        fields = [(name, spec, conversion) for _, name, spec, conversion in Formatter().parse(text) if name is not None]
    except ValueError as exc:
        raise ValueError(f"{exc} (write {{{{ and }}}} for literal braces)") from None
    for name, spec, conversion in fields:
        if name not in PLACEHOLDERS or spec or conversion:
            raise ValueError(
                f"unknown placeholder {{{name}{'!' + conversion if conversion else ''}{':' + spec if spec else ''}}}; "
                f"known: {', '.join('{' + p + '}' for p in sorted(PLACEHOLDERS))}"
            )
    return text


Slug = Annotated[str, AfterValidator(_slug)]
Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]
# Caption words that an entry may leave empty (a back view shows no expression).
Words = Annotated[str, StringConstraints(strip_whitespace=True)]
Group = Literal["turnaround", "pose", "emotion", "closeup", "try-on", "pose-transfer", "background", "lighting"]
Aspect = Literal["portrait", "square", "landscape"]
Needs = Literal["garment", "pose"]
# The second input image each input-taking group edits with.
_GROUP_NEEDS: dict[str, str] = {"try-on": "garment", "pose-transfer": "pose"}


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class Level(_Frozen):
    """The words for emotion intensities up to `upto`, e.g. 0.4 -> "slight smile"."""

    upto: float = Field(gt=0, le=1)
    words: Text


class Shot(_Frozen):
    """One image the dataset makes: the full edit instruction and the caption tags it gets."""

    id: str
    entry: str
    group: str
    prompt: str
    tags: tuple[str, ...]
    intensity: float | None
    aspect: str
    needs: str | None
    input_index: int | None
    face: str
    closeup: bool


class Entry(_Frozen):
    """One edit of the reference image, with the caption words of what it shows."""

    id: Slug
    group: Group
    prompt: Annotated[Text, AfterValidator(_placeholders_known)]
    view: Words
    framing: Text
    expression: Words = "neutral expression"
    levels: tuple[Level, ...] = ()
    intensities: tuple[Annotated[float, Field(ge=0, le=1)], ...] = ()
    aspect: Aspect = "portrait"
    needs: Needs | None = None
    face: Literal["shown", "hidden", "any"] = "shown"
    closeup: bool = False
    tags: tuple[Text, ...] = ()

    @model_validator(mode="after")
    def _consistent(self) -> Entry:
        problems = []
        if self.levels and not self.intensities:
            problems.append("levels without intensities make no shot: add intensities, e.g. [0.3, 1.0]")
        if self.intensities and not self.levels:
            problems.append("intensities need levels (the words for each intensity)")
        uptos = [level.upto for level in self.levels]
        if uptos and (uptos != sorted(set(uptos)) or uptos[-1] != 1.0):
            problems.append(f"levels must rise strictly and the last must reach 1.0; upto: {uptos}")
        ids = [_intensity_id(self.id, x) for x in self.intensities]
        if len(set(ids)) != len(ids):
            problems.append(f"intensities repeat (in hundredths): {list(self.intensities)}")
        if self.needs and self.intensities:
            problems.append(f"needs {self.needs!r} and intensities cannot be combined")
        expected = _GROUP_NEEDS.get(self.group)
        if self.needs != expected:
            takes = f"needs: {expected}" if expected else "no second image"
            problems.append(f"group {self.group!r} takes {takes}, not needs: {self.needs}")
        if problems:
            raise ValueError("\n".join(problems))
        return self

    def words(self, intensity: float) -> str:
        """The words of the first level that reaches `intensity`."""
        return next(level.words for level in self.levels if intensity <= level.upto)

    def shots(self, inputs: int = 0) -> list[Shot]:
        """This entry's shots: one per intensity, one per input image when it needs one, else one."""
        if self.needs:
            return [self._shot(f"{self.id}-{i + 1}", self.expression, None, i) for i in range(inputs)]
        if self.intensities:
            return [self._shot(_intensity_id(self.id, x), self.words(x), x, None) for x in self.intensities]
        return [self._shot(self.id, self.expression, None, None)]

    def _shot(self, shot_id: str, words: str, intensity: float | None, input_index: int | None) -> Shot:
        return Shot(
            id=shot_id,
            entry=self.id,
            group=self.group,
            prompt=self.prompt.format(expression=words),
            tags=tuple(tag for tag in (self.view, words, self.framing, *self.tags) if tag),
            intensity=intensity,
            aspect=self.aspect,
            needs=self.needs,
            input_index=input_index,
            face=self.face,
            closeup=self.closeup,
        )


def _intensity_id(entry_id: str, intensity: float) -> str:
    return f"{entry_id}-{round(intensity * 100)}"


def _clashes(entries: Sequence[Entry]) -> list[tuple[Entry, Entry, str]]:
    """Pairs of entries whose shots would share an id (so a file would overwrite another), with that id."""
    owners: dict[str, Entry] = {}
    clashes = []
    for entry in entries:
        for shot_id in dict.fromkeys([entry.id] + [shot.id for shot in entry.shots()]):
            if shot_id in owners and owners[shot_id] is not entry:
                clashes.append((owners[shot_id], entry, shot_id))
            owners.setdefault(shot_id, entry)
    for entry in entries:
        if entry.needs:
            numbered = re.compile(rf"{re.escape(entry.id)}-[0-9]+")
            clashes += [
                (entry, owner, i) for i, owner in owners.items() if owner is not entry and numbered.fullmatch(i)
            ]
    return clashes


class Catalogue(_Frozen):
    """The entries a dataset is made from, and the files they were read from."""

    entries: tuple[Entry, ...] = Field(min_length=1)
    sources: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _shot_ids_unique(self) -> Catalogue:
        problems = [
            f"entries {a.id!r} and {b.id!r} both make shot {shot_id!r}" for a, b, shot_id in _clashes(self.entries)
        ]
        if problems:
            raise ValueError("\n".join(problems))
        return self

    def ids(self) -> list[str]:
        """The entry ids, in catalogue order."""
        return [entry.id for entry in self.entries]

    def entry(self, entry_id: str) -> Entry:
        """The entry with this id."""
        return self._select([entry_id])[0]

    def shots(self, only: Sequence[str] | None = None, garments: int = 0, poses: int = 0) -> list[Shot]:
        """The shots of the entries in `only` (all when None), in catalogue order, for the given input images."""
        if garments < 0 or poses < 0:
            raise ValueError(f"garments and poses cannot be negative: {garments}, {poses}")
        inputs = {"garment": garments, "pose": poses, None: 0}
        entries = self.entries if only is None else self._select(only)
        return [shot for entry in entries for shot in entry.shots(inputs[entry.needs])]

    def _select(self, only: Sequence[str]) -> list[Entry]:
        known = self.ids()
        unknown = [i for i in dict.fromkeys(only) if i not in known]
        if unknown:
            raise InvalidCatalogue(
                [f"unknown catalogue entries {', '.join(map(repr, unknown))}; known: {', '.join(known)}"]
            )
        return [entry for entry in self.entries if entry.id in only]


def check_inputs_used(shots: Sequence[Shot], garments: int, poses: int) -> None:
    """Refuse garment or pose images that no chosen shot uses: they would be dropped without a word."""
    for kind, count, entry in (("garment", garments, "try-on"), ("pose", poses, "pose-transfer")):
        if count and not any(shot.needs == kind for shot in shots):
            raise InvalidCatalogue(
                [
                    f"{count} {kind} image(s) given, but none of the chosen catalogue entries uses one: add an "
                    f"entry with `needs: {kind}` (the default's is {entry}) to dataset.variations"
                ]
            )


def shot_size(aspect: str, long_side: int, multiple: int) -> tuple[int, int]:
    """Width and height for `aspect`: the long side `long_side`, both sides multiples of `multiple`."""
    if aspect not in ASPECTS:
        raise ValueError(f"unknown aspect {aspect!r}; known: {', '.join(ASPECTS)}")
    if multiple < 1 or long_side < multiple or long_side % multiple:
        raise ValueError(f"long side {long_side} is not a positive multiple of {multiple}")
    width, height = ASPECTS[aspect]
    short = max(multiple, round(long_side * min(width, height) / max(width, height) / multiple) * multiple)
    return (long_side, short) if width >= height else (short, long_side)


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
        f"{merged[b.id][1]}: makes shot {shot_id!r}, as does {merged[a.id][1]}" for a, b, shot_id in _clashes(entries)
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
        # A SafeLoader: builds plain data only, never Python objects.
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_StrictKeysLoader)
    except FileNotFoundError:
        raise InvalidCatalogue([f"{name}: no such file"]) from None
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
            keep = _placeholders_known(keep.strip())
        except ValueError as exc:
            problems.append(f"{name}: keep: {exc}")
            keep = ""
    raw_entries = data.get("entries")
    if not isinstance(raw_entries, list) or not raw_entries:
        problems.append(f"{name}: no entries: 'entries' must be a non-empty list, not {_kind(raw_entries)}")
        raw_entries = []
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

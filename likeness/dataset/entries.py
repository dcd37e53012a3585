"""The catalogue's data: an entry (one edit of the reference image, with the caption words of what it shows), the
shots it expands into (one per emotion intensity, one per garment or pose image, else one), and a catalogue of
entries, whose shot ids must not clash. Reading them from YAML files is `likeness.dataset.catalogue`'s.

    entry = Entry(id="wave", group="pose", prompt="Make the person wave.", view="front view", framing="full body")
    [shot.id for shot in entry.shots()]       # ["wave"]
    shot_size("portrait", 1024, 16)           # (768, 1024)
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from string import Formatter
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, model_validator

from likeness.inputs import InvalidInput

# Width to height; AI Toolkit buckets images by aspect, so each entry picks the one that suits its framing.
ASPECTS: dict[str, tuple[int, int]] = {"portrait": (3, 4), "square": (1, 1), "landscape": (4, 3)}
PLACEHOLDERS = frozenset({"expression"})
MAX_ID_LENGTH = 48
_SLUG = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")


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


def placeholders_known(text: str) -> str:
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
    prompt: Annotated[Text, AfterValidator(placeholders_known)]
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


def shot_clashes(entries: Sequence[Entry]) -> list[tuple[Entry, Entry, str]]:
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
            f"entries {a.id!r} and {b.id!r} both make shot {shot_id!r}" for a, b, shot_id in shot_clashes(self.entries)
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

"""Batch production: a manifest of characters, one `likeness produce` each, at most `concurrency` at once.

A manifest is a YAML list of mappings or a CSV with a header row; each row names a character and its reference
photo (a path relative to the manifest), and may give `out`, `profile`, `garment`, `pose` and `set` (settings as
`section.field=value`; `;`-separated in a CSV). A manifest that cannot be read, is bigger than
`MAX_MANIFEST_FILE_BYTES`, has more than `MAX_MANIFEST_ROWS` rows, has a column Likeness does not know or names a
character twice is refused whole, before anything runs; a row whose photo is missing or whose values are wrong is
reported with its row number while the other rows run. A character whose output folder is already up to date for
the same inputs is answered from it, as `likeness produce` is.

A row's `image`, `garment`, `pose` and `out` stay inside the manifest's folder (for a manifest in the store or a
bucket, its prefix): a path that leaves it (`..`, an absolute path, a symlink out) or a URL is refused with the
row's number, before anything is read or written, so whoever may write a manifest where a batch or the inbox
deployment reads it cannot make a worker read or write anything else. Only `likeness batch --allow-outside`, on
a person's own machine, lifts this (`allow_outside`, and `outside_allowed` around its flow); deployments never do.

    rows, problems = read_manifest(Path("characters.yaml"))
    results = produce_rows(rows, concurrency=2, logs=Path("likeness-data/logs/batch"))
"""

from __future__ import annotations

import csv
import io
import re
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from likeness.config import InvalidSettings
from likeness.inputs import InvalidInput, TooBig, compose_yaml, normalise_trigger, parse_overrides, read_at_most
from likeness.run.progress import announce
from likeness.storage.locations import read_location

COLUMNS = ("name", "image", "out", "profile", "garment", "pose", "set")
REQUIRED = ("name", "image")
# The columns that name files: each stays inside the manifest's folder (or prefix).
PATH_COLUMNS = ("image", "garment", "pose", "out")
# A manifest is a few lines a character: 1000 rows of 100 bytes are a tenth of the file cap. Both are refused
# before anything is parsed or checked (a larger file, more rows), whoever hands the manifest in; parsing a file at
# the cap takes a few seconds.
MAX_MANIFEST_FILE_BYTES = 2**20
MAX_MANIFEST_ROWS = 1000
# What a refusal of a path outside says, and what `likeness batch` looks for to say how to allow it.
OUTSIDE = "outside the manifest's folder"
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")

# Set only by `likeness batch --allow-outside` around its own flow run, in its own process; a deployment's run
# cannot set it (the batch flows take no such parameter), and the flow ignores it when run from a deployment.
_OUTSIDE_ALLOWED: ContextVar[bool] = ContextVar("likeness_batch_outside_allowed", default=False)


class ManifestProblem(InvalidInput):
    """A manifest that cannot run at all: unreadable, an unknown column, a name given twice."""


class BatchRow(BaseModel):
    """One character of a batch, as `likeness produce` takes it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    row: int
    name: str
    # Paths on this machine, or (for a manifest in the store or a bucket) locations as `read_location` takes them.
    image: str
    out: Path
    profile: str | None = None
    garment: tuple[str, ...] = ()
    pose: tuple[str, ...] = ()
    set: tuple[str, ...] = ()

    @field_validator("set")
    @classmethod
    def _assignments(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        for value in values:
            if "=" not in value:
                raise ValueError(f"{value!r} is not of the form section.field=value")
        return values

    def produce_args(self) -> list[str]:
        """The arguments of the `likeness produce` run of this row."""
        args = ["produce", self.name, "--image", self.image, "--out", str(self.out)]
        args += ["--profile", self.profile] if self.profile else []
        for garment in self.garment:
            args += ["--garment", garment]
        for pose in self.pose:
            args += ["--pose", pose]
        for assignment in self.set:
            args += ["--set", assignment]
        return args

    def produce_parameters(self, profile: str) -> dict[str, Any]:
        """The parameters of the `produce-character` deployment run of this row (`profile` when the row has none)."""
        parameters: dict[str, Any] = {"name": self.name, "reference": self.image, "profile": self.profile or profile}
        if self.garment:
            parameters["garments"] = list(self.garment)
        if self.pose:
            parameters["poses"] = list(self.pose)
        if self.set:
            parameters["overrides"] = parse_overrides(list(self.set))
        return parameters


@contextmanager
def outside_allowed(allowed: bool = True) -> Iterator[None]:
    """Within it, `outside_is_allowed()` is `allowed`: how `likeness batch --allow-outside` tells its own flow run."""
    token = _OUTSIDE_ALLOWED.set(allowed)
    try:
        yield
    finally:
        _OUTSIDE_ALLOWED.reset(token)


def outside_is_allowed() -> bool:
    return _OUTSIDE_ALLOWED.get()


def read_manifest(
    path: Path,
    out_root: Path = Path("likeness-out"),
    remote_base: str | None = None,
    allow_outside: bool = False,
) -> tuple[list[BatchRow], list[tuple[int, str]]]:
    """The manifest's good rows, and each broken row's number and problem.

    Rows count from 1 (a CSV's header is not a row). `ManifestProblem` when the whole manifest cannot run.
    `remote_base`: the manifest was fetched from there (an s3:// URL or store key prefix, ending in '/'); its
    images are named relative to it, and their first task reads them. A row's paths must stay inside the
    manifest's folder (or `remote_base`); `allow_outside` (a local manifest only) lets them go anywhere."""
    records = _records(path)
    if len(records) > MAX_MANIFEST_ROWS:
        raise ManifestProblem(
            f"manifest {path} has {len(records)} rows; a manifest may have at most {MAX_MANIFEST_ROWS}: "
            "split it into several"
        )
    unknown = sorted({column for record in records for column in record} - set(COLUMNS))
    if unknown:
        raise ManifestProblem(
            f"manifest {path}: unknown column {', '.join(map(repr, unknown))}; the columns are {', '.join(COLUMNS)}"
        )
    triggers: dict[str, int] = {}
    for number, record in enumerate(records, start=1):
        if record.get("name"):
            trigger = normalise_trigger(str(record["name"]))
            if trigger in triggers:
                raise ManifestProblem(
                    f"manifest {path}: rows {triggers[trigger]} and {number} are both {trigger!r}; "
                    "each character once (its trigger word names its output folder)"
                )
            triggers[trigger] = number
    rows, problems = [], []
    for number, record in enumerate(records, start=1):
        try:
            rows.append(_row(number, record, path.parent, out_root, remote_base, allow_outside))
        except (InvalidInput, ValidationError, ValueError) as exc:
            reason = InvalidSettings.from_validation_error(exc).problems if isinstance(exc, ValidationError) else [exc]
            problems.append((number, "; ".join(map(str, reason))))
    return rows, problems


def _records(path: Path) -> list[dict[str, Any]]:
    try:
        text = read_at_most(path, MAX_MANIFEST_FILE_BYTES, f"manifest {path}", "a manifest").decode("utf-8")
    except TooBig as exc:
        raise ManifestProblem(str(exc)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestProblem(f"manifest {path} cannot be read: {exc}") from None
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(io.StringIO(text))
        records = [{key: value for key, value in row.items() if value not in (None, "")} for row in reader]
        if None in (reader.fieldnames or []) or any(None in row for row in records):
            raise ManifestProblem(f"manifest {path}: a row has more cells than the header has columns")
    elif path.suffix.lower() in (".yaml", ".yml"):
        try:
            _, records = compose_yaml(text)
        except TooBig as exc:
            raise ManifestProblem(f"manifest {path} {exc.problem}") from None
        except yaml.YAMLError as exc:
            raise ManifestProblem(f"manifest {path} is not valid YAML: {exc}") from None
        if not isinstance(records, list) or not all(isinstance(record, dict) for record in records):
            raise ManifestProblem(f"manifest {path}: a YAML manifest is a list of mappings, one per character")
    else:
        raise ManifestProblem(f"manifest {path}: a manifest is a .yaml, .yml or .csv file")
    if not records:
        raise ManifestProblem(f"manifest {path} names no character")
    return records


def _row(
    number: int, record: dict[str, Any], base: Path, out_root: Path, remote_base: str | None, allow_outside: bool
) -> BatchRow:
    missing = [column for column in REQUIRED if not record.get(column)]
    if missing:
        raise InvalidInput(f"no {' or '.join(missing)}")
    trigger = normalise_trigger(str(record["name"]))
    images = {
        "image": [str(record["image"])],
        "garment": [str(item) for item in _listed(record.get("garment"))],
        "pose": [str(item) for item in _listed(record.get("pose"))],
    }
    named = {**images, "out": [str(record["out"])] if record.get("out") else []}
    # Every path is checked before any is looked at, so a row that names one outside reads nothing.
    outside = [
        problem
        for column, names in named.items()
        for name in names
        if (problem := _outside(column, name, base, remote_base, allow_outside))
    ]
    if outside:
        raise InvalidInput("; ".join(outside))
    if remote_base is None:
        images = {column: [str(base / name) for name in names] for column, names in images.items()}
        absent = [name for names in images.values() for name in names if not Path(name).is_file()]
        if absent:
            raise InvalidInput(f"the image {', '.join(absent)} does not exist")
    else:
        images = {column: [remote_base + str(_relative(name)) for name in names] for column, names in images.items()}
    out = base / str(record["out"]) if record.get("out") else out_root / trigger
    profile = str(record["profile"]) if record.get("profile") else None
    return BatchRow(
        row=number,
        name=str(record["name"]),
        image=images["image"][0],
        out=out,
        profile=profile,
        garment=tuple(images["garment"]),
        pose=tuple(images["pose"]),
        set=tuple(str(item) for item in _listed(record.get("set"), separator=";")),
    )


def _outside(column: str, name: str, base: Path, remote_base: str | None, allow_outside: bool) -> str | None:
    """Why the path `name` of a row's `column` is outside the manifest's folder (`base`) or prefix (`remote_base`);
    None when it is inside, or when a local manifest's paths may go anywhere (`allow_outside`)."""
    said = f"{column} {name!r}"
    if remote_base is not None:
        where = f"outside the manifest's prefix {remote_base!r}" if remote_base else "outside the store"
        # Under an https:// manifest, a server may decode %2e%2e as '..': the decoded path must stay inside too.
        decoded = unquote(name) if urlsplit(remote_base).scheme in ("http", "https") else name
    elif allow_outside:
        return None
    else:
        where, decoded = OUTSIDE, name
    if _URL.match(name):
        return f"{said} is a URL, {where}"
    if name.startswith("/") or decoded.startswith("/"):
        return f"{said} is an absolute path, {where}"
    if _relative(name) is None or _relative(decoded) is None:
        return f"{said} goes up with '..', {where}"
    if remote_base is None:
        # Symlinks are followed, as reading the file would: a link inside the folder that leads out is outside.
        try:
            inside = (base / name).resolve().is_relative_to(base.resolve())
        except (OSError, RuntimeError):  # a symlink loop
            inside = False
        if not inside:
            return f"{said} leads through a symlink {where}"
    return None


def _relative(name: str) -> str | None:
    """`name` with its '.', '..' and empty segments folded away (`a/../b.jpg` is `b.jpg`); None when a '..'
    climbs above where it starts."""
    parts: list[str] = []
    for segment in name.split("/"):
        if segment == "..":
            if not parts:
                return None
            parts.pop()
        elif segment not in ("", "."):
            parts.append(segment)
    return "/".join(parts)


def read_manifest_at(location: str, allow_outside: bool = False) -> tuple[list[BatchRow], list[tuple[int, str]]]:
    """`read_manifest` of a manifest that is a path on this machine, an s3:// or https:// URL, or a store key; the
    bytes of one in the store or a bucket are read no further than `MAX_MANIFEST_FILE_BYTES`. `allow_outside`
    lets a manifest on this machine name paths outside its folder."""
    if Path(location).is_file():
        return read_manifest(Path(location), allow_outside=allow_outside)
    base = location.rsplit("/", 1)[0] + "/" if "/" in location else ""
    try:
        data = read_location(location, "manifest", max_bytes=MAX_MANIFEST_FILE_BYTES)
    except InvalidInput as exc:
        raise ManifestProblem(str(exc)) from None
    with tempfile.TemporaryDirectory() as folder:
        copy = Path(folder) / location.rsplit("/", 1)[-1]
        copy.write_bytes(data)
        try:
            return read_manifest(copy, remote_base=base)
        except ManifestProblem as exc:
            raise ManifestProblem(str(exc).replace(str(copy), location)) from None


def _listed(value: Any, separator: str = ",") -> Sequence[Any]:
    """A YAML list as it is, a CSV cell split at `separator`, nothing as nothing."""
    if value is None:
        return ()
    if isinstance(value, list):
        return value
    return [part.strip() for part in str(value).split(separator) if part.strip()]


def produce_rows(rows: Sequence[BatchRow], concurrency: int, logs: Path) -> list[dict[str, Any]]:
    """Run `likeness produce` for each row, at most `concurrency` at once, each logging to a file in `logs`; a
    line per row: its number, name, status (produced, up to date, or the error it ended with), output folder.
    Each row is announced as it starts and ends, and the totals at the end."""
    logs.mkdir(parents=True, exist_ok=True)

    def produce(row: BatchRow) -> dict[str, Any]:
        log = logs / f"row-{row.row}-{normalise_trigger(row.name)}.log"
        announce(f"row {row.row} {row.name}: started (log {log})")
        with log.open("w") as handle:
            command = [sys.executable, "-m", "likeness.cli", *row.produce_args()]
            code = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT).returncode
        said = log.read_text(errors="replace").splitlines()
        if code == 0:
            status = "up to date" if any("is up to date" in line for line in said) else "produced"
        else:
            status = next((line for line in reversed(said) if line.startswith("error:")), f"ended with exit {code}")
        announce(f"row {row.row} {row.name}: {status}")
        return {"row": row.row, "name": row.name, "status": status, "out": str(row.out), "log": str(log)}

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        results = list(pool.map(produce, rows))
    announce(batch_totals(results))
    return results


def batch_totals(results: Sequence[dict[str, Any]]) -> str:
    """One line: how many rows ended how."""
    counts = Counter(_outcome(result["status"]) for result in results)
    said = ", ".join(f"{counts[outcome]} {outcome}" for outcome in OUTCOMES if counts[outcome])
    return f"batch: {len(results)} rows, {said or 'none run'}"


OUTCOMES = ("produced", "up to date", "skipped", "failed")


def _outcome(status: str) -> str:
    if status == "produced":
        return "produced"
    if status == "up to date" or status.startswith("already produced"):
        return "up to date"
    return "skipped" if status.startswith("skipped") else "failed"

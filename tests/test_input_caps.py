"""What a person hands in cannot hang a run: a catalogue, a prompts file and a manifest are refused, naming the limit,
before they are parsed when they are too big, before their entries are checked when they hold too many, and a
manifest in the store or a bucket is read no further than its limit. Files at the limits still read."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from typer.testing import CliRunner

from likeness.cli.app import app
from likeness.dataset import catalogue
from likeness.dataset.catalogue import DEFAULT_CATALOGUE, InvalidCatalogue, load_catalogue
from likeness.inputs import MAX_YAML_VALUES, InvalidInput, TooBig, byte_size, compose_yaml
from likeness.render import prompt_files
from likeness.render.prompt_files import PromptsFileProblem, read_prompts_file
from likeness.run import batch
from likeness.run.batch import ManifestProblem, read_manifest, read_manifest_at
from likeness.storage.artifacts import get_store
from likeness.storage.local import LocalStore
from likeness.storage.locations import read_location
from likeness.storage.s3 import S3Store
from likeness.storage.store import ArtifactStore
from tests.photos import grace_hopper

ENTRY = "  - {id: wave, group: pose, prompt: Show the person waving., view: front view, framing: full body}\n"
# Ten nested aliases of ten: a few hundred bytes that are 10^10 values once expanded.
ALIAS_BOMB = "a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"a{n}: &a{n} [{', '.join([f'*a{n - 1}'] * 10)}]\n" for n in range(1, 10)
)


def padded(path: Path, text: str, size: int) -> Path:
    """`text` with a trailing comment that makes the file exactly `size` bytes."""
    pad = size - len(text.encode()) - 2
    assert pad >= 0
    path.write_text(text + "#" + "x" * pad + "\n")
    assert path.stat().st_size == size
    return path


def sparse(path: Path, size: int) -> Path:
    """A file that says it is `size` bytes and holds none on disk."""
    with path.open("wb") as handle:
        handle.truncate(size)
    return path


def only_the_default(text: str, loader: type) -> object:
    """`compose_yaml` for the default catalogue, which is read first; a test's own catalogue fails if parsed."""
    if text != DEFAULT_CATALOGUE.read_text(encoding="utf-8"):
        raise AssertionError("the file was parsed")
    return compose_yaml(text, loader)


@pytest.fixture
def no_yaml_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Parsing any YAML or CSV of a person's fails the test: a refusal must come before it."""

    def parsed(*args: object, **kwargs: object) -> None:
        raise AssertionError("the file was parsed")

    for module in (prompt_files, batch):
        monkeypatch.setattr(module, "compose_yaml", parsed)
    monkeypatch.setattr(catalogue, "compose_yaml", only_the_default)
    monkeypatch.setattr(prompt_files, "_text_entries", parsed)
    monkeypatch.setattr(batch.csv, "DictReader", parsed)


def test_byte_sizes_read_as_people_read_them() -> None:
    sizes = (812, 2**16, int(52.4 * 2**20), 2**20)
    assert [byte_size(n) for n in sizes] == ["812 bytes", "64 KiB", "52.4 MiB", "1 MiB"]


# The catalogue ------------------------------------------------------------------------------------------------------


def test_a_huge_catalogue_is_refused_from_its_size_naming_the_limit(tmp_path: Path, no_yaml_parsing: None) -> None:
    path = sparse(tmp_path / "catalogue.yaml", int(52.4 * 2**20))
    with pytest.raises(InvalidCatalogue) as caught:
        load_catalogue(path)
    assert str(caught.value) == f"catalogue {path}: is 52.4 MiB; a catalogue may be at most 1 MiB"


def test_a_catalogue_one_byte_over_the_limit_is_refused_unparsed_and_one_at_it_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    limit = catalogue.MAX_CATALOGUE_FILE_BYTES
    at = padded(tmp_path / "at.yaml", "entries:\n" + ENTRY, limit)
    assert "wave" in {entry.id for entry in load_catalogue(at).entries}

    over = padded(tmp_path / "over.yaml", "entries:\n" + ENTRY, limit + 1)
    monkeypatch.setattr(catalogue, "compose_yaml", only_the_default)
    with pytest.raises(InvalidCatalogue) as caught:
        load_catalogue(over)
    assert str(caught.value) == (
        f"catalogue {over}: is {limit + 1:,} bytes; a catalogue may be at most {limit:,} bytes (1 MiB)"
    )


def test_a_catalogue_of_too_many_entries_is_refused_before_they_are_checked(tmp_path: Path) -> None:
    most = catalogue.MAX_CATALOGUE_ENTRIES
    entries = "".join(ENTRY.replace("id: wave", f"id: wave-{n}") for n in range(most))
    (tmp_path / "most.yaml").write_text("entries:\n" + entries)
    assert len(load_catalogue(tmp_path / "most.yaml").entries) >= most
    over = tmp_path / "over.yaml"
    # Entries no check would let through: they are refused by their count alone.
    over.write_text("entries:\n" + entries + "  - {id: WAVE, colour: red}\n")
    with pytest.raises(InvalidCatalogue) as caught:
        load_catalogue(over)
    assert caught.value.problems == (f"catalogue {over}: has {most + 1} entries; a catalogue may have at most {most}",)


def test_a_catalogue_whose_aliases_explode_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "bomb.yaml"
    path.write_text(ALIAS_BOMB + "entries:\n  - {id: wave, group: pose, prompt: Wave., tags: *a9}\n")
    with pytest.raises(InvalidCatalogue) as caught:
        load_catalogue(path)
    assert str(caught.value) == (
        f"catalogue {path}: holds more than {MAX_YAML_VALUES:,} values with its aliases expanded; "
        f"a file may hold at most {MAX_YAML_VALUES:,}"
    )


# The prompts file ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["prompts.txt", "prompts.yaml"])
def test_a_huge_prompts_file_is_refused_from_its_size(tmp_path: Path, name: str, no_yaml_parsing: None) -> None:
    path = sparse(tmp_path / name, 50 * 2**20)
    with pytest.raises(PromptsFileProblem) as caught:
        read_prompts_file(path)
    assert str(caught.value) == f"prompts file {path}: is 50 MiB; a prompts file may be at most 1 MiB"


def test_a_prompts_file_at_the_limits_reads_and_one_byte_more_is_refused_unparsed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    limit, most = prompt_files.MAX_PROMPTS_FILE_BYTES, prompt_files.MAX_PROMPTS
    line = "{trigger} " + "y" * (limit // most - 11) + "\n"
    text = line * most
    assert len(read_prompts_file(padded(tmp_path / "at.txt", text, limit))) == most

    over = padded(tmp_path / "over.txt", text, limit + 1)
    monkeypatch.setattr(prompt_files, "_text_entries", lambda *a: pytest.fail("parsed"))
    with pytest.raises(PromptsFileProblem, match=f"is {limit + 1:,} bytes; a prompts file may be at most"):
        read_prompts_file(over)


@pytest.mark.parametrize(
    ("name", "item"),
    [("prompts.txt", "Ada\n"), ("prompts.yaml", "- Ada in a cafe\n")],
)
def test_a_prompts_file_of_too_many_prompts_is_refused(tmp_path: Path, name: str, item: str) -> None:
    most = prompt_files.MAX_PROMPTS
    path = tmp_path / name
    path.write_text(item * most)
    assert len(read_prompts_file(path)) == most
    # 100,000 short lines fit in the file's bytes: their count is what is refused.
    path.write_text(item * 100_000 if name.endswith(".txt") else item * (most + 1))
    count = 100_000 if name.endswith(".txt") else most + 1
    with pytest.raises(PromptsFileProblem) as caught:
        read_prompts_file(path)
    assert caught.value.problems == (
        f"holds {count} prompts; a prompts file may hold at most {most}: split it into several runs",
    )


def test_a_prompt_longer_than_the_limit_is_refused_naming_its_line(tmp_path: Path) -> None:
    most = prompt_files.MAX_PROMPT_CHARS
    text = tmp_path / "prompts.txt"
    text.write_text(f"Ada in a cafe\n{'y' * most}\n\n{'y' * (most + 1)}\n")
    with pytest.raises(PromptsFileProblem) as caught:
        read_prompts_file(text)
    assert caught.value.problems == (f"line 4: the prompt is {most + 1} characters; a prompt may be at most {most}",)

    listed = tmp_path / "prompts.yaml"
    listed.write_text(json.dumps(["Ada", {"prompt": "Ada", "negative_prompt": "n" * (most + 1)}, "y" * most]))
    with pytest.raises(PromptsFileProblem) as caught:
        read_prompts_file(listed)
    assert caught.value.problems == (
        f"entry 2 (line 1): negative_prompt is {most + 1} characters; a prompt may be at most {most}",
    )


# The manifest -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["m.yaml", "m.csv"])
def test_a_huge_manifest_is_refused_from_its_size(tmp_path: Path, name: str, no_yaml_parsing: None) -> None:
    path = sparse(tmp_path / name, 3 * 2**20)
    with pytest.raises(ManifestProblem) as caught:
        read_manifest(path)
    assert str(caught.value) == f"manifest {path} is 3 MiB; a manifest may be at most 1 MiB"


def test_a_manifest_at_the_limit_reads_and_one_byte_more_is_refused_unparsed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    limit = batch.MAX_MANIFEST_FILE_BYTES
    (tmp_path / "ada.jpg").write_bytes(b"a photo")
    rows, problems = read_manifest(padded(tmp_path / "at.yaml", "- {name: Ada, image: ada.jpg}\n", limit))
    assert [row.name for row in rows] == ["Ada"] and problems == []

    over = padded(tmp_path / "over.yaml", "- {name: Ada, image: ada.jpg}\n", limit + 1)
    monkeypatch.setattr(batch, "compose_yaml", lambda *a: pytest.fail("parsed"))
    with pytest.raises(ManifestProblem, match=f"is {limit + 1:,} bytes; a manifest may be at most"):
        read_manifest(over)


def test_a_manifest_of_too_many_rows_is_refused_whole(tmp_path: Path) -> None:
    most = batch.MAX_MANIFEST_ROWS
    (tmp_path / "m.csv").write_text("name,image\n" + "".join(f"A{n},a.jpg\n" for n in range(most + 1)))
    with pytest.raises(ManifestProblem) as caught:
        read_manifest(tmp_path / "m.csv")
    assert str(caught.value) == (
        f"manifest {tmp_path / 'm.csv'} has {most + 1} rows; a manifest may have at most {most}: split it into several"
    )
    (tmp_path / "m.csv").write_text("name,image\n" + "".join(f"A{n},a.jpg\n" for n in range(most)))
    rows, problems = read_manifest(tmp_path / "m.csv")
    assert len(problems) == most and rows == []  # every row is there, each missing its photo


def test_a_manifest_whose_aliases_explode_is_refused(tmp_path: Path) -> None:
    rows = "".join(
        f"- {{name: A{n}, image: a.jpg, set: &a{n} [{', '.join([f'*a{n - 1}'] * 10)}]}}\n" for n in range(1, 10)
    )
    (tmp_path / "m.yaml").write_text("- {name: A0, image: a.jpg, set: &a0 [x, x, x, x, x, x, x, x, x, x]}\n" + rows)
    with pytest.raises(ManifestProblem) as caught:
        read_manifest(tmp_path / "m.yaml")
    assert str(caught.value) == (
        f"manifest {tmp_path / 'm.yaml'} holds more than {MAX_YAML_VALUES:,} values with its aliases expanded; "
        f"a file may hold at most {MAX_YAML_VALUES:,}"
    )


# A manifest in the store or a bucket is streamed, never read whole --------------------------------------------------


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ArtifactStore:
    if request.param == "local":
        return LocalStore(tmp_path / "store")
    server = request.getfixturevalue("s3_server")
    bucket = f"t-{uuid.uuid4().hex[:16]}"
    return S3Store(server.endpoint, server.access_key, server.secret_key, bucket=bucket, prefix="studio")


def test_a_store_gives_the_head_of_an_object_without_the_rest(store: ArtifactStore) -> None:
    store.put_bytes("drop/m.yaml", b"0123456789")
    assert store.get_head("drop/m.yaml", 4) == b"0123"
    assert store.get_head("drop/m.yaml", 100) == b"0123456789"


def test_a_manifest_in_the_store_over_the_limit_is_read_no_further(
    likeness_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    limit = batch.MAX_MANIFEST_FILE_BYTES
    store = get_store()
    store.put_bytes("drop/big.yaml", b"- {name: Ada, image: ada.jpg}\n" + b"#" * limit)
    store.put_bytes("drop/m.yaml", b"- {name: Ada, image: ada.jpg}\n")
    asked: list[int] = []
    head = type(store).get_head

    def get_head(self: ArtifactStore, key: str, size: int) -> bytes:
        asked.append(size)
        return head(self, key, size)

    monkeypatch.setattr(type(store), "get_bytes", lambda *a: pytest.fail("read whole"))
    monkeypatch.setattr(type(store), "get_head", get_head)
    with pytest.raises(ManifestProblem) as caught:
        read_manifest_at("drop/big.yaml")
    assert str(caught.value) == "manifest drop/big.yaml is more than 1 MiB; a manifest may be at most 1 MiB"
    assert asked == [limit + 1]
    (row,), problems = read_manifest_at("drop/m.yaml")
    assert row.image == "drop/ada.jpg" and problems == []


def test_a_location_read_with_a_limit_refuses_more(tmp_path: Path, likeness_env: Path) -> None:
    path = sparse(tmp_path / "huge.yaml", 5 * 2**20)
    with pytest.raises(TooBig) as caught:
        read_location(str(path), "catalogue", max_bytes=2**20)
    assert isinstance(caught.value, InvalidInput)
    assert str(caught.value) == f"catalogue {path} is 5 MiB; a catalogue may be at most 1 MiB"
    assert read_location(str(path), "catalogue", max_bytes=5 * 2**20) == bytes(5 * 2**20)


# Through the CLI: one line, exit 2, nothing loaded ------------------------------------------------------------------


@pytest.fixture
def cli(likeness_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    models = tmp_path / "fresh-models"
    monkeypatch.setenv("LIKENESS_MODELS_DIR", str(models))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")  # nothing listens: a flow run would fail
    from likeness import settings

    settings.get_settings.cache_clear()
    monkeypatch.chdir(tmp_path)

    def invoke(*args: str):
        result = CliRunner().invoke(app, list(args))
        assert not models.exists(), "a model was built or loaded"
        return result

    return invoke


def test_likeness_dataset_refuses_a_huge_catalogue_naming_the_limit(cli, tmp_path: Path) -> None:
    grace_hopper().resize((512, 512)).save(tmp_path / "photo.png")
    huge = sparse(tmp_path / "catalogue.yaml", int(52.4 * 2**20))
    result = cli("dataset", "Ada", "--image", str(tmp_path / "photo.png"), "--catalogue", str(huge))
    assert result.exit_code == 2
    assert "catalogue.yaml: is 52.4 MiB; a catalogue may be at most 1 MiB" in " ".join(result.stderr.split())


def test_likeness_render_refuses_too_many_prompts_naming_the_limit(cli, tmp_path: Path) -> None:
    out = tmp_path / "Ada-lora"
    (out / "lora").mkdir(parents=True)
    (out / "lora" / "Ada.safetensors").write_bytes(b"weights")
    entry = {"files": ["lora/Ada.safetensors"], "step": 1, "best": True}
    record = {"identity": {"format": 4, "trigger": "Ada", "profile": {"name": "tiny"}}, "complete": True,
              "lora": [entry], "renders": [], "files": {}}  # fmt: skip
    (out / "likeness.json").write_text(json.dumps(record))
    (tmp_path / "prompts.txt").write_text("Ada\n" * 100_000)  # 400 KB: within the file's limit
    result = cli("render", "Ada", "--from", str(out), "--prompts", str(tmp_path / "prompts.txt"))
    assert result.exit_code == 2
    assert "holds 100000 prompts; a prompts file may hold at most 1000" in " ".join(result.stderr.split())

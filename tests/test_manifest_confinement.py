"""A manifest's paths stay inside it: `image`, `garment`, `pose` and `out` resolve inside the manifest's folder (or
its prefix in the store or a bucket); one that leaves it ('..', an absolute path, a symlink out, a URL) is refused
with its row's number before anything is read, while the other rows run. Only `likeness batch --allow-outside`
lifts this, on a person's own machine; the batch and inbox flows run from a deployment never do."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import flows.batch as batch_flows
from likeness.cli.app import app
from likeness.run import batch
from likeness.run.batch import OUTSIDE, outside_allowed, read_manifest, read_manifest_at
from likeness.storage.artifacts import get_store

OUTSIDE_PREFIX = "outside the manifest's prefix"


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """`tmp_path/batch/` holds the manifest and `ada.jpg`; `tmp_path/secret/` is outside, with `key.jpg`."""
    inside, outside = tmp_path / "batch", tmp_path / "secret"
    (inside / "photos").mkdir(parents=True)
    outside.mkdir()
    for path in (inside / "ada.jpg", inside / "photos" / "bob.jpg", outside / "key.jpg"):
        path.write_bytes(b"a photo")
    (inside / "link.jpg").symlink_to(outside / "key.jpg")
    (inside / "relative-link.jpg").symlink_to(Path("..") / "secret" / "key.jpg")
    (inside / "linked-folder").symlink_to(outside, target_is_directory=True)
    (inside / "photos-link").symlink_to(Path("photos"), target_is_directory=True)
    return inside


def manifest(folder: Path, *rows: str, name: str = "m.yaml") -> Path:
    path = folder / name
    path.write_text("".join(f"- {row}\n" for row in rows))
    return path


@pytest.mark.parametrize(
    ("row", "problem"),
    [
        ("{name: B, image: ../secret/key.jpg}", "image '../secret/key.jpg' goes up with '..', "),
        ("{name: B, image: photos/../../secret/key.jpg}", "image 'photos/../../secret/key.jpg' goes up with '..', "),
        ("{name: B, image: /etc/hostname}", "image '/etc/hostname' is an absolute path, "),
        ("{name: B, image: link.jpg}", "image 'link.jpg' leads through a symlink "),
        ("{name: B, image: relative-link.jpg}", "image 'relative-link.jpg' leads through a symlink "),
        ("{name: B, image: linked-folder/key.jpg}", "image 'linked-folder/key.jpg' leads through a symlink "),
        ("{name: B, image: 'https://elsewhere.example/b.jpg'}", "image 'https://elsewhere.example/b.jpg' is a URL, "),
        ("{name: B, image: 's3://other-bucket/b.jpg'}", "image 's3://other-bucket/b.jpg' is a URL, "),
        ("{name: B, image: ada.jpg, garment: [ada.jpg, ../secret/key.jpg]}", "garment '../secret/key.jpg' goes up"),
        ("{name: B, image: ada.jpg, pose: [/etc/hostname]}", "pose '/etc/hostname' is an absolute path, "),
        ("{name: B, image: ada.jpg, out: /tmp/anywhere}", "out '/tmp/anywhere' is an absolute path, "),
        ("{name: B, image: ada.jpg, out: ../elsewhere}", "out '../elsewhere' goes up with '..', "),
        ("{name: B, image: ada.jpg, out: linked-folder/B}", "out 'linked-folder/B' leads through a symlink "),
    ],
)
def test_a_path_outside_the_manifests_folder_is_refused_with_its_row_while_the_others_run(
    folder: Path, row: str, problem: str
) -> None:
    rows, problems = read_manifest(manifest(folder, "{name: Ada, image: ada.jpg}", row, "{name: Cy, image: ada.jpg}"))
    assert [good.row for good in rows] == [1, 3]
    ((number, said),) = problems
    assert number == 2 and problem in said and OUTSIDE in said


def test_every_path_of_a_row_outside_is_named_and_none_is_looked_at(folder: Path) -> None:
    # The image outside does not exist: a check that looked at it would say so instead.
    rows, problems = read_manifest(manifest(folder, "{name: B, image: ../secret/none.jpg, out: /tmp/x}"))
    assert rows == [] and problems == [
        (1, f"image '../secret/none.jpg' goes up with '..', {OUTSIDE}; out '/tmp/x' is an absolute path, {OUTSIDE}")
    ]


def test_paths_that_stay_inside_are_taken_as_written(folder: Path) -> None:
    path = manifest(
        folder,
        "{name: A, image: photos/../ada.jpg, out: results/A}",
        "{name: B, image: ./photos-link/bob.jpg, garment: [photos/bob.jpg], out: ./photos/B}",
    )
    (a, b), problems = read_manifest(path)
    assert problems == []
    assert (a.image, a.out) == (str(folder / "photos/../ada.jpg"), folder / "results/A")
    assert (b.image, b.garment, b.out) == (str(folder / "photos-link/bob.jpg"), (str(folder / "photos/bob.jpg"),),
                                           folder / "photos/B")  # fmt: skip


def test_a_missing_image_inside_is_still_reported_as_missing(folder: Path) -> None:
    _, problems = read_manifest(manifest(folder, "{name: B, image: photos/none.jpg}"))
    assert problems == [(1, f"the image {folder / 'photos/none.jpg'} does not exist")]


def test_allow_outside_lets_a_local_manifest_name_any_path(folder: Path) -> None:
    secret = folder.parent / "secret" / "key.jpg"
    path = manifest(
        folder,
        "{name: A, image: ../secret/key.jpg, out: ../elsewhere}",
        f"{{name: B, image: {secret}, garment: [link.jpg], out: /tmp/anywhere}}",
        "{name: C, image: linked-folder/key.jpg}",
    )
    rows, problems = read_manifest(path, allow_outside=True)
    assert problems == []
    assert [Path(row.image).resolve() for row in rows] == [secret.resolve()] * 3
    assert rows[0].out == folder / "../elsewhere" and rows[1].out == Path("/tmp/anywhere")
    assert Path(rows[1].garment[0]).resolve() == secret.resolve()


# A manifest in the store or a bucket: its rows name keys beside it ---------------------------------------------------


@pytest.mark.parametrize(
    ("base", "name", "problem"),
    [
        ("drop/", "../private/b.jpg", "image '../private/b.jpg' goes up with '..', outside the manifest's prefix"),
        ("drop/", "sub/../../b.jpg", "image 'sub/../../b.jpg' goes up with '..', "),
        ("drop/", "/etc/hostname", "image '/etc/hostname' is an absolute path, "),
        ("drop/", "s3://other-bucket/b.jpg", "image 's3://other-bucket/b.jpg' is a URL, "),
        ("drop/", "https://elsewhere.example/b.jpg", "image 'https://elsewhere.example/b.jpg' is a URL, "),
        ("s3://studio/drop/", "../../other/b.jpg", "goes up with '..', "),
        ("s3://studio/drop/", "s3://other-bucket/drop/b.jpg", "is a URL, "),
        ("https://photos.example/drop/", "%2e%2e/%2e%2e/b.jpg", "goes up with '..', "),
        ("https://photos.example/drop/", "https://elsewhere.example/b.jpg", "is a URL, "),
    ],
)
def test_a_remote_row_outside_the_manifests_prefix_is_refused(
    tmp_path: Path, base: str, name: str, problem: str
) -> None:
    path = manifest(tmp_path, "{name: Ada, image: ada.jpg}", f"{{name: Bob, image: '{name}'}}")
    rows, problems = read_manifest(path, remote_base=base)
    assert [row.image for row in rows] == [f"{base}ada.jpg"]
    ((number, said),) = problems
    assert number == 2 and problem in said and f"{OUTSIDE_PREFIX} {base!r}" in said


def test_a_remote_row_inside_is_named_by_its_folded_key_and_its_out_is_checked_too(tmp_path: Path) -> None:
    path = manifest(
        tmp_path,
        "{name: Ada, image: photos/../ada.jpg, pose: [./poses//p.jpg]}",
        "{name: Bob, image: bob.jpg, out: /tmp/anywhere}",
    )
    (ada,), problems = read_manifest(path, remote_base="drop/")
    assert (ada.image, ada.pose) == ("drop/ada.jpg", ("drop/poses/p.jpg",))
    assert problems == [(2, f"out '/tmp/anywhere' is an absolute path, {OUTSIDE_PREFIX} 'drop/'")]
    # A deployment's produce run takes no output folder: an `out` inside is checked, then not used.
    assert "out" not in ada.produce_parameters("tiny")


def test_allow_outside_never_applies_to_a_manifest_from_the_store(likeness_env: Path, tmp_path: Path) -> None:
    get_store().put_bytes("drop/m.yaml", b"- {name: Ada, image: ada.jpg}\n- {name: Bob, image: ../secret.jpg}\n")
    (ada,), problems = read_manifest_at("drop/m.yaml", allow_outside=True)
    assert ada.image == "drop/ada.jpg"
    assert problems == [(2, f"image '../secret.jpg' goes up with '..', {OUTSIDE_PREFIX} 'drop/'")]


# Through the real flows ---------------------------------------------------------------------------------------------


@pytest.fixture
def flows_here(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The batch flows' bodies with their produce runs and table recorded instead of made; `deployment` set to
    an id makes them runs of a deployment."""
    seen: dict[str, Any] = {"deployment": None}

    def produce(rows, *args):
        seen["produced"] = list(rows)
        return [{"row": row.row, "name": row.name, "status": "produced", "out": "", "log": ""} for row in rows]

    monkeypatch.setattr(batch_flows, "produce_rows", produce)
    monkeypatch.setattr(batch_flows, "dispatch_rows", produce)
    monkeypatch.setattr(batch_flows, "publish_table", lambda key, results, _: seen.update(table=(key, results)))
    monkeypatch.setattr(batch_flows.deployment, "get_id", lambda: seen["deployment"])
    return seen


def test_the_batch_flow_reports_a_row_outside_a_store_manifest_by_number_and_runs_the_good_one(
    likeness_env: Path, flows_here: dict[str, Any]
) -> None:
    manifest_bytes = b"- {name: Ada, image: ada.jpg}\n- {name: Bob, image: ../private/bob.jpg}\n"
    get_store().put_bytes("manifests/m.yaml", manifest_bytes)
    for deployment in (None, str(uuid.uuid4())):
        flows_here["deployment"] = deployment
        results = batch_flows.produce_batch.fn("manifests/m.yaml", 2, "tiny")
        assert [row.image for row in flows_here["produced"]] == ["manifests/ada.jpg"]
        assert [(result["row"], result["status"]) for result in results] == [
            (1, "produced"),
            (2, f"skipped: image '../private/bob.jpg' goes up with '..', {OUTSIDE_PREFIX} 'manifests/'"),
        ]
        assert flows_here["table"] == ("batch-m", results)


def test_likeness_batchs_allowance_reaches_its_own_flow_and_never_a_deployments(
    folder: Path, flows_here: dict[str, Any]
) -> None:
    path = manifest(folder, "{name: Ada, image: ada.jpg}", "{name: Bob, image: ../secret/key.jpg}")
    results = batch_flows.produce_batch.fn(str(path), 1, "tiny")
    assert [(result["row"], result["status"]) for result in results] == [
        (1, "produced"),
        (2, f"skipped: image '../secret/key.jpg' goes up with '..', {OUTSIDE}"),
    ]
    assert [row.name for row in flows_here["produced"]] == ["Ada"]
    with outside_allowed():
        assert [row.name for row in _produced(flows_here, path)] == ["Ada", "Bob"]
        flows_here["deployment"] = str(uuid.uuid4())
        assert [row.name for row in _produced(flows_here, path)] == ["Ada"]
    flows_here["deployment"] = None
    assert [row.name for row in _produced(flows_here, path)] == ["Ada"]


def _produced(seen: dict[str, Any], path: Path) -> list[Any]:
    batch_flows.produce_batch.fn(str(path), 1, "tiny")
    return seen["produced"]


def test_the_inbox_reports_a_row_outside_a_dropped_manifest_and_runs_the_rest(
    likeness_env: Path, flows_here: dict[str, Any]
) -> None:
    store = get_store()
    store.put_bytes("inbox/Cy.jpg", b"a photo")
    store.put_bytes("inbox/m.yaml", b"- {name: Ada, image: ada.jpg}\n- {name: Bob, image: /etc/hostname}\n")
    results = batch_flows.produce_inbox.fn("inbox/", "tiny")
    assert [row.image for row in flows_here["produced"]] == ["inbox/Cy.jpg", "inbox/ada.jpg"]
    assert results[-1] == {
        "row": 0,
        "name": "inbox/m.yaml",
        "status": f"row 2 skipped: image '/etc/hostname' is an absolute path, {OUTSIDE_PREFIX} 'inbox/'",
        "out": "",
        "log": "",
    }


def test_the_batch_flows_take_no_parameter_that_allows_paths_outside() -> None:
    for flow in (batch_flows.produce_batch, batch_flows.produce_inbox):
        assert not any("outside" in name for name in flow.parameters.properties)


# The command --------------------------------------------------------------------------------------------------------


@pytest.fixture
def likeness_batch(likeness_env: Path, folder: Path, monkeypatch: pytest.MonkeyPatch):
    """`likeness batch` in-process, its flow run recorded instead of started."""
    started: list[bool] = []
    monkeypatch.setattr(
        "likeness.cli.batch.BatchRun.start", lambda self, refresh, verbose: started.append(self.allow_outside)
    )
    monkeypatch.chdir(folder)

    def invoke(*args: str):
        return CliRunner().invoke(app, ["batch", *args]), started

    return invoke


def test_likeness_batch_skips_a_row_outside_and_says_how_to_allow_it(likeness_batch, folder: Path) -> None:
    manifest(folder, "{name: Ada, image: ada.jpg}", "{name: Bob, image: ../secret/key.jpg}")
    result, started = likeness_batch("m.yaml")
    assert result.exit_code == 0, result.output
    said = " ".join(result.stderr.split())
    assert f"skipped row 2: image '../secret/key.jpg' goes up with '..', {OUTSIDE}" in said
    assert "note: --allow-outside lets this batch use paths outside the manifest's folder" in said
    assert started == [False]

    result, started = likeness_batch("m.yaml", "--allow-outside")
    assert result.exit_code == 0 and "skipped" not in result.stderr and started == [False, True]

    manifest(folder, "{name: Bob, image: ../secret/key.jpg}")
    result, _ = likeness_batch("m.yaml")
    assert result.exit_code == 2 and "no row of m.yaml can run" in result.stderr


def test_likeness_batch_help_says_what_allow_outside_allows(likeness_batch) -> None:
    result, _ = likeness_batch("--help")
    said = " ".join(result.output.replace("│", " ").split())
    assert "--allow-outside" in said and "absolute paths, '..', symlinks that lead out" in said
    assert "a deployment's batch never allows them" in said


def test_the_outside_allowance_is_only_within_its_block() -> None:
    assert not batch.outside_is_allowed()
    with outside_allowed():
        assert batch.outside_is_allowed()
    assert not batch.outside_is_allowed()

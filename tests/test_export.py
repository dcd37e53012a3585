"""The export into the output folder, in process (fast twins of the CLI's end-to-end claims): a write cut off
leaves no temporary file and a record marked incomplete, the next export completes it, and each caption file
holds the item's caption."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from likeness.records import CharacterResult
from likeness.run import outputs
from likeness.run.outputs import DATASET_CONTACT_SHEET, MANIFEST, TEMP_SUFFIX, export_outputs
from likeness.storage.artifacts import put_bytes
from likeness.storage.local import LocalStore
from tests.records import dataset_item, dataset_ref

IDENTITY = {"format": outputs.RECORD_FORMAT, "trigger": "Ada"}


def character(store: LocalStore) -> CharacterResult:
    image = put_bytes(b"\x89PNG not really", "front.png", store)
    sheet = put_bytes(b"a contact sheet" * 100, "contact_sheet.png", store)
    items = (dataset_item("front", image, "Ada, front view"), dataset_item("smile-30", image, "Ada, slight smile"))
    return CharacterResult(dataset=dataset_ref(image, items).model_copy(update={"contact_sheet": sheet}))


def test_each_caption_file_holds_its_items_caption(tmp_path):
    store = LocalStore(tmp_path / "store")
    result = character(store)
    export_outputs(result, tmp_path / "out", IDENTITY, "key", store, {})
    for item in result.dataset.items:
        caption_file = tmp_path / "out" / "dataset" / Path(item.filename("Ada")).with_suffix(".txt")
        assert caption_file.read_text() == item.caption + "\n"


def test_an_export_cut_off_leaves_no_temporary_file_and_the_next_one_completes_it(tmp_path, monkeypatch):
    store = LocalStore(tmp_path / "store")
    result, out = character(store), tmp_path / "out"
    real_replace = os.replace

    def disk_full_at_the_sheet(source: Path, target: Path) -> None:
        if Path(target).name == DATASET_CONTACT_SHEET:
            raise OSError(28, "No space left on device")
        real_replace(source, target)

    monkeypatch.setattr(outputs.os, "replace", disk_full_at_the_sheet)
    with pytest.raises(OSError, match="No space left on device") as failure:
        export_outputs(result, out, IDENTITY, "key", store, {})
    assert failure.value.filename == str(out / DATASET_CONTACT_SHEET)
    assert not list(out.rglob(f".*{TEMP_SUFFIX}")), "a temporary file was left behind"
    assert json.loads((out / MANIFEST).read_text())["complete"] is False
    assert not (out / DATASET_CONTACT_SHEET).exists()

    monkeypatch.setattr(outputs.os, "replace", real_replace)
    record = export_outputs(result, out, IDENTITY, "key", store, {})
    assert record["complete"] is True and json.loads((out / MANIFEST).read_text())["complete"] is True
    assert (out / DATASET_CONTACT_SHEET).read_bytes() == b"a contact sheet" * 100

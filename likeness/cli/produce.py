"""`likeness produce` and `likeness dataset`: a character from one photo, or only its training dataset."""

from __future__ import annotations

from typing import Any

from likeness.cli.console import fail, refusing, say
from likeness.cli.flow_run import FlowRun
from likeness.cli.options import (
    BeyondLimits,
    CatalogueFile,
    Garments,
    Name,
    NoIdentity,
    Out,
    Overrides,
    Poses,
    Profile,
    ReferencePath,
    Refresh,
    TrainBackend,
    Verbose,
)
from likeness.config import check_stop_when_flat
from likeness.records import CharacterResult
from likeness.run.outputs import DATASET_CONTACT_SHEET, DATASET_MANIFEST, export_outputs
from likeness.run.prepare import PreparedCharacter, checked_backend, prepare_character
from likeness.storage.artifacts import put_bytes


def produce(
    name: Name,
    image: ReferencePath,
    garment: Garments = None,
    pose: Poses = None,
    catalogue: CatalogueFile = None,
    no_identity: NoIdentity = False,
    profile: Profile = None,
    out: Out = None,
    overrides: Overrides = None,
    refresh: Refresh = False,
    beyond_limits: BeyondLimits = False,
    verbose: Verbose = False,
    backend: TrainBackend = "local",
) -> None:
    """Make the dataset, train the LoRA (here or on a RunPod pod) and render images and a video."""
    options = (name, image, garment, pose, catalogue, no_identity, profile, out, overrides, refresh, beyond_limits)
    with refusing():
        prepared = prepare_character("produce", *options, say=say)
    if prepared is not None:
        with refusing():
            check_stop_when_flat(prepared.config.train, backend, prepared.config.dataset.curation.identity)
            backend = checked_backend(backend)
        CharacterRun(prepared, beyond_limits, backend).start(refresh, verbose)


def dataset(
    name: Name,
    image: ReferencePath,
    garment: Garments = None,
    pose: Poses = None,
    catalogue: CatalogueFile = None,
    no_identity: NoIdentity = False,
    profile: Profile = None,
    out: Out = None,
    overrides: Overrides = None,
    refresh: Refresh = False,
    beyond_limits: BeyondLimits = False,
    verbose: Verbose = False,
) -> None:
    """Make only the LoRA training dataset: curated images, captions, masks, manifest and contact sheet."""
    options = (name, image, garment, pose, catalogue, no_identity, profile, out, overrides, refresh, beyond_limits)
    with refusing():
        prepared = prepare_character("dataset", *options, say=say)
    if prepared is not None:
        CharacterRun(prepared, beyond_limits).start(refresh, verbose)


class CharacterRun(FlowRun):
    """One `produce` or `dataset` run: the dataset, and for `produce` the LoRA and renders."""

    def __init__(self, prepared: PreparedCharacter, beyond_limits: bool, backend: str = "local") -> None:
        super().__init__(
            prepared.trigger, prepared.out, prepared.identity, prepared.key, prepared.store, prepared.settings
        )
        self.prepared, self.beyond_limits, self.backend = prepared, beyond_limits, backend

    def _finish(self, manifest: dict[str, Any]) -> None:
        super()._finish(manifest)
        if not any(name.endswith(".png") for name in manifest["dataset"]):
            fail(
                f"curation kept no image, so there is nothing to train on: every refused try and its reasons are in "
                f"{self.out / DATASET_MANIFEST} and {self.out / DATASET_CONTACT_SHEET}; loosen dataset.curation "
                "(e.g. --set dataset.curation.max_tries=5) or, for an illustrated character, pass --no-identity"
            )

    def _export(self, result: CharacterResult, stats: dict[str, Any]) -> dict[str, Any]:
        from likeness.run.deployed import stage_seconds

        stats = {**stats, "stage_seconds": stage_seconds(stats["flow_run_id"])}
        return export_outputs(result, self.out, self.identity, self.key, self.store, stats)

    def _flow_state(self) -> Any:
        from flows.produce import produce_character
        from flows.stages import produce_dataset

        inputs, command = self.prepared.inputs, self.prepared.command
        parameters = {
            "name": self.trigger,
            "reference": put_bytes(inputs.reference_png, "reference.png", self.store).key,
            "garments": [
                put_bytes(png, f"garment-{n}.png", self.store).key for n, png in enumerate(inputs.garment_pngs)
            ],
            "poses": [put_bytes(png, f"pose-{n}.png", self.store).key for n, png in enumerate(inputs.pose_pngs)],
            "catalogue": put_bytes(inputs.catalogue.model_dump_json().encode(), "catalogue.json", self.store).key,
            "profile": self.prepared.profile,
            "overrides": self.prepared.config.model_dump(mode="json"),
            "beyond_limits": self.beyond_limits,
        }
        if command == "produce":
            parameters["backend"] = self.backend
        flow = produce_character if command == "produce" else produce_dataset
        return flow(**parameters, return_state=True)

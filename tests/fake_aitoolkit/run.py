"""A stand-in for AI Toolkit's `run.py` on the fake `ostris/aitoolkit` pod: it refuses a job YAML that AI Toolkit's
config classes would not read (`tests.aitoolkit_schema`), then trains with our trainer in AI Toolkit's place,
reading every setting from the YAML, and leaves AI Toolkit's file names (the last checkpoint without a step)."""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from likeness.config import EXPERTS, ModelSpec, TrainConfig  # noqa: E402
from likeness.training.data import read_training_folder  # noqa: E402
from likeness.training.native import Trainer, load_base_pipeline  # noqa: E402
from likeness.training.spec import TrainJob  # noqa: E402
from tests.aitoolkit_schema import check_aitoolkit_config  # noqa: E402

BASES = {"wan21": "wan21_14b", "wan22_14b": "wan22_14b", "wan22_5b": "wan22_5b"}


def main() -> int:
    config = yaml.safe_load(Path(sys.argv[1]).read_text())
    problems = check_aitoolkit_config(config)
    if problems:
        print("AI Toolkit would not read this config:\n" + "\n".join(problems), flush=True)
        return 3
    process = config["config"]["process"][0]
    name, train, model, sample = config["config"]["name"], process["train"], process["model"], process["sample"]
    dataset = process["datasets"][0]
    kwargs = model.get("model_kwargs", {})
    experts = tuple(e for e in EXPERTS if kwargs.get(f"train_{e}", True))
    resolutions = sorted(dataset["resolution"], reverse=True)
    spec = TrainConfig(
        base=BASES[model["arch"]],
        experts=experts if model["arch"] == "wan22_14b" else EXPERTS,
        switch_boundary_every=train.get("switch_boundary_every", 10),
        size=resolutions[0],
        buckets=tuple(resolutions[1:]),
        steps=train["steps"],
        checkpoint_every=process["save"]["save_every"],
        sample_every=sample["sample_every"],
        sample_prompts=tuple(p.replace("{", "{{").replace("}", "}}") for p in sample["prompts"]),
        sample_steps=sample["sample_steps"],
        sample_guidance_scale=sample["guidance_scale"],
        rank=process["network"]["linear"],
        alpha=process["network"]["linear_alpha"],
        learning_rate=train["lr"],
        caption_dropout=dataset["caption_dropout_rate"],
        masks="mask_path" in dataset,
        seed=process.get("training_seed", 0),
    )
    job = TrainJob(
        name=name,
        trigger=name,
        config=spec,
        model=ModelSpec(source=model["name_or_path"], licence="apache-2.0"),
        dtype="float32",
        device="cpu",
    )
    folder = Path(process["training_folder"]) / name
    images = read_training_folder(Path(dataset["folder_path"]), Path(dataset["mask_path"]) if spec.masks else None)
    Trainer(job, load_base_pipeline(job), images, folder).train()
    last = f"{name}_{spec.steps:09d}"
    for path in folder.glob(f"{last}*.safetensors"):
        path.rename(path.with_name(path.name.replace(last, name)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

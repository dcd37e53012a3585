"""Import spandrel on machines without torchvision.

spandrel imports `torchvision.transforms.functional` at import time for two architectures
(LaMa, RestoreFormer) that Likeness never loads. torchvision cannot be installed next to the
CPU build of torch 2.13 (see FIELD-NOTES), so while spandrel is imported a stand-in module is
put in `sys.modules`, and removed again afterwards: transformers and diffusers probe for
torchvision with `importlib.util.find_spec`, and a leftover stand-in would make them believe
it is installed.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from enum import Enum
from types import ModuleType

_STANDIN_NAMES = ("torchvision", "torchvision.transforms", "torchvision.transforms.functional")


def _unavailable(name: str):
    def call(*args, **kwargs):
        raise RuntimeError(
            f"torchvision.transforms.functional.{name} was called, but torchvision is not installed: "
            "this spandrel architecture (LaMa or RestoreFormer) needs a real torchvision."
        )

    call.__name__ = name
    return call


class _InterpolationMode(Enum):
    # LaMa only reads this enum's members at import time.
    NEAREST = "nearest"
    BILINEAR = "bilinear"
    BICUBIC = "bicubic"


def _standin_modules() -> dict[str, ModuleType]:
    root = types.ModuleType("torchvision")
    transforms = types.ModuleType("torchvision.transforms")
    functional = types.ModuleType("torchvision.transforms.functional")
    functional.InterpolationMode = _InterpolationMode
    functional.rotate = _unavailable("rotate")
    functional.normalize = _unavailable("normalize")
    root.transforms = transforms
    transforms.functional = functional
    return dict(zip(_STANDIN_NAMES, (root, transforms, functional), strict=True))


def import_spandrel() -> ModuleType:
    """Return the `spandrel` module, importing it with a torchvision stand-in if torchvision is missing."""
    if "spandrel" in sys.modules or importlib.util.find_spec("torchvision") is not None:
        import spandrel

        return spandrel

    standins = _standin_modules()
    sys.modules.update(standins)
    try:
        import spandrel
    finally:
        for name, module in standins.items():
            if sys.modules.get(name) is module:
                del sys.modules[name]
    return spandrel

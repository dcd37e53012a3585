"""Likeness as a wheel, built from the running code, so a pod runs exactly what the flow runs.

The worker image (`deployments/Dockerfile`) holds the heavy dependencies (torch, diffusers, peft); each job
installs this wheel on top with `pip install --no-deps`, so a code change needs no new image. The wheel is
built in-process from the imported package, byte-identical for the same code (sorted entries, fixed times),
so the store keeps one copy per version of the code.

    path = build_wheel(Path("/tmp"))   # /tmp/likeness-0.1.0-py3-none-any.whl
"""

from __future__ import annotations

import base64
import hashlib
import zipfile
from pathlib import Path

import likeness

PACKAGE_ROOT = Path(likeness.__file__).parent
INCLUDED = (".py", ".yaml")
# zip's earliest date: a fixed time keeps the bytes the same from build to build.
FIXED_TIME = (1980, 1, 1, 0, 0, 0)


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def wheel_files() -> dict[str, bytes]:
    """The package's files by their path in the wheel."""
    files = {}
    for path in sorted(PACKAGE_ROOT.rglob("*")):
        if path.is_file() and path.suffix in INCLUDED and "__pycache__" not in path.parts:
            files[f"likeness/{path.relative_to(PACKAGE_ROOT).as_posix()}"] = path.read_bytes()
    return files


def build_wheel(folder: Path) -> Path:
    """Write `likeness-<version>-py3-none-any.whl` into `folder` and return its path."""
    version = likeness.__version__
    info = f"likeness-{version}.dist-info"
    files = wheel_files()
    files[f"{info}/METADATA"] = f"Metadata-Version: 2.1\nName: likeness\nVersion: {version}\n".encode()
    files[f"{info}/WHEEL"] = b"Wheel-Version: 1.0\nGenerator: likeness\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    record = "".join(f"{name},{_record_hash(data)},{len(data)}\n" for name, data in files.items())
    files[f"{info}/RECORD"] = (record + f"{info}/RECORD,,\n").encode()
    path = folder / f"likeness-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as wheel:
        for name, data in files.items():
            entry = zipfile.ZipInfo(name, FIXED_TIME)
            entry.compress_type = zipfile.ZIP_DEFLATED
            entry.external_attr = 0o644 << 16
            wheel.writestr(entry, data)
    return path

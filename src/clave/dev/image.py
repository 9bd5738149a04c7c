"""The enclave image's application files, in one place: what the Dockerfile copies, what the software NSM
measures into PCR0/PCR2, and what the image test installs alone. Only these rooms of `clave` enter the
image; `sidecar`, `cli` and `dev` (this module included) never do."""

from __future__ import annotations

import shutil
from pathlib import Path

import clave

IMAGE_ROOMS = ("core", "link", "enclave")
PACKAGE_DIR = Path(clave.__file__).resolve().parent


def image_files(package_dir: Path = PACKAGE_DIR) -> dict[str, Path]:
    """Every Python file of the image, keyed by its path under the image's /app (e.g. `clave/core/errors.py`)."""
    files = {"clave/__init__.py": package_dir / "__init__.py"}
    for room in IMAGE_ROOMS:
        for path in (package_dir / room).rglob("*.py"):
            if "__pycache__" not in path.parts:
                files[f"clave/{path.relative_to(package_dir).as_posix()}"] = path
    return files


def build_app_dir(dest: Path, package_dir: Path = PACKAGE_DIR) -> Path:
    """Copy the image's files into `dest` as the image lays them out under /app; return `dest`."""
    for rel, path in image_files(package_dir).items():
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    return dest

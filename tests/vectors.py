"""The published test vectors: the one place that knows where they are.

They live outside the repository (`<repo>/../shared/vectors`, or wherever `$CLAVE_VECTORS` points) and
are never copied into it. A test that needs one calls `vector("clef/extapi_vectors.json")`; when the file
is missing the test is skipped locally with the path it looked at, but fails when `$CI` is set, so that CI
can never go green by skipping every vector test.

Parametrization happens at collection time, before any test runs; `available()` and `names()` serve
that and never skip or fail themselves: the test body's `vector()` call does.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NoReturn

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENV = "CLAVE_VECTORS"
ABSENT = "(vectors absent)"  # the one parameter of a parametrized test whose vector folder is missing


def vectors_dir() -> Path:
    """`$CLAVE_VECTORS`, else `../shared/vectors` beside the repository (it need not exist)."""
    configured = os.environ.get(ENV)
    return Path(configured).expanduser() if configured else ROOT.parent / "shared" / "vectors"


def skip_or_fail(message: str) -> NoReturn:
    """Skip a test whose prerequisite is missing; in CI (`$CI` set) fail it instead."""
    if os.environ.get("CI"):
        pytest.fail(f"{message} (CI is set: a missing prerequisite fails instead of skipping)", pytrace=False)
    pytest.skip(message)


def vector(relative: str | Path = "") -> Path:
    """The path of one published vector file (or folder), relative to the vectors directory."""
    base = vectors_dir()
    path = base / relative
    if not path.exists():
        skip_or_fail(
            f"published vector {relative or '(directory)'} not found at {path} "
            f"(set ${ENV}, or put the vectors at ../shared/vectors beside the repository)"
        )
    return path


def available(relative: str | Path = "") -> bool:
    """Whether a vector exists, for collection-time decisions only (never skips)."""
    return (vectors_dir() / relative).exists()


def names(folder: str, pattern: str = "*.json") -> list[str]:
    """Sorted file names in a vector folder, for parametrize; `[ABSENT]` when there are none, so that the
    test still runs once and its `vector()` call skips (or fails in CI)."""
    directory = vectors_dir() / folder
    found = sorted(p.name for p in directory.glob(pattern)) if directory.is_dir() else []
    return found or [ABSENT]

"""Key files the operator's commands write (exported and validator keyfiles): new files only, never an
overwrite, as geth's and go-opera's keystores refuse one. The writing itself is `core.secretfiles`."""

from __future__ import annotations

from pathlib import Path

from clave.core.secretfiles import write_private


def write_new_private(target: Path, text: str) -> Path:
    """Write a new key file atomically with mode 0600; an existing `target` raises AlreadyExists."""
    return write_private(target, text, replace=False)

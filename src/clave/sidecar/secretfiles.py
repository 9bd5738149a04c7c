"""The one way clave writes a file that holds a secret: exported and validator keyfiles on the operator's
side (new files only, never an overwrite, as geth's and go-opera's keystores refuse one), and the state of
the software NSM and the KMS emulator in local runs. Never in the enclave image: the enclave has no disk.

Mode 0600 from the first byte, and never half-written: a hidden temp file in the same directory, fsync,
rename, fsync of the directory, as geth's and go-opera's keystores do it, so a crash leaves either the
old state or the whole new file.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from clave.core.errors import ConfigError


class AlreadyExists(ConfigError):
    """The target of a new-only write exists: a key file is never overwritten."""

    remedy = "move the existing file away first, or write to another path"

    def __init__(self, target: Path) -> None:
        super().__init__(f"{target}: already exists; refusing to overwrite")
        self.path = target


def write_private(target: Path, data: bytes | str, *, replace: bool) -> Path:
    """Write `data` (str as UTF-8) to `target` atomically with mode 0600.

    `replace=False`: a new file only; an existing `target` raises AlreadyExists (the keystores' rule for
    key files). `replace=True`: an existing `target` is replaced atomically (state rewritten in place).
    """
    if not replace and target.exists():
        raise AlreadyExists(target)
    body = data.encode() if isinstance(data, str) else data
    directory = target.parent
    fd, name = tempfile.mkstemp(dir=directory, prefix=f".{target.name[:16]}.", suffix=".tmp")  # 0600, O_EXCL
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(body)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return target



def write_new_private(target: Path, text: str) -> Path:
    """Write a new key file atomically with mode 0600; an existing `target` raises AlreadyExists."""
    return write_private(target, text, replace=False)

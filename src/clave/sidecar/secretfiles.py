"""Writing files that hold key material (exported keyfiles, validator keyfiles) on the operator's side."""

from __future__ import annotations

import os
from pathlib import Path


def write_new_private(target: Path, text: str) -> Path:
    """Write `text` to `target` atomically, mode 0600, never replacing an existing file.

    As geth's and go-opera's keystores do it: a hidden temp file in the same directory, fsync, rename,
    fsync of the directory, so a crash leaves either no file or the whole file.
    """
    if target.exists():
        raise SystemExit(f"clave: {target}: already exists; refusing to overwrite")
    directory = target.parent
    tmp = directory / f".{target.name[:16]}.tmp{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
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

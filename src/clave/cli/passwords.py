"""Passwords for the `clave account` commands, as geth takes them: `--password-file FILE` (its first line),
`--password-file -` (the first line of standard input), or, with neither and a terminal on stdin, a prompt
that does not echo (twice for a new password)."""

from __future__ import annotations

import getpass
import sys
from pathlib import Path

STDIN = "-"


def _first_line(text: str) -> str:
    lines = text.splitlines()
    # geth reads the first line of --password files and trims the line ending only.
    return lines[0] if lines else ""


def read_password(path: str | None, *, prompt: str = "Password: ", confirm: bool = False,
                  option: str = "--password-file") -> str:
    """The password from `path`, stdin (`-`), or a prompt; SystemExit with one line when there is none."""
    if path == STDIN:
        line = sys.stdin.readline()
        return line.rstrip("\n").removesuffix("\r") if line else ""
    if path is not None:
        try:
            return _first_line(Path(path).read_text())
        except OSError as exc:
            raise SystemExit(
                f"clave: {path}: cannot read password file: {exc.strerror}; check {option}, or pass {option} - to read stdin"
            ) from None
        except UnicodeDecodeError:
            raise SystemExit(f"clave: {path}: the password file is not UTF-8 text; check {option}") from None
    if not sys.stdin.isatty():
        raise SystemExit(f"clave: no password: pass {option} FILE (or {option} - to read it from stdin), "
                         "or run in a terminal to be asked")
    try:
        password = getpass.getpass(prompt)
        if confirm and getpass.getpass("Repeat password: ") != password:
            raise SystemExit("clave: the passwords do not match; run the command again")
    except EOFError:
        raise SystemExit(f"clave: no password entered; pass {option} FILE or type it at the prompt") from None
    return password

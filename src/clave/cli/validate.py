"""argparse `type=` checks for the `clave` options: a bad value fails at parse time, naming the option
(argparse adds `argument --http.port:`) and what a good value looks like. Each returns the value in the form
the command already expects (chain ids and PCR pins stay strings; `config_from_args` parses them again)."""

from __future__ import annotations

import argparse
from pathlib import Path

from clave.sidecar.config import parse_chain_ids, parse_pcr


def port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number: use 1-65535") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a port number: use 1-65535")
    return value


def port_or_zero(text: str) -> int:
    """A port, or 0 for one the system picks (the emulator prints it)."""
    if text.strip() == "0":
        return 0
    return port(text)


def chain_ids(text: str) -> str:
    try:
        parse_chain_ids(text)
    except ValueError as exc:
        detail = str(exc) if "chain id" in str(exc) else f"{text!r} is not a chain id"
        raise argparse.ArgumentTypeError(f"{detail}: use positive integers, comma separated (e.g. 1,11155111)") from None
    return text


def pcr_pin(text: str) -> str:
    try:
        parse_pcr(text)
    except ValueError as exc:
        detail = str(exc) if "PCR" in str(exc) else f"{text!r} is not N=HEX"
        raise argparse.ArgumentTypeError(
            f"{detail}: use N=HEX with the PCR's 48 bytes as 96 hex characters (from `nitro-cli describe-eif`)"
        ) from None
    return text


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number: use a whole number of at least 1") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}: must be at least 1")
    return value


def non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text}: must be a finite number, 0 or more")
    return value


def hex_bytes(text: str) -> str:
    try:
        value = bytes.fromhex(text.removeprefix("0x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not hex: use 0x followed by an even number of hex digits") from None
    if not 1 <= len(value) <= 64:
        raise argparse.ArgumentTypeError(f"{text!r}: use 1 to 64 bytes")
    return text


def token_file(text: str) -> str:
    """The bearer-token file must exist and hold a token now, not when the server has started the enclave."""
    path = Path(text).expanduser()
    try:
        token = path.read_text().strip()
    except OSError as exc:
        raise argparse.ArgumentTypeError(
            f"{text}: {exc.strerror}: write a token into it first (e.g. `openssl rand -hex 32 > {text}; chmod 600 {text}`)"
        ) from None
    except UnicodeDecodeError:
        raise argparse.ArgumentTypeError(f"{text}: not a text file: write the token into it as one line") from None
    if not token:
        raise argparse.ArgumentTypeError(f"{text}: the file is empty: write the token into it (e.g. `openssl rand -hex 32`)")
    return text

"""Every YAML file of the Ansible role, playbook and inventory, read as Ansible reads it (YAML 1.1): a PCR,
fingerprint, hash or key value must be a string. Unquoted, `000…0` is the integer 0, and a
copied inventory would pin PCR0 to `0`. In process: PyYAML's composer gives each scalar's tag and source text."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
ANSIBLE = ROOT / "ansible"
# Variable names whose values are hex or hashes.
HEXY_KEY = re.compile(r"pcr|fingerprint|sha\d*|hash|pubkey|digest|hex", re.I)
# Source text that is hex-like: long runs of digits/hex letters, 0x…, or a leading zero (YAML 1.1 octal).
HEXY_TEXT = re.compile(r"^(0x[0-9a-fA-F]+|[0-9a-fA-F]{16,}|0[0-9]+|[0-9]+[eE][0-9]+)$")
STR_TAG = "tag:yaml.org,2002:str"


def yaml_files() -> list[Path]:
    files = sorted(p for p in ANSIBLE.rglob("*") if p.suffix in (".yml", ".yaml") and p.is_file())
    files += sorted((ANSIBLE).glob(".ansible-lint"))
    return files


def scalars(node: yaml.Node, key: str = "") -> Iterator[tuple[str, yaml.ScalarNode]]:
    """(the nearest mapping key above, scalar) for every scalar value (not keys) under `node`."""
    if isinstance(node, yaml.ScalarNode):
        yield key, node
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            yield from scalars(item, key)
    elif isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            name = str(k.value) if isinstance(k, yaml.ScalarNode) else key
            yield from scalars(v, f"{key}.{name}" if key else name)


def problems(text: str, where: str) -> list[str]:
    found = []
    for document in yaml.compose_all(text, Loader=yaml.SafeLoader):
        if document is None:
            continue
        for key, node in scalars(document):
            if node.tag == STR_TAG or node.value == "":
                continue
            line = node.start_mark.line + 1
            if HEXY_KEY.search(key.rsplit(".", 1)[-1]) or HEXY_TEXT.match(node.value):
                kind = node.tag.rsplit(":", 1)[-1]
                found.append(f"{where}:{line}: {key}: {node.value[:20]}… is read as {kind}, not a string: quote it")
    return found


def test_there_are_files_to_check() -> None:
    names = {p.relative_to(ANSIBLE).as_posix() for p in yaml_files()}
    assert {"inventory/example.yml", "roles/clave/defaults/main.yml", "roles/clave/vars/main.yml",
            "roles/clave/meta/argument_specs.yml", "site.yml"} <= names


@pytest.mark.parametrize("path", yaml_files(), ids=lambda p: p.relative_to(ANSIBLE).as_posix())
def test_hex_values_are_strings(path: Path) -> None:
    assert problems(path.read_text(), str(path.relative_to(ROOT))) == []


@pytest.mark.parametrize("text", [
    "clave_eif_pcr0: 000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\n",
    "clave_pcrs:\n  0: 123456789012345678901234567890\n",
    "fingerprint: 641\n",
    "x: 0x1f\n",
    "y: 0755\n",
    "digest: 12.5\n",
])
def test_the_check_catches_unquoted_values(text: str) -> None:
    assert len(problems(text, "t.yml")) == 1


@pytest.mark.parametrize("text", [
    'clave_eif_pcr0: "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"\n',
    "clave_pcrs:\n  0: 'ab'\n",
    "clave_http_port: 8550\nclave_enclave_cid: 16\nclave_node_validator_id: 25\n",
    "clave_attestation_root_fingerprint: 641a0321a3e244efe456463195d606317ed7cdcc3c1756e09893f3c68f79bb5b\n",
])
def test_the_check_passes_strings_and_plain_numbers(text: str) -> None:
    assert problems(text, "t.yml") == []

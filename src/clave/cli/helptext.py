"""Examples for each `clave` subcommand's --help, attached after the parser is built (`add_examples`), so
that the command modules keep only their options. `subcommands()` walks the parser tree (the help test
uses it to find options without help and subcommands without an example)."""

from __future__ import annotations

import argparse
from collections.abc import Iterator

EXAMPLES: dict[str, str] = {
    "clave": "clave up --chainid 11155111\nclave account new\nclave account list",
    "clave up": "clave up --datadir ~/.clave --chainid 1,11155111 --http.port 8550\n"
                "clave up --http.addr 0.0.0.0 --http.auth-token-file ~/.clave/token   # beyond the loopback: always a token",
    "clave account": "clave account new --count 3\nclave account list",
    "clave account new": "clave account new\nclave account new --exportable --count 10",
    "clave account list": "clave account list\nclave account list --datadir /var/lib/clave --ipcpath /run/clave/clave.ipc",
    "clave account import": "clave account import ~/.ethereum/keystore --password-file pw.txt\n"
                            "clave account import UTC--2024-…--0x1234… --password-file -  < pw.txt\n"
                            "clave account import key.json          # asks for the password on a terminal",
    "clave account export": "clave account export 0x1234… --out key.json --password-file new-pw.txt \\\n"
                            "    --admin-keyfile admin.json --admin-password-file admin-pw.txt",
    "clave admin": "clave admin init --admin 0xAbC…,0xDeF…",
    "clave admin init": "clave admin init --datadir /var/lib/clave --admin 0xAbC…,0xDeF…",
    "clave serve": "clave serve --enclave vsock://16:5000 --kms-key-id arn:aws:kms:us-east-1:111122223333:key/… \\\n"
                   "    --attestation-root root-g1.pem --attestation-root-fingerprint 641a0321…bb5b --pcr 0=…",
    "clave enclave": "clave enclave --listen vsock://-1:5000                       # inside the EIF\n"
                     "clave enclave --listen unix:/tmp/enclave.sock --nsm software --nsm-state DIR --kms-ca DIR/ca.pem",
    "clave kms-emulator": "clave kms-emulator --datadir /var/lib/clave-kms --port 8443 --root /var/lib/clave/nsm/root.pem",
    "clave attest": "clave attest\nclave attest --root root-g1.pem --aws-root --pcr 0=… --out doc.cbor",
    "clave attest verify": "clave attest verify doc.cbor --root root-g1.pem --aws-root --pcr 0=…",
    "clave kms-policy": "clave kms-policy --role-arn arn:aws:iam::111122223333:role/clave --pcr0 … > policy.json",
    "clave validator": "clave validator new --keystore ~/.opera/keystore --password-file pw.txt",
    "clave validator new": "clave validator new --keystore ~/.opera/keystore --password-file pw.txt",
    "clave validator restore": "clave validator restore 0xc004… --keystore ~/.opera/keystore --password-file pw.txt",
    "clave validator password-fifo": "clave validator password-fifo --fifo /run/clave-validator/password --password-file pw.txt",
    "clave systemd": "clave systemd render --mode local --out ./units",
    "clave systemd render": "clave systemd render --mode nitro --node geth --set clave_chain_ids=1 --out ./units\n"
                            "sudo cp ./units/*.service /etc/systemd/system/ && sudo systemctl daemon-reload",
    "clave admin change": "clave admin change --admin 0xAbC…,0xDeF…,0x123… --admin-threshold 2 --keyfile admin1.json \\\n"
                          "    --password-file pw1.txt    # prints one signature; collect K, then:\n"
                          "clave admin change --admin 0xAbC…,0xDeF…,0x123… --admin-threshold 2 --signature 0x… --signature 0x…",
    "clave custodian": "clave custodian new --out alice.custodian --password-file alice-pw.txt\nclave custodian pub alice.custodian",
    "clave custodian new": "clave custodian new --out alice.custodian --password-file alice-pw.txt",
    "clave custodian pub": "clave custodian pub alice.custodian > alice.pub",
    "clave backup": "clave backup create --threshold 2 --custodian $(cat alice.pub) --custodian $(cat bob.pub) \\\n"
                    "    --custodian $(cat carol.pub) --all --out backup-1 --admin-keyfile admin.json --admin-password-file pw.txt",
    "clave backup create": "clave backup create --threshold 2 --custodian $(cat alice.pub) --custodian $(cat bob.pub) \\\n"
                           "    --custodian $(cat carol.pub) --all --out backup-1 --admin-keyfile admin.json --admin-password-file pw.txt",
    "clave backup verify": "clave backup verify backup-1 --custodian-key alice.custodian --password-file alice-pw.txt",
    "clave store": "clave store export --out records.cbor\nclave store import records.cbor   # on a new host, same KMS key",
    "clave store export": "clave store export --out records.cbor",
    "clave store import": "clave store import records.cbor",
    "clave recovery": "clave recovery start --out recovery.cbor\n"
                      "clave recovery contribute backup-1/share-1.json --custodian-key alice.custodian --password-file pw.txt \\\n"
                      "    --attestation recovery.cbor --manifest backup-1/manifest.cbor --root root.pem --out alice-share.json\n"
                      "clave recovery finish --backup backup-1 alice-share.json carol-share.json",
    "clave recovery start": "clave recovery start --out recovery.cbor",
    "clave recovery contribute": "clave recovery contribute backup-1/share-1.json --custodian-key alice.custodian \\\n"
                                 "    --password-file pw.txt --attestation recovery.cbor --manifest backup-1/manifest.cbor \\\n"
                                 "    --root root-g1.pem --pcr0 … --kms-key-arn arn:aws:kms:… --out alice-share.json",
    "clave recovery finish": "clave recovery finish --backup backup-1 alice-share.json carol-share.json",
    "clave policy": "clave policy check policy.yaml\nclave policy sign policy.yaml --keyfile admin1.json --password-file pw1.txt\n"
                    "clave policy apply policy.yaml --signature 0x… --signature 0x…\nclave policy show",
    "clave policy show": "clave policy show\nclave policy show --document > in-force.json",
    "clave policy check": "clave policy check policy.yaml",
    "clave policy sign": "clave policy sign policy.yaml --keyfile admin1.json --password-file pw1.txt",
    "clave policy apply": "clave policy apply policy.yaml --signature 0x… --signature 0x…",
    "clave approvals": "clave approvals list",
    "clave approvals list": "clave approvals list",
    "clave approve": "clave approve 7 --keyfile admin1.json --password-file pw1.txt",
    "clave reject": "clave reject 7",
    "clave freeze": "clave freeze --keyfile admin1.json --password-file pw1.txt",
    "clave unfreeze": "clave unfreeze sign --keyfile admin1.json --password-file pw1.txt   # each of K admins\n"
                      "clave unfreeze --signature 0x… --signature 0x…",
    "clave unfreeze sign": "clave unfreeze sign --keyfile admin1.json --password-file pw1.txt",
    "clave audit": "clave audit verify\nclave audit tail -n 50",
    "clave audit verify": "clave audit verify\nclave audit verify /var/lib/clave/audit.log --root root-g1.pem --aws-root",
    "clave audit tail": "clave audit tail -n 50",
    "clave audit ack": "clave audit ack --keyfile admin1.json --password-file pw1.txt",

}


def subcommands(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    """The parser and every subcommand parser below it, depth first."""
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            seen: set[int] = set()
            for child in action.choices.values():
                if id(child) not in seen:  # aliases name the same parser twice
                    seen.add(id(child))
                    yield from subcommands(child)


def add_examples(parser: argparse.ArgumentParser) -> None:
    for p in subcommands(parser):
        example = EXAMPLES.get(p.prog)
        if example and not p.epilog:
            p.epilog = "example:\n" + "\n".join("  " + line for line in example.splitlines())
            p.formatter_class = argparse.RawDescriptionHelpFormatter

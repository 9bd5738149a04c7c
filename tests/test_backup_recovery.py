"""Backup and recovery through the in-process stack (README "Backup and recovery", issue 14): an admin-
authorized 2-of-3 backup on one datadir; a fresh datadir (new KMS key, new enclave) recovers from
custodians 1 and 3 through the custodians' own tool (`contribute`, which checks the recovering enclave's
attestation), and every recovered account signs again (eth-account recovers the signer). Refusals: K−1
shares, a share altered in value (caught by Feldman, naming the custodian's index), a share of another
backup, a document from an enclave with another PCR0, a backup without or with a stranger's admin proof;
each leaves the store as it was. Neither datadir holds a plaintext share or key afterwards."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from eth_account import Account
from eth_account.messages import encode_defunct
from eth_keyfile import create_keyfile_json
from eth_utils import keccak

from clave.cli.backup import CeremonyRefused, check_own_share, contribute
from clave.core import backup_format as bf
from clave.core.envelope import seal_to
from clave.core.provenance import encode_user_data
from clave.dev.soft_nsm import SoftwareNsm
from clave.enclave.nitro import nsm as nsm_api
from clave.sidecar.signing.signer import META_KMS_KEY_ARN
from clave.sidecar.trust.attestation import load_root
from tests.inproc import Stack, running_stack
from tests.secrets_search import KnownSecrets, files_under, search
from tests.stack import RpcFailure

ADMIN = Account.from_key(keccak(b"clave test_backup_recovery admin"))
STRANGER = Account.from_key(keccak(b"clave test_backup_recovery stranger"))
ADMINS = [bytes.fromhex(ADMIN.address[2:])]
CUSTODIANS = [X25519PrivateKey.from_private_bytes(keccak(b"custodian %d" % i)) for i in (1, 2, 3)]
PUBLIC = [bf.public_key_bytes(c) for c in CUSTODIANS]


async def import_key(stack: Stack, key: bytes) -> str:
    keyfile = json.dumps(create_keyfile_json(key, b"pw", kdf="scrypt", iterations=1 << 10))
    hello = await stack.signer.client.call("hello")
    sealed = seal_to(hello["public_key"], {"keyfile": keyfile, "password": "pw"})
    return str(await stack.rpc("clave_importKeyfile", "0x" + sealed.hex(), True))


async def backup(stack: Stack, *, threshold: int = 2, sequence: int = 1, admin: Any = ADMIN,
                 accounts: list[str] | None = None, custodians: list[bytes] = PUBLIC) -> dict[str, Any]:
    """What `clave backup create` does: challenge, admin signature over the request, create."""
    challenge = await stack.rpc("clave_backupChallenge")
    pcr0 = bytes.fromhex(challenge["pcr0"][2:])
    if accounts is None:
        accounts = [a["address"] for a in await stack.rpc("clave_listAccounts")]
    raw_accounts = [bytes.fromhex(a[2:]) for a in accounts]
    digest = bf.request_digest(sequence, threshold, custodians, raw_accounts, pcr0)
    signature = admin.sign_message(encode_defunct(bf.backup_message(digest, bytes.fromhex(challenge["challenge"][2:]))))
    return dict(await stack.rpc("clave_backupCreate", {
        "threshold": threshold, "sequence": sequence, "custodians": ["0x" + c.hex() for c in custodians],
        "accounts": accounts, "pcr0": challenge["pcr0"], "challenge": challenge["challenge"],
        "signature": "0x" + bytes(signature.signature).hex()}))


def manifest_of(result: dict[str, Any]) -> bf.Manifest:
    return bf.decode_manifest(bytes.fromhex(result["manifest"][2:]))


async def start(stack: Stack) -> bytes:
    return bytes.fromhex((await stack.rpc("clave_recoveryStart", "0x" + bytes(16).hex()))["document"][2:])


def contributions(stack: Stack, result: dict[str, Any], document: bytes, custodians: tuple[int, ...],
                  keys: list[X25519PrivateKey] = CUSTODIANS) -> list[dict[str, Any]]:
    """What custodians `custodians` (1-based) do with `clave recovery contribute`."""
    manifest = manifest_of(result)
    root = load_root(stack.root_pem)
    return [contribute(result["shares"][i - 1], keys[i - 1], manifest, document, root,
                       int(time.time() * 1000)) for i in custodians]


async def finish(stack: Stack, result: dict[str, Any], shares: list[dict[str, Any]]) -> dict[str, Any]:
    return dict(await stack.rpc("clave_recoveryFinish", {"manifest": result["manifest"], "payload": result["payload"],
                                                         "shares": shares}))


async def listed(stack: Stack) -> list[str]:
    return sorted(a["address"] for a in await stack.rpc("clave_listAccounts"))


async def signs(stack: Stack, address: str) -> bool:
    signature = await stack.rpc("eth_sign", address, "0x" + b"after recovery".hex())
    return bool(Account.recover_message(encode_defunct(b"after recovery"), signature=signature).lower() == address.lower())


@pytest.mark.slow  # seconds in process: the fast tier stays under a minute
async def test_backup_on_one_datadir_recovers_on_a_fresh_one_from_custodians_1_and_3(tmp_path: Path) -> None:
    imported_keys = [keccak(b"clave backup imported %d" % i) for i in range(2)]
    async with running_stack(tmp_path / "old", admins=ADMINS) as old:
        await old.rpc("clave_newAccount", {"count": 5})
        for key in imported_keys:
            await import_key(old, key)
        original = await listed(old)
        result = await backup(old)
        old_arn = old.store.get_meta(META_KMS_KEY_ARN)
        assert old.enclave.service is not None
        plain_keys = [k.secret for k in old.enclave.service._keys]  # the enclave's own table, to search for
    manifest = manifest_of(result)
    assert len(original) == 7 and [("0x" + a.hex()) for a in manifest.accounts] == original
    assert manifest.threshold == 2 and manifest.custodians == tuple(PUBLIC) and manifest.admin == ADMINS[0]
    for i, custodian in enumerate(CUSTODIANS):  # `clave backup verify`, offline, each custodian
        assert check_own_share(result["shares"][i], custodian, manifest) == i + 1

    # The old datadir and its KMS key are gone; a new datadir gets a new KMS key and a new enclave.
    async with running_stack(tmp_path / "new", admins=ADMINS) as new:
        assert new.store.get_meta(META_KMS_KEY_ARN) != old_arn
        document = await start(new)
        shares = contributions(new, result, document, (1, 3))
        recovered = await finish(new, result, shares)
        assert sorted(recovered["accounts"]) == original == await listed(new)
        for address in original:
            assert await signs(new, address)
        with pytest.raises(RpcFailure, match="no recovery started"):  # the recovery key was one-time
            await finish(new, result, shares)
        # The store holds them sealed under the new master key: a restarted enclave gets them back from
        # the store alone (the sidecar's watch unseals again), without any share.
        await new.enclave.restart()
        deadline = time.monotonic() + 20
        while True:
            try:
                assert await signs(new, original[0])
                break
            except RpcFailure:
                assert time.monotonic() < deadline, new.signer.status.last_error
                await asyncio.sleep(0.1)
        assert new.enclave.starts == 2 and await listed(new) == original

    secrets = KnownSecrets()
    for n, key in enumerate(plain_keys):
        secrets.add("0x" + key.hex(), f"account key #{n}")
    shamir_values = []
    for i, custodian in enumerate(CUSTODIANS):
        share = bf.open_share(custodian, bf.parse_sealed_share(result["shares"][i]), manifest.id, "custodian")
        shamir_values.append(share.y.to_bytes(32, "big"))
        secrets.add("0x" + share.y.to_bytes(32, "big").hex(), f"share {i + 1} value")
    leaks = search(files_under(tmp_path), secrets)
    assert leaks == [], [f"{leak.description} in {leak.where}" for leak in leaks]
    assert len(secrets) == len(plain_keys) + 3


async def test_refusals_leave_nothing_stored(tmp_path: Path) -> None:
    async with running_stack(tmp_path / "old", admins=ADMINS) as old:
        accounts = await old.rpc("clave_newAccount", {"count": 3})
        with pytest.raises(RpcFailure, match="is not an admin"):
            await backup(old, admin=STRANGER)
        with pytest.raises(RpcFailure, match="unknown or already used challenge"):
            await old.rpc("clave_backupCreate", {
                "threshold": 2, "sequence": 1, "custodians": ["0x" + c.hex() for c in PUBLIC], "accounts": accounts,
                "pcr0": "0x" + bytes(48).hex(), "challenge": "0x" + bytes(32).hex(), "signature": "0x" + bytes(65).hex()})
        with pytest.raises(RpcFailure, match="threshold"):
            await backup(old, threshold=4)
        with pytest.raises(RpcFailure, match="recipient: not a usable X25519 public key"):  # a low-order point
            await backup(old, custodians=[bytes(32), *PUBLIC[1:]])
        with pytest.raises(RpcFailure, match="unknown account"):
            await backup(old, accounts=[*accounts, "0x" + "ab" * 20])
        first = await backup(old)
        other = await backup(old, sequence=2, accounts=accounts[:1])
    manifest = manifest_of(first)

    async with running_stack(tmp_path / "new", admins=ADMINS) as new:
        document = await start(new)
        share1, share3 = contributions(new, first, document, (1, 3))
        with pytest.raises(RpcFailure, match="1 valid share\\(s\\) given, the backup needs 2"):
            await finish(new, first, [share1])
        # custodian 3 hands in a wrong value, correctly sealed: Feldman names it
        recovery_key = bytes.fromhex(share3["recipient"])
        real = bf.open_share(CUSTODIANS[2], bf.parse_sealed_share(first["shares"][2]), manifest.id, "custodian")
        wrong = bf.seal_share(recovery_key, "recovery", manifest.id, dataclasses.replace(real, y=real.y ^ 1))
        with pytest.raises(RpcFailure, match=f"share 3 does not match the backup's Feldman commitments .*; custodian 3 "
                                             f"\\(key {PUBLIC[2].hex()[:16]}…\\)"):
            await finish(new, first, [share1, wrong])
        flipped = dict(share3, ciphertext=share3["ciphertext"][:-2] + ("00" if share3["ciphertext"][-2:] != "00" else "01"))
        with pytest.raises(RpcFailure, match="share 3 does not open"):
            await finish(new, first, [share1, flipped])
        foreign = contributions(new, other, document, (2,))[0]  # a share of another backup
        with pytest.raises(RpcFailure, match="share 2 belongs to another backup"):
            await finish(new, first, [share1, foreign])
        with pytest.raises(RpcFailure, match="share 1 is given twice"):
            await finish(new, first, [share1, share1])
        repinned = dataclasses.replace(manifest, pcr0=bytes(range(48)))
        with pytest.raises(RpcFailure, match="PCR0 is not the one the backup's manifest pins"):
            await finish(new, {**first, "manifest": "0x" + repinned.encode().hex()}, [share1, share3])
        assert await listed(new) == [] and new.store.records() == []

        # An enclave measured from other code (same NSM PKI, so the chain holds): the custodian refuses.
        elsewhere = tmp_path / "other-code"
        elsewhere.mkdir()
        (elsewhere / "patched.py").write_text("backdoor = True\n")
        other_nsm = SoftwareNsm(new.root / "nsm", code_root=elsewhere)
        assert other_nsm.pcrs[0] != manifest.pcr0
        rogue_key = X25519PrivateKey.generate()
        rogue = nsm_api.attestation(other_nsm, user_data=encode_user_data(bytes(32), recovery=bf.public_key_bytes(rogue_key)),
                                    nonce=None, public_key=None)
        with pytest.raises(CeremonyRefused, match="does not verify"):
            contribute(first["shares"][0], CUSTODIANS[0], manifest, rogue, load_root(new.root_pem), int(time.time() * 1000))
        with pytest.raises(CeremonyRefused, match="another PCR0"):  # the custodian's own pin disagrees
            contribute(first["shares"][0], CUSTODIANS[0], manifest, document, load_root(new.root_pem),
                       int(time.time() * 1000), pcr0=bytes(48))
        with pytest.raises(CeremonyRefused, match="master key comes from KMS key .* not arn:aws:kms:eu-west-1"):
            contribute(first["shares"][0], CUSTODIANS[0], manifest, document, load_root(new.root_pem),
                       int(time.time() * 1000), kms_key_arn="arn:aws:kms:eu-west-1:111122223333:key/other")
        attested_arn = new.store.get_meta(META_KMS_KEY_ARN)
        assert attested_arn is not None
        contribute(first["shares"][0], CUSTODIANS[0], manifest, document, load_root(new.root_pem),
                   int(time.time() * 1000), kms_key_arn=attested_arn.decode())
        # and the real ceremony still works after all that
        recovered = await finish(new, first, [share3, share1])
        assert sorted(recovered["accounts"]) == sorted(accounts)
        assert len(new.store.records()) == 3


async def test_without_an_admin_set_backup_is_refused_with_the_remedy(tmp_path: Path) -> None:
    async with running_stack(tmp_path) as stack:
        await stack.rpc("clave_newAccount", {"count": 1})
        with pytest.raises(RpcFailure, match="backup refused: this enclave has no admin set .*clave admin init"):
            await stack.rpc("clave_backupChallenge")


async def test_rotation_voids_older_backups_at_the_custodians_tool(tmp_path: Path) -> None:
    async with running_stack(tmp_path / "old", admins=ADMINS) as old:
        await old.rpc("clave_newAccount", {"count": 2})
        older, newer = await backup(old, sequence=4), await backup(old, sequence=5)
    async with running_stack(tmp_path / "new", admins=ADMINS) as new:
        document = await start(new)
        root = load_root(new.root_pem)
        with pytest.raises(CeremonyRefused, match="sequence 4\\) was superseded by sequence 5"):
            contribute(older["shares"][0], CUSTODIANS[0], manifest_of(older), document, root, int(time.time() * 1000),
                       min_sequence=5)
        shares = [contribute(newer["shares"][i], CUSTODIANS[i], manifest_of(newer), document, root,
                             int(time.time() * 1000), min_sequence=5) for i in (0, 1)]
        assert len((await finish(new, newer, shares))["accounts"]) == 2


def test_cli_custodian_new_pub_and_backup_verify(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The command functions in-process: a custodian key file (password-protected), its public half, and
    `backup verify` on a directory holding a share for it (made here with the core functions)."""
    from clave.cli.backup import write_backup
    from clave.cli.main import build_parser
    from clave.core import feldman, shamir

    password_file = tmp_path / "pw"
    password_file.write_text("custodian pw\n")

    def run(*argv: str) -> str:
        args = build_parser().parse_args(list(argv))
        assert args.func(args) == 0
        return capsys.readouterr().out

    keyfile = tmp_path / "c.json"
    run("custodian", "new", "--out", str(keyfile), "--password-file", str(password_file), "--scrypt-n", "1024")
    public = bytes.fromhex(run("custodian", "pub", str(keyfile)).strip())
    assert "custodian pw" not in keyfile.read_text() and len(public) == 32
    with pytest.raises(SystemExit, match="already exists"):
        run("custodian", "new", "--out", str(keyfile), "--password-file", str(password_file))
    other = X25519PrivateKey.generate()
    split = shamir.split(shamir.random_scalar(lambda n: keccak(b"cli")[:n]), 2, 2, lambda n: keccak(b"cli2")[:n])
    key = bf.BackedUpKey(b"\x01" * 20, b"\x02" * 32, "generated", False)
    payload = bf.encrypt_payload(split.coefficients[0], 1, [key], bytes(12))
    manifest = bf.Manifest(1, 2, (bf.public_key_bytes(other), public), (key.address,), feldman.commit(split.coefficients),
                           bytes(48), bf.payload_hash(payload), 0, bytes(20), bytes(65), bytes(32))
    shares = [bf.seal_share(c, "custodian", manifest.id, s) for c, s in zip(manifest.custodians, split.shares, strict=True)]
    write_backup(tmp_path / "b", {"manifest": "0x" + manifest.encode().hex(), "payload": "0x" + payload.hex(),
                                  "shares": shares})
    report = run("backup", "verify", str(tmp_path / "b"), "--custodian-key", str(keyfile), "--password-file", str(password_file))
    assert "share 2 of 2-of-2 matches the Feldman commitments" in report and "payload matches" in report
    password_file.write_text("wrong\n")
    from clave.core.custodian import CustodianKeyError
    with pytest.raises(CustodianKeyError, match="wrong password"):
        run("backup", "verify", str(tmp_path / "b"), "--custodian-key", str(keyfile), "--password-file", str(password_file))

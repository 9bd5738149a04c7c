"""The enclave's request handlers: CBOR params in, CBOR result out. No sockets, no files.

`EnclaveService.call(method, params)` is the whole surface the parent can reach. Every handler checks
its params itself, because the parent is not trusted to send well-formed ones.
"""

from __future__ import annotations

import gc
import json
import threading
import time
from collections.abc import Callable
from typing import Any

from clave import __version__
from clave.core.errors import InvalidParams, MethodNotFound, RequestError
from clave.core.eth import clique, messages, transactions, typed_data
from clave.enclave import kdf_pool, kms
from clave.enclave.admins import parse_admins, parse_threshold, seal_admins, unseal_admins
from clave.enclave.audit import AuditLog
from clave.enclave.backup import backup_handlers
from clave.enclave.keyfile import decrypt_keyfile, encrypt_keyfile
from clave.enclave.keys import KeyTable, LoadedKey, generate_secrets
from clave.enclave.kms_tls import KmsTransport
from clave.enclave.nitro import nsm as nsm_api
from clave.enclave.nitro.cms import open_enveloped_data
from clave.enclave.opera_keys import validator_handlers
from clave.enclave.policy import Custody
from clave.enclave.sealing import RecordMeta, seal, unseal
from clave.enclave.signing import Signature, sign_preimage
from clave.enclave.state import EnclaveState
from clave.link.sockets import parse_address

MAX_GENERATE = 10_000  # per call: a reply of sealed records must stay well under the 4 MiB frame limit
Handler = Callable[[dict[str, Any]], Any]


def _bytes(params: dict[str, Any], name: str, length: int | None = None) -> bytes:
    value = params.get(name)
    if not isinstance(value, bytes) or (length is not None and len(value) != length):
        want = f"{length} bytes" if length is not None else "bytes"
        raise InvalidParams(f"{name}: expected {want}")
    return value


def _str(params: dict[str, Any], name: str) -> str:
    value = params.get(name)
    if not isinstance(value, str):
        raise InvalidParams(f"{name}: expected a string")
    return value


class EnclaveService:
    def __init__(self, nsm: Any, *, kms_transport: KmsTransport | None = None, clock: Callable[[], float] = time.time) -> None:
        self.state = EnclaveState(nsm, clock)
        self._keys = KeyTable()
        self._kms = kms_transport  # None: this enclave cannot reach KMS, so it never holds a master key
        self._kms_call: tuple[kms.PreparedCall, str] | None = None  # the one prepared KMS request, and its key id
        self._kms_lock = threading.Lock()  # these handlers run on worker threads: one KMS exchange at a time
        self.handlers: dict[str, Handler] = {
            "hello": self.hello,
            "attest": self.attest,
            "kms_prepare": self.kms_prepare,
            "kms_send": self.kms_send,
            "unseal": self.unseal,
            "generate": self.generate,
            "import_keyfile": self.import_keyfile,
            "export_keyfile": self.export_keyfile,
            "export_challenge": self.export_challenge,
            "init_admins": self.init_admins,
            "load_admins": self.load_admins,
            "accounts": self.accounts,
            "sign_tx": self.sign_tx,
            "sign_personal": self.sign_personal,
            "sign_validator": self.sign_validator,
            "sign_typed": self.sign_typed,
            "sign_clique": self.sign_clique,
        }
        self.handlers.update(validator_handlers(self.state))  # go-opera/sonic validator keys
        self.handlers.update(backup_handlers(self.state, self._keys))  # backup and recovery (enclave/backup.py)
        self.audit = AuditLog(self.state)  # hash-chained audit log, signed checkpoints (enclave/audit.py)
        self.state.audit_key = self.audit.public_key
        self.custody = Custody(self.state, self.audit)  # custody policy, freeze (enclave/policy.py)
        self.state.policy_summary = self.custody.summary
        self.handlers.update(self.custody.handlers())
        self.handlers.update(self.audit.handlers())

    # -- lifecycle -------------------------------------------------------------------------------

    def hello(self, params: dict[str, Any]) -> dict[str, Any]:
        return {
            "version": __version__,
            "ready": self.state.ready,
            "keys": len(self._keys),
            "public_key": self.state.boot_public,
        }

    def attest(self, params: dict[str, Any]) -> dict[str, Any]:
        nonce = params.get("nonce")
        if nonce is not None and (not isinstance(nonce, bytes) or len(nonce) > 512):
            raise InvalidParams("nonce: expected at most 512 bytes")
        document = nsm_api.attestation(
            self.state.nsm, user_data=self.state.user_data(), nonce=nonce, public_key=self.state.boot_public
        )
        return {"document": document}

    # -- the master key, from KMS over this enclave's own TLS session (enclave/kms.py) ---------------

    def _transport(self) -> KmsTransport:
        if self._kms is None:
            raise RequestError("this enclave was started without a KMS transport; it cannot load a master key")
        return self._kms

    def kms_prepare(self, params: dict[str, Any]) -> dict[str, Any]:
        """Write the KMS request (GenerateDataKey or Decrypt, with this boot's attestation as Recipient) for
        the parent to sign. A new one replaces the previous; only the latest can be sent."""
        self.state.check_master_free()
        endpoint = _str(params, "endpoint")
        self._transport().check_endpoint(endpoint)
        document = nsm_api.attestation(self.state.nsm, user_data=None, nonce=None, public_key=self.state.boot_public)
        call = kms.prepare(
            self.state.random(16), _str(params, "operation"), params.get("key_id"),
            params.get("ciphertext_blob"), document, endpoint,
        )
        with self._kms_lock:
            self._kms_call = (call, params["key_id"])
        return {"call_id": call.call_id, "endpoint": call.endpoint, "headers": call.headers(), "body": call.body}

    def kms_send(self, params: dict[str, Any]) -> dict[str, Any]:
        """Send the prepared request with the parent's SigV4 headers through `proxy`, and take the master key
        from KMS's answer. The call is used up whatever happens, so each answer is read once."""
        with self._kms_lock:
            return self._kms_send(params)

    def _kms_send(self, params: dict[str, Any]) -> dict[str, Any]:
        self.state.check_master_free()
        pending, self._kms_call = self._kms_call, None
        if pending is None or params.get("call_id") != pending[0].call_id:
            raise RequestError("call_id: no such prepared KMS request (prepare it again)")
        call, key_id = pending
        try:
            proxy = parse_address(_str(params, "proxy"))
        except ValueError as exc:
            raise InvalidParams(f"proxy: {exc}") from None
        status, body = self._transport().exchange(proxy, call, call.request_headers(params.get("auth")))
        answer = kms.read_answer(call, key_id, status, body)
        if isinstance(answer, kms.KmsRefusal):
            return {"refused": {"code": answer.code, "message": answer.message}}
        # expected_size keeps anyone from using us as a padding oracle on edited envelopes.
        data_key = open_enveloped_data(answer.for_recipient, self.state.boot_key, expected_size=32)
        self.state.set_master(data_key, answer.key_arn)
        kdf_pool.warm()  # keyfile imports come once keys can be sealed
        result: dict[str, Any] = {"key_arn": answer.key_arn}
        if answer.ciphertext_blob is not None:
            result["ciphertext_blob"] = answer.ciphertext_blob
        return result

    # -- records ---------------------------------------------------------------------------------

    def unseal(self, params: dict[str, Any]) -> dict[str, Any]:
        master = self.state.master()
        records = params.get("records")
        if not isinstance(records, list):
            raise InvalidParams("records: expected a list")
        loaded: list[bytes] = []
        failed: list[dict[str, Any]] = []
        for record in records:
            try:
                meta, secret = unseal(master, record)
                self._keys.add_unsealed(meta.address, secret, meta.origin, meta.exportable)
                loaded.append(meta.address)
            except RequestError as exc:
                address = record.get("address") if isinstance(record, dict) else None
                failed.append({"address": address if isinstance(address, bytes) else b"", "error": exc.message})
        # Keys live until the process ends: take them out of the cyclic GC's sight, or every full
        # collection walks 100,000 of them while a signature waits (~100 ms stalls measured). Collect
        # first so that no garbage is frozen with them.
        gc.collect()
        gc.freeze()
        return {"loaded": loaded, "failed": failed}

    def _seal_new(self, secret: bytes, origin: str, exportable: bool) -> tuple[LoadedKey, dict[str, Any]]:
        master = self.state.master()
        key = self._keys.add(secret, origin, exportable)
        meta = RecordMeta(key.address, origin, exportable, self.state.now())
        return key, seal(master, meta, secret)

    def generate(self, params: dict[str, Any]) -> dict[str, Any]:
        count = params.get("count", 1)
        if not isinstance(count, int) or not 0 < count <= MAX_GENERATE:
            raise InvalidParams(f"count: expected 1..{MAX_GENERATE}")
        exportable = bool(params.get("exportable", False))
        self.state.master()
        secrets = generate_secrets(self.state.random, count)
        records = [self._seal_new(secret, "generated", exportable)[1] for secret in secrets]
        if count >= 1000:  # bulk generation: freeze the new keys as after unsealing
            gc.collect()
            gc.freeze()
        return {"records": records}

    def import_keyfile(self, params: dict[str, Any]) -> dict[str, Any]:
        payload = self.state.open_envelope(_bytes(params, "envelope"))
        keyfile, password = payload.get("keyfile"), payload.get("password")
        if not isinstance(keyfile, str) or not isinstance(password, str):
            raise InvalidParams("envelope must carry keyfile and password strings")
        self.state.master()
        secret = kdf_pool.run(decrypt_keyfile, keyfile, password)
        key, record = self._seal_new(secret, "imported", bool(params.get("exportable", False)))
        self.audit.record("import", account="0x" + key.address.hex(), exportable=key.exportable)
        return {"record": record}

    # -- operator admin set and export authorization (enclave/admins.py) ---------------------------

    def init_admins(self, params: dict[str, Any]) -> dict[str, Any]:
        """Make this datadir's admin set: only in a boot that holds no account key yet, so that nobody can
        hand a running enclave an admin set of their own; returns it sealed under the master key."""
        admins = parse_admins(params.get("admins"))
        threshold = parse_threshold(params.get("threshold"), admins)
        master = self.state.master()
        if len(self._keys):
            raise RequestError("an admin set is made only in an enclave boot that holds no keys yet (restart the enclave)")
        self.state.admin_set.set(admins, threshold)
        self.audit.record("admins", made=True, admins=["0x" + a.hex() for a in admins], threshold=threshold)
        return {"record": seal_admins(master, admins, threshold)}

    def load_admins(self, params: dict[str, Any]) -> dict[str, Any]:
        admins, threshold = unseal_admins(self.state.master(), params.get("record"))
        self.state.admin_set.set(admins, threshold)
        self.audit.record("admins", made=False, admins=["0x" + a.hex() for a in admins], threshold=threshold)
        return {"admins": list(admins), "threshold": threshold}

    def export_challenge(self, params: dict[str, Any]) -> dict[str, Any]:
        address = _bytes(params, "address", 20)
        self._exportable(address)
        return {"challenge": self.state.admin_set.challenge(address, self.state.clock())}

    def _exportable(self, address: bytes) -> LoadedKey:
        key = self._keys.get(address)
        if not key.exportable:
            raise RequestError("account is not exportable: it was created or imported without --exportable")
        return key

    def export_keyfile(self, params: dict[str, Any]) -> dict[str, Any]:
        address = _bytes(params, "address", 20)
        key = self._exportable(address)
        # An admin's signature over a challenge this enclave issued for this address: the parent cannot
        # make it up, so a process that reaches the enclave directly cannot export either.
        admin = self.state.admin_set.authorize(address, params.get("challenge"), params.get("signature"), self.state.clock())
        self.audit.record("export", account="0x" + address.hex(), admin="0x" + admin.hex())
        payload = self.state.open_envelope(_bytes(params, "envelope"))
        password = payload.get("password")
        if not isinstance(password, str) or not password:
            raise InvalidParams("envelope must carry a non-empty password")
        return {"keyfile": json.dumps(kdf_pool.run(encrypt_keyfile, key.secret, password))}

    def accounts(self, params: dict[str, Any]) -> dict[str, Any]:
        return {"addresses": [k.address for k in self._keys]}

    # -- signing ---------------------------------------------------------------------------------

    def _sign(self, params: dict[str, Any], preimage: bytes) -> tuple[Signature, bytes]:
        key = self._keys.get(_bytes(params, "address", 20))
        return sign_preimage(key.key, preimage)

    def _message_result(self, params: dict[str, Any], preimage: bytes, kind: str,
                        typed: dict[str, Any] | None = None) -> dict[str, Any]:
        address = _bytes(params, "address", 20)
        self._keys.get(address)  # unknown account before policy: the same answer as without one
        self.custody.check_message(address, kind, typed)  # Denied: clef's "request denied"
        signature, digest = self._sign(params, preimage)
        return {"signature": signature.to_bytes(), "digest": digest}

    def sign_tx(self, params: dict[str, Any]) -> dict[str, Any]:
        tx = params.get("tx")
        if not isinstance(tx, dict):
            raise InvalidParams("tx: expected a map")
        preimage, finish = transactions.prepare(tx)
        address = _bytes(params, "address", 20)
        self._keys.get(address)
        self.custody.check_tx(address, tx, preimage, params.get("approvals"))  # Denied: clef's "request denied"
        signature, _ = self._sign(params, preimage)
        raw = finish(signature.y_parity, signature.r, signature.s)
        return {
            "raw": raw,
            "hash": transactions.tx_hash(raw),
            "y_parity": signature.y_parity,
            "r": signature.r,
            "s": signature.s,
        }

    def sign_personal(self, params: dict[str, Any]) -> dict[str, Any]:
        return self._message_result(params, messages.personal_message(_bytes(params, "data")), "personal")

    def sign_validator(self, params: dict[str, Any]) -> dict[str, Any]:
        preimage = messages.validator_message(_bytes(params, "validator", 20), _bytes(params, "data"))
        return self._message_result(params, preimage, "validator")

    def sign_typed(self, params: dict[str, Any]) -> dict[str, Any]:
        typed = params.get("typed_data")
        if not isinstance(typed, dict):
            raise InvalidParams("typed_data: expected a map")
        return self._message_result(params, typed_data.typed_data_preimage(typed), "typed_data", typed)

    def sign_clique(self, params: dict[str, Any]) -> dict[str, Any]:
        return self._message_result(params, clique.clique_seal_preimage(_bytes(params, "header")), "clique")

    def call(self, method: str, params: Any) -> Any:
        handler = self.handlers.get(method)
        if handler is None:
            raise MethodNotFound(method)
        if params is None:
            params = {}
        if not isinstance(params, dict):
            raise InvalidParams("params: expected a map")
        return handler(params)

"""The bot's cross-signing identity: created once, kept in Secret Storage, its device signed.

Why: Element shows every message of a device that its owner has not signed with a red shield,
and clients that exclude insecure devices neither send it their keys nor read it.

What the homeserver keeps (and every client of the user sees):

- the public master, self-signing and user-signing keys (`/keys/device_signing/upload`);
- the bot's device keys signed by the self-signing key (`/keys/signatures/upload`);
- the three private keys in Secret Storage (account data `m.cross_signing.<usage>`), encrypted
  under a secret-storage key whose description is `m.secret_storage.key.<id>`, the default key
  (`m.secret_storage.default_key`). That key is the **recovery key**, shown once to the operator.

What the store keeps: `store_path/cross-signing.keys` (0600), the three private keys and the
secret-storage key, encrypted (AES-HMAC-SHA2) under a key derived from the store's pickle key:
the same protection as the device's own keys, never in the clear.

At each start (`ensure`), after the device keys are uploaded:

- no identity on the homeserver: one is created (the recovery key is written to
  `recovery_key_file` first), the secrets stored, the keys published (MSC3967: a first upload
  needs no password on recent homeservers; otherwise the password, by interactive auth);
- the store holds the published identity: nothing is uploaded;
- it does not (a new store): `matrix.recovery_key` restores it from Secret Storage, the same
  master key; without one, an error says what to do and the bot runs unsigned. A wrong key is
  refused (the start fails); nothing is ever replaced at start;
- the device is signed when the homeserver shows it unsigned by the current self-signing key
  (a new login, a new device).

Replacing an identity (`support-bot e2ee setup --reset`) makes every user see "identity
changed": only an operator does it. Logs say what happened, never a key.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from unpaddedbase64 import decode_base64, encode_base64

from bot.config import MatrixConfig
from bot.matrix.runtime import MatrixStartError
from bot.matrix.secretstore import (
    DEFAULT_KEY,
    RecoveryKeyError,
    SecretStorageError,
    check_key,
    decode_recovery_key,
    decrypt_secret,
    encode_recovery_key,
    encrypt_secret,
    key_description,
    key_event_type,
    new_key,
    new_key_id,
)
from bot.matrix.session import Session, write_private_file
from bot.matrix.signing import USAGES, CrossSigningKeys, sign_json, verify_json
from bot.matrix.transport import api_request
from bot.ports import TransportError

__all__ = [
    "CACHE_FILE",
    "RECOVERY_KEY_FILE",
    "CrossSigning",
    "CrossSigningError",
    "IdentityStatus",
    "NeedsAuth",
    "WrongRecoveryKey",
    "fingerprint",
]

log = logging.getLogger(__name__)

CACHE_FILE = "cross-signing.keys"
RECOVERY_KEY_FILE = "recovery-key.txt"
KEY_NAME = "support-bot recovery key"
_CACHE_INFO = b"support-bot cross-signing cache"
_CACHE_SECRET = "support-bot.cross_signing"
_PASSWORD = "m.login.password"


def secret_name(usage: str) -> str:
    return f"m.cross_signing.{usage}"


def fingerprint(public: str) -> str:
    """A public key as people compare it: groups of 4 characters."""
    return " ".join(public[i : i + 4] for i in range(0, len(public), 4))


class CrossSigningError(Exception):
    """What the operator must know or do; the message says it (no key in it)."""


class WrongRecoveryKey(CrossSigningError):
    """The recovery key does not open this account's Secret Storage: nothing was changed."""


class NeedsAuth(CrossSigningError):
    """The homeserver wants interactive auth the bot cannot give (no password, or SSO)."""


@dataclass(frozen=True, slots=True)
class Published:
    """The bot's keys as the homeserver publishes them."""

    master: str | None
    self_signing: str | None
    user_signing: str | None
    device: Mapping[str, Any] | None  # this device's keys, signatures included

    def device_signed(self, user_id: str) -> bool:
        return (
            self.self_signing is not None
            and self.device is not None
            and verify_json(self.device, user_id, self.self_signing)
        )


@dataclass(frozen=True, slots=True)
class IdentityStatus:
    """What `support-bot e2ee status` prints: public facts only."""

    user_id: str
    device_id: str
    master: str | None  # public key, None: no identity
    device_signed: bool
    store_holds_keys: bool | None  # None: the store could not be read
    secret_storage_key: str | None  # id of the default key, if any


@dataclass(frozen=True, slots=True)
class _Local:
    """What the store keeps: the identity's private keys and the secret-storage key."""

    keys: CrossSigningKeys
    key_id: str
    storage_key: bytes


class CrossSigning:
    """The cross-signing identity of the session's account (`Session` logged in)."""

    def __init__(self, session: Session, matrix: MatrixConfig) -> None:
        self._session = session
        self._matrix = matrix
        self._user = matrix.user_id

    # -- the start ---------------------------------------------------------------------------

    async def ensure(self) -> None:
        """At each start: make sure the identity exists, is held, and signs this device.

        Retryable failures are raised (the caller retries); any other problem is logged and
        the bot goes on unsigned, except a configured recovery key that is wrong (the start
        fails: the operator must fix it)."""
        try:
            await self._ensure()
        except TransportError as error:
            if error.retryable:
                raise
            log.error("cross-signing: %s; the bot's device stays unsigned", error)
        except WrongRecoveryKey as error:
            raise MatrixStartError(f"matrix.recovery_key: {error}") from error
        except CrossSigningError as error:
            log.error("cross-signing: %s", error)

    async def _ensure(self) -> None:
        published = await self.published()
        try:
            local = await self._load_local()
        except CrossSigningError as error:  # the recovery key (or a new identity) may mend it
            log.error("cross-signing: %s", error)
            local = None
        if published.master is None:
            key_file = self._recovery_key_file()
            local, _ = await self._create(replace=False, key_file=key_file)
            log.warning(
                "cross-signing: the recovery key of the bot's new identity is in %s (mode "
                "0600): keep it somewhere safe (a password manager), then delete that file",
                key_file,
            )
            published = await self.published()
        elif local is None or local.keys.master.public != published.master:
            if local is not None:
                log.warning(
                    "cross-signing: the homeserver publishes another identity than the one in"
                    " the store (replaced from another client?)"
                )
            if not self._matrix.recovery_key:
                raise CrossSigningError(
                    "the bot's account has a cross-signing identity but this store does not "
                    "hold its keys: restore them with `support-bot e2ee restore` (or set "
                    "matrix.recovery_key) and restart; the bot's messages show a warning in "
                    "Element until then"
                )
            local = await self._restore(self._matrix.recovery_key, published)
            log.info("cross-signing: identity restored from Secret Storage")
        else:
            await self._repair_secret_storage(local, only_if_missing=True)
            self._remind_recovery_key_file()
        await self._sign_device(local, published)

    # -- operator commands ---------------------------------------------------------------------

    async def status(self) -> IdentityStatus:
        published = await self.published()
        try:
            local = await self._load_local()
        except CrossSigningError:
            holds: bool | None = None
        else:
            holds = (
                local is not None
                and published.master is not None
                and local.keys.master.public == published.master
            )
        default = await self._account_data(DEFAULT_KEY)
        key_id = default.get("key") if default else None
        return IdentityStatus(
            user_id=self._user,
            device_id=self._device_id(),
            master=published.master,
            device_signed=published.device_signed(self._user),
            store_holds_keys=holds,
            secret_storage_key=key_id if isinstance(key_id, str) else None,
        )

    async def setup(self, *, reset: bool = False) -> str | None:
        """Create the identity (or replace it, `reset`) and sign the device: the new recovery
        key; None when the identity the store holds was kept (Secret Storage and the device's
        signature are checked, and written again if needed)."""
        published = await self.published()
        local = await self._load_local()
        if published.master is not None and not reset:
            if local is None or local.keys.master.public != published.master:
                raise CrossSigningError(
                    "the bot's account already has a cross-signing identity, which this store "
                    "does not hold: restore it with `support-bot e2ee restore`, or replace it "
                    "with `support-bot e2ee setup --reset` (every user then sees the bot's "
                    "identity change)"
                )
            await self._repair_secret_storage(local, only_if_missing=False)
            await self._sign_device(local, published)
            return None
        local, recovery_key = await self._create(replace=published.master is not None)
        await self._sign_device(local, await self.published())
        return recovery_key

    async def restore(self, recovery_key: str) -> None:
        """Restore the published identity from Secret Storage and sign the device."""
        published = await self.published()
        if published.master is None:
            raise CrossSigningError(
                "the bot's account has no cross-signing identity to restore: create one with "
                "`support-bot e2ee setup` (or start the bot)"
            )
        local = await self._restore(recovery_key, published)
        await self._sign_device(local, published)

    # -- creating and restoring ----------------------------------------------------------------

    async def _create(self, *, replace: bool, key_file: Path | None = None) -> tuple[_Local, str]:
        """A new identity and its recovery key. With `key_file` (the first start) the key is
        written there before anything is published: no identity is ever without it."""
        local = _Local(CrossSigningKeys.generate(), new_key_id(), new_key())
        recovery_key = encode_recovery_key(local.storage_key)
        if key_file is not None:
            text = _recovery_key_file_text(self._user, recovery_key)
            await asyncio.to_thread(write_private_file, key_file, text)
        await self._publish(local, replace=replace)
        log.info("cross-signing: %s the bot's identity", "replaced" if replace else "created")
        return local, recovery_key

    async def _publish(self, local: _Local, *, replace: bool) -> None:
        """Secret Storage, the store's copy and the public keys, in the order that leaves
        nothing unusable if one step fails. A new identity: its secrets first (a failure
        before the upload publishes nothing, and the next try starts afresh). A replacement:
        the upload first (a refused password then changes nothing at all)."""
        if replace:
            await self._upload_identity(local.keys)
            await self._save_local(local)
            await self._store_secrets(local)
        else:
            await self._store_secrets(local)
            await self._save_local(local)
            await self._upload_identity(local.keys)

    async def _restore(self, recovery_key: str, published: Published) -> _Local:
        try:
            storage_key = decode_recovery_key(recovery_key)
        except RecoveryKeyError as error:
            raise WrongRecoveryKey(str(error)) from None
        default = await self._account_data(DEFAULT_KEY)
        key_id = default.get("key") if default else None
        description = (
            await self._account_data(key_event_type(key_id)) if isinstance(key_id, str) else None
        )
        if not isinstance(key_id, str) or description is None:
            raise CrossSigningError(
                "the bot's account has no Secret Storage to restore its identity from: replace"
                " the identity with `support-bot e2ee setup --reset`"
            )
        try:
            right = check_key(storage_key, description)
        except SecretStorageError as error:
            raise CrossSigningError(f"Secret Storage: {error}") from None
        if not right:
            raise WrongRecoveryKey(
                "this recovery key does not open the account's Secret Storage (nothing was "
                "changed): check it against the one kept when the identity was created"
            )
        seeds = {}
        for usage in USAGES:
            content = await self._account_data(secret_name(usage)) or {}
            encrypted = content.get("encrypted")
            data = encrypted.get(key_id) if isinstance(encrypted, dict) else None
            if not isinstance(data, dict):
                raise CrossSigningError(
                    f"Secret Storage holds no {usage.replace('_', '-')} key under its default "
                    "key: replace the identity with `support-bot e2ee setup --reset`"
                )
            try:
                seeds[usage] = decrypt_secret(storage_key, secret_name(usage), data)
            except SecretStorageError:
                raise WrongRecoveryKey(
                    "this recovery key does not open the account's Secret Storage (nothing was"
                    " changed)"
                ) from None
        try:
            keys = CrossSigningKeys.from_seeds(seeds)
        except ValueError:
            raise CrossSigningError("Secret Storage holds damaged cross-signing keys") from None
        if keys.master.public != published.master or (
            published.self_signing is not None
            and keys.self_signing.public != published.self_signing
        ):
            raise CrossSigningError(
                "the keys in Secret Storage are not those of the identity the homeserver "
                "publishes: replace the identity with `support-bot e2ee setup --reset`"
            )
        local = _Local(keys, key_id, storage_key)
        await self._save_local(local)
        return local

    async def _repair_secret_storage(self, local: _Local, *, only_if_missing: bool) -> None:
        """Write Secret Storage again from the store's copy: at start when it is missing (a
        creation cut short), and by `e2ee setup` when its default key is not the bot's."""
        default = await self._account_data(DEFAULT_KEY)
        current = default.get("key") if default else None
        if current == local.key_id or (only_if_missing and current is not None):
            return
        await self._store_secrets(local)
        log.info("cross-signing: Secret Storage written again from the store's copy")

    # -- the device ----------------------------------------------------------------------------

    async def _sign_device(self, local: _Local, published: Published) -> None:
        if published.self_signing != local.keys.self_signing.public:
            raise CrossSigningError(
                "the homeserver publishes another self-signing key than the identity's: "
                "replace the identity with `support-bot e2ee setup --reset`"
            )
        if published.device_signed(self._user):
            return
        device = published.device
        if device is None:
            raise CrossSigningError(
                f"the homeserver has no keys for device {self._device_id()} yet"
            )
        if not self._is_own_device(device):
            raise CrossSigningError(
                f"the keys the homeserver publishes for device {self._device_id()} are not "
                "this store's: not signed"
            )
        signed = sign_json(
            {k: v for k, v in device.items() if k != "unsigned"},
            self._user,
            local.keys.self_signing,
        )
        _, answer = await api_request(
            self._session.nio(),
            "device signature upload",
            "POST",
            "/keys/signatures/upload",
            {self._user: {self._device_id(): signed}},
        )
        failures = answer.get("failures")
        if failures:
            raise CrossSigningError(f"the homeserver refused the device's signature: {failures}")
        log.info("cross-signing: signed device %s", self._device_id())

    def _is_own_device(self, device: Mapping[str, Any]) -> bool:
        """Whether `device` holds this store's identity keys: the bot signs only its own
        device, never keys the homeserver made up."""
        client = self._session.nio()
        olm = getattr(client, "olm", None)
        if olm is None:
            return False
        own = olm.account.identity_keys
        device_id = self._device_id()
        keys = device.get("keys") if isinstance(device.get("keys"), dict) else {}
        return (
            device.get("user_id") == self._user
            and device.get("device_id") == device_id
            and keys.get(f"ed25519:{device_id}") == own["ed25519"]
            and keys.get(f"curve25519:{device_id}") == own["curve25519"]
        )

    # -- the homeserver ------------------------------------------------------------------------

    async def published(self) -> Published:
        _, answer = await api_request(
            self._session.nio(),
            "keys query",
            "POST",
            "/keys/query",
            {"device_keys": {self._user: []}},
        )

        def mine(section: str) -> Any:
            entries = answer.get(section)
            return entries.get(self._user) if isinstance(entries, dict) else None

        def public(section: str) -> str | None:
            entry = mine(section)
            keys = entry.get("keys") if isinstance(entry, dict) else None
            if not isinstance(keys, dict):
                return None
            found = [v for k, v in keys.items() if k.startswith("ed25519:") and isinstance(v, str)]
            return found[0] if len(found) == 1 else None

        devices = mine("device_keys")
        device = devices.get(self._device_id()) if isinstance(devices, dict) else None
        return Published(
            master=public("master_keys"),
            self_signing=public("self_signing_keys"),
            user_signing=public("user_signing_keys"),
            device=device if isinstance(device, dict) else None,
        )

    async def _upload_identity(self, keys: CrossSigningKeys) -> None:
        body = keys.upload_body(self._user)
        what = "cross-signing keys upload"
        path = "/keys/device_signing/upload"
        status, answer = await api_request(
            self._session.nio(), what, "POST", path, body, accept=(200, 401)
        )
        if status == 200:
            return
        auth = self._password_auth(answer)
        status, answer = await api_request(
            self._session.nio(), what, "POST", path, {**body, "auth": auth}, accept=(200, 401)
        )
        if status != 200:
            raise CrossSigningError(
                "the homeserver refused the bot's password (matrix.password) for publishing "
                f"its cross-signing keys ({answer.get('errcode') or 'HTTP 401'}); nothing was "
                "changed"
            )

    def _password_auth(self, answer: Mapping[str, Any]) -> dict[str, Any]:
        """The `auth` of the second try, or `NeedsAuth` saying what the operator can do."""
        flows = answer.get("flows")
        session = answer.get("session")
        if not isinstance(flows, list) or not isinstance(session, str):
            raise CrossSigningError(
                f"cross-signing keys upload: {answer.get('errcode') or 'HTTP 401'}"
            )
        stages = [flow.get("stages") for flow in flows if isinstance(flow, dict)]
        if [_PASSWORD] not in stages:
            urls = [
                value.get("url")
                for value in (answer.get("params") or {}).values()
                if isinstance(value, dict) and isinstance(value.get("url"), str)
            ]
            where = (
                f" (the homeserver says: approve it at {urls[0]}, then try again)" if urls else ""
            )
            raise NeedsAuth(
                "the homeserver wants an approval the bot cannot give to publish its "
                f"cross-signing keys{where}"
            )
        if not self._matrix.password:
            raise NeedsAuth(
                "the homeserver wants the bot account's password to publish its cross-signing"
                " keys, and only an access token is configured: run once "
                "`SUPPORT_BOT_MATRIX_PASSWORD=... support-bot e2ee setup` (the password is "
                "used for that request only and not kept), then restart the bot"
            )
        return {
            "type": _PASSWORD,
            "identifier": {"type": "m.id.user", "user": self._user},
            "password": self._matrix.password,
            "session": session,
        }

    async def _store_secrets(self, local: _Local) -> None:
        """Key description, then the three secrets, then the default key: a default key on
        the homeserver means everything before it is there."""
        key_id, key = local.key_id, local.storage_key
        await self._put_account_data(key_event_type(key_id), key_description(key, KEY_NAME))
        for usage in USAGES:
            seed = local.keys.by_usage(usage).seed
            encrypted = encrypt_secret(key, secret_name(usage), seed)
            await self._put_account_data(secret_name(usage), {"encrypted": {key_id: encrypted}})
        await self._put_account_data(DEFAULT_KEY, {"key": key_id})

    async def _account_data(self, event_type: str) -> dict[str, Any] | None:
        status, answer = await api_request(
            self._session.nio(),
            f"account data {event_type}",
            "GET",
            self._account_data_path(event_type),
            accept=(200, 404),
        )
        return answer if status == 200 else None

    async def _put_account_data(self, event_type: str, content: Mapping[str, Any]) -> None:
        await api_request(
            self._session.nio(),
            f"account data {event_type}",
            "PUT",
            self._account_data_path(event_type),
            content,
        )

    def _account_data_path(self, event_type: str) -> str:
        return f"/user/{quote(self._user, safe='')}/account_data/{quote(event_type, safe='')}"

    def _device_id(self) -> str:
        device_id = self._session.nio().device_id
        if not device_id:
            raise RuntimeError("cross-signing before login")
        return str(device_id)

    # -- the store's copy ----------------------------------------------------------------------

    @property
    def _cache_path(self) -> Path:
        return Path(self._matrix.store_path) / CACHE_FILE

    def _cache_key(self) -> bytes:
        pickle_key = self._session.pickle_key
        if not pickle_key:
            raise CrossSigningError("the store's pickle key is not known: its copy is unread")
        return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_CACHE_INFO).derive(
            pickle_key.encode("utf-8")
        )

    async def _load_local(self) -> _Local | None:
        path = self._cache_path
        try:
            text = await asyncio.to_thread(path.read_text, encoding="utf-8")
        except FileNotFoundError:
            return None
        try:
            outer = json.loads(text)
            inner = json.loads(decrypt_secret(self._cache_key(), _CACHE_SECRET, outer["data"]))
            local = _Local(
                CrossSigningKeys.from_seeds(inner["seeds"]),
                str(inner["key_id"]),
                decode_base64(inner["storage_key"]),
            )
        except (ValueError, KeyError, TypeError, SecretStorageError):
            raise CrossSigningError(
                f"{path} cannot be read with this store's pickle key: move it away to start "
                "without it (then restore with the recovery key)"
            ) from None
        return local

    async def _save_local(self, local: _Local) -> None:
        plain = json.dumps(
            {
                "seeds": local.keys.seeds(),
                "key_id": local.key_id,
                "storage_key": encode_base64(local.storage_key),
            }
        )
        data = encrypt_secret(self._cache_key(), _CACHE_SECRET, plain)
        text = json.dumps({"version": 1, "master": local.keys.master.public, "data": data})
        await asyncio.to_thread(write_private_file, self._cache_path, text)

    # -- the recovery key file -----------------------------------------------------------------

    def _recovery_key_file(self) -> Path:
        if self._matrix.recovery_key_file:
            return Path(self._matrix.recovery_key_file)
        return Path(self._matrix.store_path) / RECOVERY_KEY_FILE

    def _remind_recovery_key_file(self) -> None:
        path = self._recovery_key_file()
        if path.exists():
            log.warning(
                "cross-signing: the recovery key is still in %s: keep it somewhere safe, then "
                "delete that file",
                path,
            )


def _recovery_key_file_text(user_id: str, recovery_key: str) -> str:
    return (
        f"# The recovery key of {user_id}'s cross-signing identity (support-bot).\n"
        "# It restores the bot's identity on a new installation: keep it somewhere safe\n"
        "# (a password manager), then delete this file.\n"
        f"{recovery_key}"
    )


def read_recovery_key(text: str) -> str:
    """The recovery key in `text` as a file written by the bot holds it (comment lines
    starting with "#" are skipped) or as typed."""
    return " ".join(
        line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")
    )

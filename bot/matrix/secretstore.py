"""Secret Storage (`m.secret_storage`, AES-HMAC-SHA2) and the recovery key: pure functions.

What the Matrix spec says, implemented with `cryptography` (HKDF, AES-CTR) and `base58`:

- A secret-storage key is 32 random bytes. Its description (account data
  `m.secret_storage.key.<id>`) carries an `iv` and the `mac` of 32 zero bytes encrypted under
  it (HKDF info ""), so that a key typed in can be checked before anything is decrypted.
- A secret (account data named after it, e.g. `m.cross_signing.master`) is encrypted under keys
  derived from the secret-storage key (HKDF-SHA-256, salt of 32 zero bytes, info = the secret's
  name): AES-CTR-256 with a random IV whose bit 63 is 0, then HMAC-SHA-256 over the ciphertext.
  The MAC is checked (in constant time) before anything is decrypted.
- The recovery key shown to a person is the spec's "cryptographic key representation": 0x8B
  0x01, the key, a parity byte (the XOR of all the bytes before it), in base58 with the Bitcoin
  alphabet, a space after every 4th character. Reading one ignores whitespace.

Nothing here talks to a server, logs, or keeps a key: `crosssign` does the rest.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Mapping
from functools import reduce
from typing import Any

import base58
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from unpaddedbase64 import decode_base64, encode_base64

__all__ = [
    "AES_HMAC_SHA2",
    "DEFAULT_KEY",
    "KEY_BYTES",
    "RecoveryKeyError",
    "SecretStorageError",
    "check_key",
    "decode_recovery_key",
    "decrypt_secret",
    "encode_recovery_key",
    "encrypt_secret",
    "key_description",
    "key_event_type",
    "new_key",
    "new_key_id",
]

AES_HMAC_SHA2 = "m.secret_storage.v1.aes-hmac-sha2"
#: Account data naming the default key: `{"key": "<key id>"}`.
DEFAULT_KEY = "m.secret_storage.default_key"
KEY_BYTES = 32
RECOVERY_KEY_PREFIX = b"\x8b\x01"
_RECOVERY_KEY_LENGTH = len(RECOVERY_KEY_PREFIX) + KEY_BYTES + 1
# In base58, 35 bytes starting with 0x8B always take 48 characters.
_RECOVERY_KEY_CHARACTERS = 48
_GROUP = 4
_ZERO_SALT = bytes(32)
_IV_BYTES = 16


class RecoveryKeyError(ValueError):
    """Text that is not a recovery key at all (mistyped, truncated, another kind of key)."""


class SecretStorageError(ValueError):
    """A key that does not open a secret (wrong key, tampered or damaged data)."""


# -- the recovery key ---------------------------------------------------------------------------


def new_key() -> bytes:
    return secrets.token_bytes(KEY_BYTES)


def new_key_id() -> str:
    """A key id as clients make them: random letters and digits, used in an event type."""
    return secrets.token_urlsafe(24).replace("-", "a").replace("_", "b")


def _parity(data: bytes) -> int:
    return reduce(lambda a, b: a ^ b, data, 0)


def encode_recovery_key(key: bytes) -> str:
    if len(key) != KEY_BYTES:
        raise ValueError(f"a secret-storage key has {KEY_BYTES} bytes, not {len(key)}")
    data = RECOVERY_KEY_PREFIX + key
    text = base58.b58encode(data + bytes([_parity(data)])).decode("ascii")
    return " ".join(text[i : i + _GROUP] for i in range(0, len(text), _GROUP))


def decode_recovery_key(text: str) -> bytes:
    """The 32-byte key of a recovery key as typed (any whitespace); `RecoveryKeyError` says
    what is wrong with it without repeating it."""
    compact = "".join(text.split())
    if not compact:
        raise RecoveryKeyError("the recovery key is empty")
    try:
        data = base58.b58decode(compact)
    except ValueError:
        raise RecoveryKeyError(
            "the recovery key holds a character that is not in its alphabet (0, O, I and l "
            "never occur in one): check for a typing mistake"
        ) from None
    if len(compact) != _RECOVERY_KEY_CHARACTERS:
        raise RecoveryKeyError(
            f"a recovery key has {_RECOVERY_KEY_CHARACTERS} characters (12 groups of 4), "
            f"not {len(compact)}: check that it is whole"
        )
    if _parity(data) != 0:
        raise RecoveryKeyError("the recovery key has a typing mistake (its check byte is wrong)")
    if len(data) != _RECOVERY_KEY_LENGTH or not data.startswith(RECOVERY_KEY_PREFIX):
        raise RecoveryKeyError("this is not a recovery key (another kind of key?)")
    return data[len(RECOVERY_KEY_PREFIX) : -1]


# -- AES-HMAC-SHA2 ----------------------------------------------------------------------------


def _derive(key: bytes, name: str) -> tuple[bytes, bytes]:
    derived = HKDF(
        algorithm=hashes.SHA256(), length=64, salt=_ZERO_SALT, info=name.encode("utf-8")
    ).derive(key)
    return derived[:32], derived[32:]


def _new_iv() -> bytes:
    iv = bytearray(secrets.token_bytes(_IV_BYTES))
    iv[8] &= 0x7F  # bit 63: the counter never wraps, whatever the AES-CTR implementation
    return bytes(iv)


def _ctr(key: bytes, iv: bytes, data: bytes) -> bytes:
    # CTR mode: the same operation encrypts and decrypts.
    transform = Cipher(algorithms.AES(key), modes.CTR(iv)).encryptor()
    return transform.update(data) + transform.finalize()


def _mac(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.sha256).digest()


def _encrypt(key: bytes, name: str, plaintext: bytes, iv: bytes | None) -> dict[str, str]:
    aes_key, mac_key = _derive(key, name)
    iv = _new_iv() if iv is None else iv
    ciphertext = _ctr(aes_key, iv, plaintext)
    return {
        "iv": encode_base64(iv),
        "ciphertext": encode_base64(ciphertext),
        "mac": encode_base64(_mac(mac_key, ciphertext)),
    }


def encrypt_secret(
    key: bytes, name: str, secret: str, *, iv: bytes | None = None
) -> dict[str, str]:
    """`{"iv", "ciphertext", "mac"}` (unpadded base64) of `secret` under `key` for `name`."""
    return _encrypt(key, name, secret.encode("utf-8"), iv)


def decrypt_secret(key: bytes, name: str, data: Mapping[str, Any]) -> str:
    """The secret `name` encrypted as `data`; `SecretStorageError` when its MAC does not match
    (the wrong key, or changed data) or `data` is malformed."""
    try:
        iv = decode_base64(data["iv"])
        ciphertext = decode_base64(data["ciphertext"])
        mac = decode_base64(data["mac"])
    except (KeyError, TypeError, ValueError) as error:
        raise SecretStorageError(f"malformed encrypted secret {name}") from error
    if len(iv) != _IV_BYTES:
        raise SecretStorageError(f"malformed encrypted secret {name} (its IV)")
    aes_key, mac_key = _derive(key, name)
    if not hmac.compare_digest(_mac(mac_key, ciphertext), mac):
        raise SecretStorageError(f"the key does not open {name}")
    try:
        return _ctr(aes_key, iv, ciphertext).decode("utf-8")
    except UnicodeDecodeError as error:  # pragma: no cover - a MAC that matches garbage
        raise SecretStorageError(f"{name} is not text") from error


def key_event_type(key_id: str) -> str:
    return f"m.secret_storage.key.{key_id}"


def key_description(key: bytes, name: str) -> dict[str, str]:
    """The content of `m.secret_storage.key.<id>`: the algorithm and the key check."""
    check = _encrypt(key, "", bytes(KEY_BYTES), None)
    return {"name": name, "algorithm": AES_HMAC_SHA2, "iv": check["iv"], "mac": check["mac"]}


def check_key(key: bytes, description: Mapping[str, Any]) -> bool:
    """Whether `key` is the one `description` describes. A description without a check
    (`iv`/`mac` are optional) cannot tell: True, and the secret's own MAC decides."""
    if description.get("algorithm") != AES_HMAC_SHA2:
        algorithm = description.get("algorithm")
        raise SecretStorageError(f"unsupported secret-storage algorithm {algorithm!r}")
    iv, mac = description.get("iv"), description.get("mac")
    if iv is None or mac is None:
        return True
    try:
        expected = _encrypt(key, "", bytes(KEY_BYTES), decode_base64(iv))["mac"]
        return hmac.compare_digest(decode_base64(expected), decode_base64(mac))
    except (TypeError, ValueError) as error:
        raise SecretStorageError("malformed secret-storage key description") from error

"""Ed25519 keys and signed JSON as Matrix cross-signing needs them: pure functions.

- Signing JSON (spec appendix "Signing JSON"): `signatures` and `unsigned` are taken out, the
  rest is encoded as canonical JSON (`canonicaljson`), signed with ed25519 (`cryptography`),
  and the unpadded-base64 signature is added under `signatures[<signer>]["ed25519:<key id>"]`;
  other signatures and `unsigned` stay as they were.
- A cross-signing key (master, self-signing, user-signing) is an ed25519 key pair. Its key id is
  its public key (unpadded base64), and its private part, as Secret Storage keeps it, is the
  32-byte seed in unpadded base64.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from canonicaljson import encode_canonical_json
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from unpaddedbase64 import decode_base64, encode_base64

__all__ = [
    "USAGES",
    "CrossSigningKeys",
    "SigningKey",
    "canonical_json",
    "cross_signing_key",
    "key_id",
    "sign_json",
    "verify_json",
]

ED25519 = "ed25519"
#: The three keys of an identity, by their usage; also the last part of their secret's name
#: (`m.cross_signing.<usage>`).
USAGES = ("master", "self_signing", "user_signing")


def key_id(public: str) -> str:
    """`ed25519:<public key>`: how a cross-signing key (or a device, by its id) signs."""
    return f"{ED25519}:{public}"


class SigningKey:
    """An ed25519 private key; `repr` never shows it."""

    __slots__ = ("_key", "public")

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key
        self.public = encode_base64(key.public_key().public_bytes_raw())

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_seed(cls, seed: str) -> SigningKey:
        """From the unpadded-base64 seed Secret Storage keeps; ValueError if it is not one."""
        raw = decode_base64(seed)
        if len(raw) != 32:
            raise ValueError("an ed25519 seed has 32 bytes")
        return cls(Ed25519PrivateKey.from_private_bytes(raw))

    @property
    def seed(self) -> str:
        return encode_base64(self._key.private_bytes_raw())

    def sign(self, message: bytes) -> str:
        return encode_base64(self._key.sign(message))

    def __repr__(self) -> str:
        return f"SigningKey(public={self.public!r})"


def canonical_json(value: Mapping[str, Any]) -> bytes:
    """What is signed: `value` without `signatures` and `unsigned`, as canonical JSON."""
    return encode_canonical_json(
        {k: v for k, v in value.items() if k not in ("signatures", "unsigned")}
    )


def sign_json(value: Mapping[str, Any], signer: str, key: SigningKey) -> dict[str, Any]:
    """A copy of `value` with `signer`'s signature by `key` added to its `signatures`."""
    signed = copy.deepcopy(dict(value))
    signature = key.sign(canonical_json(signed))
    signed.setdefault("signatures", {}).setdefault(signer, {})[key_id(key.public)] = signature
    return signed


def verify_json(value: Mapping[str, Any], signer: str, public: str) -> bool:
    """Whether `value` carries a valid signature of `signer` by the ed25519 key `public`."""
    try:
        signature = value["signatures"][signer][key_id(public)]
        Ed25519PublicKey.from_public_bytes(decode_base64(public)).verify(
            decode_base64(signature), canonical_json(value)
        )
    except (KeyError, TypeError, ValueError, InvalidSignature):
        return False
    return True


def cross_signing_key(user_id: str, usage: str, key: SigningKey) -> dict[str, Any]:
    """The public object of a cross-signing key, unsigned (`CrossSigningKey` in the spec)."""
    return {"user_id": user_id, "usage": [usage], "keys": {key_id(key.public): key.public}}


@dataclass(frozen=True, slots=True)
class CrossSigningKeys:
    """A user's cross-signing identity: the master key and the two keys it signs."""

    master: SigningKey
    self_signing: SigningKey
    user_signing: SigningKey

    @classmethod
    def generate(cls) -> CrossSigningKeys:
        return cls(SigningKey.generate(), SigningKey.generate(), SigningKey.generate())

    @classmethod
    def from_seeds(cls, seeds: Mapping[str, str]) -> CrossSigningKeys:
        """From `{usage: seed}`; ValueError if one is missing or not a seed."""
        try:
            return cls(*(SigningKey.from_seed(seeds[usage]) for usage in USAGES))
        except (KeyError, TypeError) as error:
            raise ValueError("a cross-signing seed is missing") from error

    def seeds(self) -> dict[str, str]:
        return {usage: self.by_usage(usage).seed for usage in USAGES}

    def by_usage(self, usage: str) -> SigningKey:
        return {
            "master": self.master,
            "self_signing": self.self_signing,
            "user_signing": self.user_signing,
        }[usage]

    def upload_body(self, user_id: str) -> dict[str, Any]:
        """The body of `POST /keys/device_signing/upload` (without `auth`): the master key,
        and the self-signing and user-signing keys signed by it."""
        return {
            "master_key": cross_signing_key(user_id, "master", self.master),
            "self_signing_key": sign_json(
                cross_signing_key(user_id, "self_signing", self.self_signing),
                user_id,
                self.master,
            ),
            "user_signing_key": sign_json(
                cross_signing_key(user_id, "user_signing", self.user_signing),
                user_id,
                self.master,
            ),
        }

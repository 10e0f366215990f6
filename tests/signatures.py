"""Checking Matrix signatures independently of the bot's code: vodozemac (the Rust library
matrix-nio uses) over the canonical JSON the spec describes."""

from __future__ import annotations

from typing import Any

import vodozemac
from canonicaljson import encode_canonical_json


def signed_by(value: dict[str, Any], signer: str, public: str) -> bool:
    """Whether `value` holds a valid signature of `signer` by the ed25519 key `public`."""
    signature = value.get("signatures", {}).get(signer, {}).get(f"ed25519:{public}")
    if signature is None:
        return False
    stripped = {k: v for k, v in value.items() if k not in ("signatures", "unsigned")}
    try:
        vodozemac.Ed25519PublicKey.from_base64(public).verify_signature(
            encode_canonical_json(stripped), vodozemac.Ed25519Signature.from_base64(signature)
        )
    except vodozemac.SignatureException:
        return False
    return True

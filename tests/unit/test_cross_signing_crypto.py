"""The pure parts of the bot's cross-signing: signed JSON, the recovery key, Secret Storage.

Signatures are checked with vodozemac (the Rust implementation matrix-nio uses), not with the
code that made them; the recovery key against matrix-js-sdk's own test key.
"""

from __future__ import annotations

import base64
import functools
import operator

import pytest

from bot.matrix.secretstore import (
    AES_HMAC_SHA2,
    RecoveryKeyError,
    SecretStorageError,
    check_key,
    decode_recovery_key,
    decrypt_secret,
    encode_recovery_key,
    encrypt_secret,
    key_description,
    new_key,
)
from bot.matrix.signing import CrossSigningKeys, SigningKey, sign_json, verify_json
from tests.signatures import signed_by

USER = "@bot:example.org"
DEVICE_KEYS = {
    "user_id": USER,
    "device_id": "ABCDEFGHIJ",
    "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
    "keys": {"curve25519:ABCDEFGHIJ": "curvekey", "ed25519:ABCDEFGHIJ": "edkey"},
    "signatures": {USER: {"ed25519:ABCDEFGHIJ": "the device's own signature"}},
    "unsigned": {"device_display_name": "support-bot"},
}


# -- signed JSON ------------------------------------------------------------------------------


def test_a_signed_device_verifies_with_the_public_key_and_keeps_what_it_had() -> None:
    key = SigningKey.generate()
    signed = sign_json(DEVICE_KEYS, USER, key)

    assert signed_by(signed, USER, key.public)
    assert verify_json(signed, USER, key.public)
    # The device's own signature and `unsigned` are kept; the original is not changed.
    assert signed["signatures"][USER]["ed25519:ABCDEFGHIJ"] == "the device's own signature"
    assert signed["unsigned"] == DEVICE_KEYS["unsigned"]
    assert f"ed25519:{key.public}" not in DEVICE_KEYS["signatures"][USER]


def test_signatures_and_unsigned_are_not_signed_but_everything_else_is() -> None:
    key = SigningKey.generate()
    signed = sign_json(DEVICE_KEYS, USER, key)

    other_unsigned = {**signed, "unsigned": {"device_display_name": "renamed"}}
    assert signed_by(other_unsigned, USER, key.public)
    changed_key = {**signed, "keys": {**signed["keys"], "ed25519:ABCDEFGHIJ": "another"}}
    assert not signed_by(changed_key, USER, key.public)
    assert not verify_json(changed_key, USER, key.public)


def test_a_signature_by_another_key_or_signer_does_not_verify() -> None:
    key, other = SigningKey.generate(), SigningKey.generate()
    signed = sign_json(DEVICE_KEYS, USER, key)
    forged = {**signed, "signatures": {USER: {f"ed25519:{other.public}": "AAAA"}}}

    assert not verify_json(signed, USER, other.public)
    assert not verify_json(signed, "@someone:else.org", key.public)
    assert not verify_json(forged, USER, other.public)


def test_a_key_comes_back_from_its_seed_and_never_shows_it() -> None:
    key = SigningKey.generate()
    again = SigningKey.from_seed(key.seed)

    assert again.public == key.public
    assert verify_json(sign_json(DEVICE_KEYS, USER, again), USER, key.public)
    assert key.seed not in repr(key)
    with pytest.raises(ValueError):
        SigningKey.from_seed(base64.b64encode(b"short").decode())


def test_the_upload_body_signs_both_subkeys_with_the_master_key() -> None:
    keys = CrossSigningKeys.generate()
    body = keys.upload_body(USER)

    master = body["master_key"]
    assert master == {
        "user_id": USER,
        "usage": ["master"],
        "keys": {f"ed25519:{keys.master.public}": keys.master.public},
    }
    for name, usage, key in (
        ("self_signing_key", "self_signing", keys.self_signing),
        ("user_signing_key", "user_signing", keys.user_signing),
    ):
        assert body[name]["usage"] == [usage]
        assert body[name]["keys"] == {f"ed25519:{key.public}": key.public}
        assert signed_by(body[name], USER, keys.master.public)
    assert CrossSigningKeys.from_seeds(keys.seeds()).master.public == keys.master.public


# -- the recovery key -------------------------------------------------------------------------


def test_the_recovery_key_is_twelve_groups_of_four_and_reads_back() -> None:
    key = new_key()
    text = encode_recovery_key(key)

    groups = text.split(" ")
    assert len(groups) == 12 and all(len(g) == 4 for g in groups)
    assert decode_recovery_key(text) == key
    # Whitespace is ignored when it is read: pasted on one line, or over several.
    assert decode_recovery_key(text.replace(" ", "")) == key
    assert decode_recovery_key("  " + text.replace(" ", "\n ") + "\n") == key


def test_the_recovery_key_matches_matrix_js_sdk() -> None:
    # matrix-js-sdk's own test: the key 0, 1, …, 31 encodes to a text starting "EsSz".
    key = bytes(range(32))
    text = encode_recovery_key(key)
    assert text.startswith("EsSz ")
    assert decode_recovery_key(text) == key


@pytest.mark.parametrize(
    ("mangle", "message"),
    [
        # One character changed: the check byte catches it.
        (lambda t: t.replace("EsSz", "EsSZ", 1), "typing mistake"),
        (lambda t: t[:-1] + ("2" if t[-1] != "2" else "3"), "typing mistake"),
        (lambda t: t.replace(" ", "")[:-4], "48 characters"),
        (lambda t: t + " abcd", "48 characters"),
        (lambda t: t.replace("E", "0", 1), "alphabet"),
        (lambda t: "", "empty"),
    ],
)
def test_a_mistyped_recovery_key_is_refused_with_what_is_wrong(mangle, message) -> None:
    text = encode_recovery_key(bytes(range(32)))
    with pytest.raises(RecoveryKeyError, match=message):
        decode_recovery_key(mangle(text))


def test_another_kind_of_base58_key_is_not_a_recovery_key() -> None:
    import base58

    # 48 characters with a right check byte, but not the recovery key's prefix.
    data = b"\x8c\x01" + bytes(range(32))
    data += bytes([functools.reduce(operator.xor, data)])
    text = base58.b58encode(data).decode()
    assert len(text) == 48
    with pytest.raises(RecoveryKeyError, match="not a recovery key"):
        decode_recovery_key(text)


# -- Secret Storage -----------------------------------------------------------------------------


def test_a_secret_comes_back_with_the_right_key_and_name() -> None:
    key = new_key()
    encrypted = encrypt_secret(key, "m.cross_signing.master", "the seed")

    assert set(encrypted) == {"iv", "ciphertext", "mac"}
    assert "the seed" not in str(encrypted)
    assert decrypt_secret(key, "m.cross_signing.master", encrypted) == "the seed"


def test_padded_base64_from_other_clients_is_accepted() -> None:
    key = new_key()
    encrypted = encrypt_secret(key, "m.cross_signing.master", "the seed")
    padded = {k: v + "=" * (-len(v) % 4) for k, v in encrypted.items()}
    assert decrypt_secret(key, "m.cross_signing.master", padded) == "the seed"


def test_the_iv_has_bit_63_cleared() -> None:
    for _ in range(32):
        iv = base64.b64decode(encrypt_secret(new_key(), "x", "y")["iv"] + "==")
        assert len(iv) == 16 and iv[8] & 0x80 == 0


@pytest.mark.parametrize(
    "tamper",
    [
        lambda e, key: (new_key(), "m.cross_signing.master", e),  # another key
        lambda e, key: (key, "m.cross_signing.self_signing", e),  # another secret's name
        lambda e, key: (key, "m.cross_signing.master", {**e, "mac": e["iv"] * 2 + "AAA"}),
        lambda e, key: (
            key,
            "m.cross_signing.master",
            {**e, "ciphertext": "A" + e["ciphertext"][1:]},
        ),
    ],
)
def test_the_mac_refuses_a_wrong_key_name_or_changed_data(tamper) -> None:
    key = new_key()
    encrypted = encrypt_secret(key, "m.cross_signing.master", "the seed of the master key")
    with pytest.raises(SecretStorageError):
        decrypt_secret(*tamper(encrypted, key))


def test_malformed_encrypted_data_is_an_error_not_a_crash() -> None:
    with pytest.raises(SecretStorageError, match="malformed"):
        decrypt_secret(new_key(), "x", {"iv": "AAAA", "ciphertext": "AAAA"})
    with pytest.raises(SecretStorageError, match="malformed"):
        decrypt_secret(new_key(), "x", {"iv": "AAAA", "ciphertext": "AAAA", "mac": "AAAA"})


def test_the_key_description_checks_the_key() -> None:
    key = new_key()
    description = key_description(key, "support-bot")

    assert description["algorithm"] == AES_HMAC_SHA2
    assert check_key(key, description)
    assert not check_key(new_key(), description)
    # Without the optional check the key cannot be told apart: the secrets' MACs decide.
    assert check_key(new_key(), {"algorithm": AES_HMAC_SHA2})
    with pytest.raises(SecretStorageError, match="unsupported"):
        check_key(key, {"algorithm": "m.secret_storage.v2.something"})

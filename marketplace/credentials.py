"""Encryption of supplier upstream credentials at rest, with Fernet (AES-128-CBC and HMAC-SHA256)."""

from __future__ import annotations

import base64
import hashlib

from cryptography.fernet import Fernet, InvalidToken

from marketplace.settings import Settings

# Development mode only: a fixed key so that the embedded defaults work with no configuration.
_DEVELOPMENT_KEY = base64.urlsafe_b64encode(hashlib.sha256(b"tokenport development credential key").digest())


class CredentialKeyMissing(RuntimeError):
    pass


def credential_cipher(settings: Settings) -> Fernet:
    if settings.credential_key:
        return Fernet(settings.credential_key.encode())
    if settings.mode == "development":
        return Fernet(_DEVELOPMENT_KEY)
    raise CredentialKeyMissing(
        "TOKENPORT_CREDENTIAL_KEY is not set; generate one with "
        "`python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())'`"
    )


def encrypt_credential(settings: Settings, plaintext: str) -> str:
    return credential_cipher(settings).encrypt(plaintext.encode()).decode()


def decrypt_credential(settings: Settings, token: str) -> str:
    try:
        return credential_cipher(settings).decrypt(token.encode()).decode()
    except InvalidToken as exc:
        raise RuntimeError("a stored supplier credential cannot be decrypted with TOKENPORT_CREDENTIAL_KEY") from exc

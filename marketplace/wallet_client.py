"""The wallet's side of sign-in: build a Sign-In with Ethereum (EIP-4361) message and sign it.

The demo and the tests act as a buyer's wallet with these helpers; a real buyer's wallet does
the same in the browser.
"""

from __future__ import annotations

import datetime as dt

from eth_account import Account
from eth_account.messages import encode_defunct
from siwe import SiweMessage


def build_siwe_message(
    *,
    address: str,
    nonce: str,
    domain: str,
    uri: str,
    chain_id: int,
    expires_in_s: int = 600,
    issued_at: dt.datetime | None = None,
) -> str:
    issued_at = issued_at or dt.datetime.now(dt.UTC)
    message = SiweMessage(
        domain=domain,
        address=address,
        statement="Sign in to Tokenport.",
        uri=uri,
        version="1",
        chain_id=chain_id,
        nonce=nonce,
        issued_at=issued_at.strftime("%Y-%m-%dT%H:%M:%S.000Z"),
        expiration_time=(issued_at + dt.timedelta(seconds=expires_in_s)).strftime("%Y-%m-%dT%H:%M:%S.000Z"),
    )
    return message.prepare_message()


def sign_text(private_key: str, text: str) -> str:
    """Sign text the way personal_sign (EIP-191 version 0x45) does."""
    signed = Account.sign_message(encode_defunct(text=text), private_key=private_key)
    return signed.signature.to_0x_hex()

"""Solidity `abi.encode` of settlement values, with a range check on every value, and keccak256.

Every settlement hash is keccak256 over an `abi.encode(...)` of typed values, so a Solidity
contract or any EVM tool can recompute it. Static values take one 32-byte word each. A string is
dynamic: its head word is an offset, and its tail is a length word followed by the UTF-8 bytes
padded to whole words, so two strings can never run into each other.

Each encoder rejects a value outside its declared type (a negative amount, 2**128 in a uint128,
an address that is not EIP-55, a string over its byte limit) with `EncodingError`, which names
the field. A value is never truncated or wrapped into range.

This module must not import the database layer, because the verifier uses it.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from eth_utils import to_checksum_address

try:
    # safe-pysha3 hashes a short input about four times faster than eth-hash's default backend,
    # which matters for trees of a million leaves. eth-tester installs it.
    from sha3 import keccak_256 as _keccak_256

    def keccak256(data: bytes) -> bytes:
        """Return the keccak256 digest of ``data`` (Ethereum's hash, not NIST SHA3-256)."""
        return _keccak_256(data).digest()

except ImportError:  # pragma: no cover - depends on the installed packages
    from eth_hash.auto import keccak as _eth_hash_keccak

    def keccak256(data: bytes) -> bytes:
        """Return the keccak256 digest of ``data`` (Ethereum's hash, not NIST SHA3-256)."""
        return _eth_hash_keccak(data)


WORD_BYTES = 32
TAG_PREFIX = "tokenport.settlement.v1."

_ADDRESS = re.compile(r"^0x[0-9a-fA-F]{40}$")
_BYTES32 = re.compile(r"^0x[0-9a-f]{64}$")
_CANONICAL_UINT = re.compile(r"^(0|[1-9][0-9]*)$")
_ZERO_WORD = bytes(WORD_BYTES)


class EncodingError(ValueError):
    """A value does not fit the type of the field it is meant for."""


def domain_tag(label: str) -> bytes:
    """Return the 32-byte tag ``keccak256("tokenport.settlement.v1." + label)``.

    Every leaf, node and root hash starts with a tag, so a hash of one kind can never be
    presented as a hash of another.
    """
    return keccak256((TAG_PREFIX + label).encode("ascii"))


class AbiType(enum.Enum):
    """A Solidity type that a settlement field is encoded as."""

    UINT8 = "uint8"
    UINT32 = "uint32"
    UINT64 = "uint64"
    UINT128 = "uint128"
    UINT256 = "uint256"
    BOOL = "bool"
    ADDRESS = "address"
    BYTES32 = "bytes32"
    STRING = "string"

    @property
    def is_dynamic(self) -> bool:
        return self is AbiType.STRING

    @property
    def bits(self) -> int:
        assert self.value.startswith("uint"), f"{self.value} is not an unsigned integer type"
        return _UINT_BITS[self]


_UINT_BITS = {kind: int(kind.value.removeprefix("uint")) for kind in AbiType if kind.value.startswith("uint")}


def check_uint(name: str, value: Any, bits: int) -> int:
    """Return ``value`` if it is an int in [0, 2**bits), else raise EncodingError."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise EncodingError(f"{name}: expected an integer, got {value!r}")
    if value < 0 or value >= 1 << bits:
        raise EncodingError(f"{name}: {value} is outside uint{bits} (0 to 2**{bits} - 1)")
    return value


def uint_word(name: str, value: Any, bits: int) -> bytes:
    return check_uint(name, value, bits).to_bytes(WORD_BYTES, "big")


def bool_word(name: str, value: Any) -> bytes:
    if not isinstance(value, bool):
        raise EncodingError(f"{name}: expected true or false, got {value!r}")
    return (1 if value else 0).to_bytes(WORD_BYTES, "big")


def check_address(name: str, value: Any) -> str:
    """Return ``value`` if it is a 0x-prefixed address in EIP-55 checksum form."""
    if not isinstance(value, str) or not _ADDRESS.match(value):
        raise EncodingError(f"{name}: expected a 0x-prefixed 20-byte address, got {value!r}")
    if to_checksum_address(value) != value:
        raise EncodingError(f"{name}: address {value} is not in EIP-55 checksum form")
    return value


def address_word(name: str, value: Any) -> bytes:
    return bytes(12) + bytes.fromhex(check_address(name, value)[2:])


def bytes32_word(name: str, value: Any) -> bytes:
    if not isinstance(value, bytes) or len(value) != WORD_BYTES:
        raise EncodingError(f"{name}: expected 32 bytes, got {value!r}")
    return value


def check_string(name: str, value: Any, max_bytes: int) -> bytes:
    """Return the UTF-8 bytes of ``value`` if it is a string of at most ``max_bytes`` bytes."""
    if not isinstance(value, str):
        raise EncodingError(f"{name}: expected a string, got {value!r}")
    data = value.encode("utf-8")
    if len(data) > max_bytes:
        raise EncodingError(f"{name}: {len(data)} bytes is over the limit of {max_bytes}")
    return data


def string_tail(data: bytes) -> bytes:
    """Return the ABI tail of a string: its length word, then its bytes padded to whole words."""
    padding = -len(data) % WORD_BYTES
    return len(data).to_bytes(WORD_BYTES, "big") + data + bytes(padding)


@dataclass(frozen=True)
class AbiField:
    """One named, typed field of an encoded record. ``max_bytes`` limits a string's UTF-8 length."""

    name: str
    abi_type: AbiType
    max_bytes: int = 0

    def __post_init__(self) -> None:
        assert (self.max_bytes > 0) == self.abi_type.is_dynamic, f"field {self.name}: max_bytes is only for strings"


def _static_encoder(field: AbiField) -> Callable[[Any], bytes]:
    name = field.name
    kind = field.abi_type
    if kind is AbiType.BOOL:
        return lambda value: bool_word(name, value)
    if kind is AbiType.ADDRESS:
        return lambda value: address_word(name, value)
    if kind is AbiType.BYTES32:
        return lambda value: bytes32_word(name, value)
    bits = kind.bits
    return lambda value: uint_word(name, value, bits)


class TupleEncoder:
    """Encodes ``abi.encode(bytes32 tag, field_1, ..., field_n)`` for a fixed list of fields."""

    def __init__(self, tag: bytes, fields: Sequence[AbiField]) -> None:
        assert len(tag) == WORD_BYTES, "a tag is 32 bytes"
        self.tag = tag
        self.fields = tuple(fields)
        self._head_bytes = WORD_BYTES * (1 + len(self.fields))
        self._steps = tuple(
            (field.name, field.max_bytes, None if field.abi_type.is_dynamic else _static_encoder(field))
            for field in self.fields
        )

    def encode(self, values: dict[str, Any]) -> bytes:
        """Return the ABI encoding of ``values``, which must contain every field by name."""
        head = [self.tag]
        tails: list[bytes] = []
        tail_offset = self._head_bytes
        for name, max_bytes, encode_static in self._steps:
            try:
                value = values[name]
            except KeyError as exc:
                raise EncodingError(f"{name}: missing") from exc
            if encode_static is not None:
                head.append(encode_static(value))
                continue
            tail = string_tail(check_string(name, value, max_bytes))
            head.append(tail_offset.to_bytes(WORD_BYTES, "big"))
            tails.append(tail)
            tail_offset += len(tail)
        return b"".join(head) + b"".join(tails)

    def abi_types(self) -> list[str]:
        """Return the Solidity types in encoding order, the tag first (for eth_abi and docs)."""
        return ["bytes32"] + [field.abi_type.value for field in self.fields]


# JSON forms. Every integer is a string of decimal digits, because JSON numbers above 2**53 lose
# precision in many tools. Byte strings are lowercase 0x-hex, addresses EIP-55.


def uint_to_json(value: int) -> str:
    return str(value)


def uint_from_json(name: str, text: Any, bits: int) -> int:
    """Parse a canonical decimal string (no sign, no leading zeros) into an int in uint range."""
    if not isinstance(text, str) or not _CANONICAL_UINT.match(text):
        raise EncodingError(f"{name}: expected a string of decimal digits without leading zeros, got {text!r}")
    return check_uint(name, int(text), bits)


def bytes32_to_json(value: bytes) -> str:
    return "0x" + value.hex()


def bytes32_from_json(name: str, text: Any) -> bytes:
    if not isinstance(text, str) or not _BYTES32.match(text):
        raise EncodingError(f"{name}: expected 0x and 64 lowercase hex digits, got {text!r}")
    return bytes.fromhex(text[2:])


def value_to_json(abi_type: AbiType, value: Any) -> Any:
    if abi_type is AbiType.BYTES32:
        return bytes32_to_json(value)
    if abi_type in (AbiType.BOOL, AbiType.ADDRESS, AbiType.STRING):
        return value
    return uint_to_json(value)


def json_parser(field: AbiField) -> Callable[[Any], Any]:
    """Return a function that parses and range-checks the JSON form of ``field``."""
    name = field.name
    kind = field.abi_type
    if kind is AbiType.BYTES32:
        return lambda raw: bytes32_from_json(name, raw)
    if kind is AbiType.BOOL:
        return lambda raw: _bool_from_json(name, raw)
    if kind is AbiType.ADDRESS:
        return lambda raw: check_address(name, raw)
    if kind is AbiType.STRING:
        max_bytes = field.max_bytes
        return lambda raw: _string_from_json(name, raw, max_bytes)
    bits = kind.bits
    return lambda raw: uint_from_json(name, raw, bits)


def _bool_from_json(name: str, raw: Any) -> bool:
    if not isinstance(raw, bool):
        raise EncodingError(f"{name}: expected true or false, got {raw!r}")
    return raw


def _string_from_json(name: str, raw: Any, max_bytes: int) -> str:
    check_string(name, raw, max_bytes)
    return raw


def value_from_json(field: AbiField, raw: Any) -> Any:
    """Parse and range-check the JSON form of one field."""
    return json_parser(field)(raw)


def hex_to_bytes32(name: str, text: str) -> bytes:
    """Parse a 0x-hex 32-byte value in any case, as a database row stores a hash."""
    return bytes32_from_json(name, text.lower())


ZERO_BYTES32 = _ZERO_WORD

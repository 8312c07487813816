"""Inclusion proofs: one leaf and the siblings on its path, checked against the on-chain root.

An account owner gets a proof for their balance and for each of their records. Checking one
needs only the proof and one JSON-RPC endpoint: the leaf hash is recomputed from its fields, the
path is walked up to the root, and the root is compared with the period that the
SettlementRegistry stores. A balance proof also checks that every sum on the path is in range
and that the path adds up to the committed total liabilities.

    {"format": "tokenport-settlement-proof", "version": "1", "chain_id": "31337",
     "registry_address": "0x…", "period_id": "4", "tree": "balances", "type": "balance",
     "fields": {"account": "buyer:7", "balance_nano_usd": "4999976072"},
     "leaf_index": "0", "leaf_count": "2", "siblings": [{"hash": "0x…", "sum": "10857"}]}

This module must not import the database layer: an account owner runs it with no database.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from web3 import Web3
from web3.exceptions import Web3Exception

from chain.contracts import contract_at
from chain.registry import read_period
from marketplace.settlement.encoding import (
    EncodingError,
    bytes32_from_json,
    bytes32_to_json,
    check_address,
    uint_from_json,
)
from marketplace.settlement.leaves import BALANCE, LEAF_KINDS, Leaf, leaf_from_json
from marketplace.settlement.tree import SUM_BITS, ProofError, balances_root_from_proof, records_root_from_proof

PROOF_FORMAT = "tokenport-settlement-proof"
PROOF_VERSION = 1
BALANCES_TREE = "balances"
RECORDS_TREE = "records"
_PROOF_KEYS = {"format", "version", "chain_id", "registry_address", "period_id", "tree", "type", "fields", "leaf_index", "leaf_count", "siblings"}


@dataclass(frozen=True)
class InclusionProof:
    """A parsed proof. ``siblings`` contains (hash, sum) pairs, and the sums are 0 in the records tree."""

    chain_id: int
    registry_address: str
    period_id: int
    tree: str
    leaf: Leaf
    leaf_index: int
    leaf_count: int
    siblings: tuple[tuple[bytes, int], ...]

    def to_json(self) -> dict[str, Any]:
        siblings = []
        for digest, value in self.siblings:
            entry: dict[str, str] = {"hash": bytes32_to_json(digest)}
            if self.tree == BALANCES_TREE:
                entry["sum"] = str(value)
            siblings.append(entry)
        return {
            "format": PROOF_FORMAT,
            "version": str(PROOF_VERSION),
            "chain_id": str(self.chain_id),
            "registry_address": self.registry_address,
            "period_id": str(self.period_id),
            "tree": self.tree,
            "type": self.leaf.kind.name,
            "fields": self.leaf.to_json(),
            "leaf_index": str(self.leaf_index),
            "leaf_count": str(self.leaf_count),
            "siblings": siblings,
        }

    @classmethod
    def from_json(cls, data: Any) -> InclusionProof:
        """Parse a proof strictly. Raises EncodingError naming the first invalid field."""
        if not isinstance(data, dict):
            raise EncodingError("proof: expected a JSON object")
        if set(data) != _PROOF_KEYS:
            wrong = sorted(set(data) ^ _PROOF_KEYS)
            raise EncodingError(f"{wrong[0]}: {'missing' if wrong[0] in _PROOF_KEYS else 'not a proof field'}")
        if data["format"] != PROOF_FORMAT or data["version"] != str(PROOF_VERSION):
            raise EncodingError(f"format: expected {PROOF_FORMAT} version {PROOF_VERSION}")
        tree = data["tree"]
        if tree not in (BALANCES_TREE, RECORDS_TREE):
            raise EncodingError(f"tree: expected 'balances' or 'records', got {tree!r}")
        kind = data["type"]
        if kind not in LEAF_KINDS or (kind == BALANCE.name) != (tree == BALANCES_TREE):
            raise EncodingError(f"type: a {kind!r} leaf does not belong in the {tree} tree")
        if not isinstance(data["siblings"], list):
            raise EncodingError("siblings: expected a list")
        if not isinstance(data["fields"], dict):
            raise EncodingError("fields: expected an object")

        siblings = []
        for position, entry in enumerate(data["siblings"]):
            expected_keys = {"hash", "sum"} if tree == BALANCES_TREE else {"hash"}
            if not isinstance(entry, dict) or set(entry) != expected_keys:
                raise EncodingError(f"siblings[{position}]: expected an object with {' and '.join(sorted(expected_keys))}")
            digest = bytes32_from_json(f"siblings[{position}].hash", entry["hash"])
            value = uint_from_json(f"siblings[{position}].sum", entry["sum"], SUM_BITS) if tree == BALANCES_TREE else 0
            siblings.append((digest, value))
        return cls(
            chain_id=uint_from_json("chain_id", data["chain_id"], 64),
            registry_address=check_address("registry_address", data["registry_address"]),
            period_id=uint_from_json("period_id", data["period_id"], 64),
            tree=tree,
            leaf=leaf_from_json(kind, data["fields"]),
            leaf_index=uint_from_json("leaf_index", data["leaf_index"], 64),
            leaf_count=uint_from_json("leaf_count", data["leaf_count"], 64),
            siblings=tuple(siblings),
        )

    def computed_root(self) -> tuple[bytes, int | None]:
        """Return the root that the leaf and path give, and for a balance proof the total."""
        if self.tree == BALANCES_TREE:
            return balances_root_from_proof(self.leaf.hash(), self.leaf.sum_nano_usd, self.leaf_index, self.leaf_count, self.siblings)
        return records_root_from_proof(self.leaf.hash(), self.leaf_index, self.leaf_count, [digest for digest, _ in self.siblings]), None


@dataclass
class ProofCheck:
    """The outcome of checking one proof. It passes when ``problems`` is empty."""

    proof: InclusionProof | None
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def check_proof(data: Any, w3: Web3) -> ProofCheck:
    """Check a proof (its parsed JSON) against the registry on the chain that ``w3`` reaches."""
    try:
        proof = InclusionProof.from_json(data)
        root, total = proof.computed_root()
    except (EncodingError, ProofError) as exc:
        return ProofCheck(None, [f"invalid proof: {exc}"])
    check = ProofCheck(proof)

    chain_id = w3.eth.chain_id
    if chain_id != proof.chain_id:
        check.problems.append(f"the RPC endpoint serves chain {chain_id}, the proof is for chain {proof.chain_id}")
        return check
    if not w3.eth.get_code(Web3.to_checksum_address(proof.registry_address)):
        check.problems.append(f"no contract at {proof.registry_address} on chain {chain_id}")
        return check
    try:
        stored = read_period(contract_at(w3, "SettlementRegistry", proof.registry_address), proof.period_id)
    except (Web3Exception, ValueError) as exc:
        check.problems.append(f"reading period {proof.period_id} from the registry failed: {exc}")
        return check
    if stored is None:
        check.problems.append(f"period {proof.period_id} is not committed in registry {proof.registry_address}")
        return check

    commitment = stored.commitment
    if proof.tree == BALANCES_TREE:
        if root != commitment.balances_root:
            check.problems.append("the proof does not lead to the committed balances root")
        if total != commitment.total_liabilities_nano_usd:
            check.problems.append(f"the path sums to {total} nano-USD, the committed total liabilities are {commitment.total_liabilities_nano_usd}")
    else:
        if root != commitment.records_root:
            check.problems.append("the proof does not lead to the committed records root")
        if proof.leaf_count != commitment.record_count:
            check.problems.append(f"the proof's tree has {proof.leaf_count} records, the commitment {commitment.record_count}")
    return check


def check_proof_file(path: str, rpc_url: str, timeout_s: float = 30.0) -> ProofCheck:
    """Check the proof stored as JSON at ``path`` against the chain at ``rpc_url``."""
    with open(path, encoding="utf-8") as file:
        try:
            data = json.load(file)
        except json.JSONDecodeError as exc:
            return ProofCheck(None, [f"{path} is not valid JSON: {exc}"])
    return check_proof(data, Web3(Web3.HTTPProvider(rpc_url, request_kwargs={"timeout": timeout_s})))

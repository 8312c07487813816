"""A Merkle tree over the period's records and a Merkle sum tree over its balances.

Both trees are binary and positional (the left child is always hashed first), over leaves in
the canonical order of their kind. A tree of n leaves has depth ``ceil(log2(n))``. The positions
past the last leaf hold empty subtrees whose hashes are constants. So a proof always has exactly
``depth`` siblings, and no node is ever hashed with a copy of itself.

Hashes, all keccak256 over ABI words and each starting with its own 32-byte tag:

    node          = keccak256(NODE_TAG ‖ left ‖ right)
    sum node      = keccak256(SUM_NODE_TAG ‖ left ‖ uint128(left_sum) ‖ right ‖ uint128(right_sum))
    empty leaf    = keccak256(EMPTY_TAG), with sum 0
    records root  = keccak256(RECORDS_ROOT_TAG ‖ uint64(n) ‖ top)
    balances root = keccak256(BALANCES_ROOT_TAG ‖ uint64(n) ‖ top ‖ uint128(top_sum))

A sum node commits to both child sums, not only to their total. If it committed to the total
alone, an operator could give two users proofs with different sibling sums and report a total
as low as the larger of the two subtrees (the flaw found in Maxwell's original sum tree). Every
sum is range-checked to [0, 2**128), so a negative balance cannot be hidden as a huge number.
The roots commit to the leaf count, so a proof's depth and index are bound too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

from marketplace.settlement.encoding import EncodingError, check_uint, domain_tag, keccak256

SUM_BITS = 128
COUNT_BITS = 64
MAX_DEPTH = 64

NODE_TAG = domain_tag("node")
SUM_NODE_TAG = domain_tag("sum_node")
EMPTY_TAG = domain_tag("empty")
RECORDS_ROOT_TAG = domain_tag("records_root")
BALANCES_ROOT_TAG = domain_tag("balances_root")

EMPTY_LEAF_HASH = keccak256(EMPTY_TAG)


class ProofError(ValueError):
    """An inclusion proof is malformed: wrong length, index out of range, a sum out of range."""


def _sum_word(value: int) -> bytes:
    return value.to_bytes(32, "big")


def hash_node(left: bytes, right: bytes) -> bytes:
    return keccak256(NODE_TAG + left + right)


def hash_sum_node(left: bytes, left_sum: int, right: bytes, right_sum: int) -> tuple[bytes, int]:
    """Return the hash and sum of the parent of two sum-tree nodes, range-checking every sum."""
    check_uint("left sum", left_sum, SUM_BITS)
    check_uint("right sum", right_sum, SUM_BITS)
    total = check_uint("node sum", left_sum + right_sum, SUM_BITS)
    digest = keccak256(SUM_NODE_TAG + left + _sum_word(left_sum) + right + _sum_word(right_sum))
    return digest, total


@lru_cache(maxsize=MAX_DEPTH + 1)
def empty_subtree(level: int) -> bytes:
    """Return the hash of a subtree of 2**level empty leaves in the records tree."""
    if level == 0:
        return EMPTY_LEAF_HASH
    below = empty_subtree(level - 1)
    return hash_node(below, below)


@lru_cache(maxsize=MAX_DEPTH + 1)
def empty_sum_subtree(level: int) -> bytes:
    """Return the hash of a subtree of 2**level empty leaves in the balances tree (its sum is 0)."""
    if level == 0:
        return EMPTY_LEAF_HASH
    below = empty_sum_subtree(level - 1)
    return hash_sum_node(below, 0, below, 0)[0]


def tree_depth(leaf_count: int) -> int:
    """The number of levels above the leaves: ceil(log2(leaf_count)), and 0 for 0 or 1 leaf."""
    check_uint("leaf count", leaf_count, COUNT_BITS)
    return max(leaf_count - 1, 0).bit_length()


def records_root(leaf_count: int, top: bytes) -> bytes:
    check_uint("leaf count", leaf_count, COUNT_BITS)
    return keccak256(RECORDS_ROOT_TAG + leaf_count.to_bytes(32, "big") + top)


def balances_root(leaf_count: int, top: bytes, top_sum: int) -> bytes:
    check_uint("leaf count", leaf_count, COUNT_BITS)
    check_uint("total sum", top_sum, SUM_BITS)
    return keccak256(BALANCES_ROOT_TAG + leaf_count.to_bytes(32, "big") + top + _sum_word(top_sum))


class MerkleTree:
    """The records tree, built from leaf hashes. ``levels[0]`` are the leaves, the last level the top.

    Level l stores only the ``ceil(n / 2**l)`` nodes that cover at least one leaf.
    """

    def __init__(self, leaf_hashes: Sequence[bytes]) -> None:
        self.leaf_count = len(leaf_hashes)
        self.depth = tree_depth(self.leaf_count)
        levels = [list(leaf_hashes)]
        for level in range(self.depth):
            nodes = levels[-1]
            if len(nodes) % 2:
                nodes = [*nodes, empty_subtree(level)]
            levels.append([hash_node(nodes[i], nodes[i + 1]) for i in range(0, len(nodes), 2)])
        self.levels = levels

    @property
    def top(self) -> bytes:
        return self.levels[-1][0] if self.leaf_count else EMPTY_LEAF_HASH

    @property
    def root(self) -> bytes:
        return records_root(self.leaf_count, self.top)

    def proof(self, index: int) -> list[bytes]:
        """Return the sibling hashes from leaf ``index`` up to the top."""
        if not 0 <= index < self.leaf_count:
            raise IndexError(f"leaf index {index} is outside 0 to {self.leaf_count - 1}")
        siblings = []
        for level in range(self.depth):
            sibling = (index >> level) ^ 1
            nodes = self.levels[level]
            siblings.append(nodes[sibling] if sibling < len(nodes) else empty_subtree(level))
        return siblings


class MerkleSumTree:
    """The balances tree, built from (leaf hash, balance) pairs. Every node stores a hash and a sum."""

    def __init__(self, leaves: Sequence[tuple[bytes, int]]) -> None:
        self.leaf_count = len(leaves)
        self.depth = tree_depth(self.leaf_count)
        hashes = [leaf_hash for leaf_hash, _ in leaves]
        sums = [check_uint("balance", value, SUM_BITS) for _, value in leaves]
        self.hash_levels = [hashes]
        self.sum_levels = [sums]
        for level in range(self.depth):
            if len(hashes) % 2:
                hashes = [*hashes, empty_sum_subtree(level)]
                sums = [*sums, 0]
            parents = [hash_sum_node(hashes[i], sums[i], hashes[i + 1], sums[i + 1]) for i in range(0, len(hashes), 2)]
            hashes = [digest for digest, _ in parents]
            sums = [total for _, total in parents]
            self.hash_levels.append(hashes)
            self.sum_levels.append(sums)

    @property
    def top(self) -> bytes:
        return self.hash_levels[-1][0] if self.leaf_count else EMPTY_LEAF_HASH

    @property
    def total(self) -> int:
        return self.sum_levels[-1][0] if self.leaf_count else 0

    @property
    def root(self) -> bytes:
        return balances_root(self.leaf_count, self.top, self.total)

    def proof(self, index: int) -> list[tuple[bytes, int]]:
        """Return the (hash, sum) of each sibling from leaf ``index`` up to the top."""
        if not 0 <= index < self.leaf_count:
            raise IndexError(f"leaf index {index} is outside 0 to {self.leaf_count - 1}")
        siblings = []
        for level in range(self.depth):
            sibling = (index >> level) ^ 1
            hashes = self.hash_levels[level]
            if sibling < len(hashes):
                siblings.append((hashes[sibling], self.sum_levels[level][sibling]))
            else:
                siblings.append((empty_sum_subtree(level), 0))
        return siblings


def _check_position(index: int, leaf_count: int, sibling_count: int) -> int:
    try:
        check_uint("leaf count", leaf_count, COUNT_BITS)
        check_uint("leaf index", index, COUNT_BITS)
    except EncodingError as exc:
        raise ProofError(str(exc)) from exc
    if index >= leaf_count:
        raise ProofError(f"leaf index {index} is outside a tree of {leaf_count} leaves")
    depth = tree_depth(leaf_count)
    if sibling_count != depth:
        raise ProofError(f"a tree of {leaf_count} leaves needs {depth} siblings, the proof has {sibling_count}")
    return depth


def records_root_from_proof(leaf_hash: bytes, index: int, leaf_count: int, siblings: Sequence[bytes]) -> bytes:
    """Recompute the records root from one leaf and its proof. Raises ProofError if malformed."""
    _check_position(index, leaf_count, len(siblings))
    node = leaf_hash
    for level, sibling in enumerate(siblings):
        if len(sibling) != 32:
            raise ProofError(f"sibling at level {level} is {len(sibling)} bytes, expected 32")
        node = hash_node(sibling, node) if (index >> level) & 1 else hash_node(node, sibling)
    return records_root(leaf_count, node)


def balances_root_from_proof(
    leaf_hash: bytes, balance: int, index: int, leaf_count: int, siblings: Sequence[tuple[bytes, int]]
) -> tuple[bytes, int]:
    """Recompute the balances root and total from one leaf and its proof.

    Raises ProofError if the proof is malformed or any sum on the path is outside [0, 2**128).
    """
    _check_position(index, leaf_count, len(siblings))
    node, total = leaf_hash, balance
    try:
        check_uint("balance", balance, SUM_BITS)
        for level, (sibling, sibling_sum) in enumerate(siblings):
            if len(sibling) != 32:
                raise ProofError(f"sibling at level {level} is {len(sibling)} bytes, expected 32")
            if (index >> level) & 1:
                node, total = hash_sum_node(sibling, sibling_sum, node, total)
            else:
                node, total = hash_sum_node(node, total, sibling, sibling_sum)
    except EncodingError as exc:
        raise ProofError(f"sum out of range on the proof path: {exc}") from exc
    return balances_root(leaf_count, node, total), total


@dataclass(frozen=True)
class StoredLevel:
    """The nodes of one tree level, flattened for storage: 32-byte hashes, and for the sum tree
    16-byte big-endian sums (uint128), one per node."""

    level: int
    hashes: bytes
    sums: bytes | None

    @property
    def node_count(self) -> int:
        return len(self.hashes) // 32


def flatten_levels(tree: MerkleTree | MerkleSumTree) -> list[StoredLevel]:
    """Return every level of ``tree`` as flat byte strings, for the proof store."""
    if isinstance(tree, MerkleSumTree):
        return [
            StoredLevel(level, b"".join(hashes), b"".join(value.to_bytes(16, "big") for value in sums))
            for level, (hashes, sums) in enumerate(zip(tree.hash_levels, tree.sum_levels, strict=True))
        ]
    return [StoredLevel(level, b"".join(nodes), None) for level, nodes in enumerate(tree.levels)]

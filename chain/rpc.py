"""JSON-RPC reads shared by the deposit watcher, payouts and reconciliation.

The important one is `LogFetcher`: it reads `eth_getLogs` in block-range windows that cover a
range exactly once, in order. Providers cap `eth_getLogs` by block range or by result count,
with different error codes. Infura answers -32005 "query returned more than 10000 results",
Alchemy -32602 above 2,000 blocks and 10,000 logs, and other providers use -32603 or codes
of their own. So any JSON-RPC error, a 4xx or 5xx HTTP status other than 401, 403 and 429, or a
read timeout is treated as "too large": the window is halved and read again. A single block
that is still rejected is read from its receipts instead. No block is skipped, because a window
is yielded only once its logs were read.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import requests
from hexbytes import HexBytes
from web3 import Web3
from web3.exceptions import BlockNotFound, MethodUnavailable, TransactionNotFound, Web3RPCError
from web3.providers.rpc.utils import ExceptionRetryConfiguration

from marketplace.settings import ChainSettings

logger = logging.getLogger(__name__)

# HTTP statuses that never mean "the range is too large": bad credentials and rate limits.
_NOT_RANGE_HTTP_STATUSES = frozenset({401, 403, 429})


class ChainReadError(Exception):
    """A chain read failed in a way that the next poll should retry."""


class LogsUnavailable(ChainReadError):
    """The provider rejects the logs of a single block and its receipts cannot be read either."""


class ChainViewChanged(ChainReadError):
    """Two reads disagree about the chain, because it reorganised between them."""


def to_hex(value: bytes | str) -> str:
    """Return a 0x-prefixed lowercase hex string for bytes, HexBytes or a hex string."""
    if isinstance(value, str):
        return value.lower() if value.startswith("0x") else "0x" + value.lower()
    return "0x" + bytes(value).hex()


@dataclass(frozen=True)
class LogQuery:
    """One `eth_getLogs` filter without its block range.

    Each entry of `topics` is None (any value), a 0x-prefixed topic, or a tuple of topics of
    which one must match, as in the JSON-RPC filter.
    """

    addresses: tuple[str, ...]
    topics: tuple[str | tuple[str, ...] | None, ...]

    def filter_params(self, from_block: int, to_block: int) -> dict[str, Any]:
        topics = [list(topic) if isinstance(topic, tuple) else topic for topic in self.topics]
        return {"fromBlock": from_block, "toBlock": to_block, "address": list(self.addresses), "topics": topics}

    def matches(self, log: Any) -> bool:
        """Apply the filter locally, to logs that were read from receipts."""
        if Web3.to_checksum_address(log["address"]) not in {Web3.to_checksum_address(a) for a in self.addresses}:
            return False
        log_topics = [to_hex(topic) for topic in log["topics"]]
        if len(log_topics) < len(self.topics):
            return False
        for expected, actual in zip(self.topics, log_topics, strict=False):
            if expected is None:
                continue
            allowed = expected if isinstance(expected, tuple) else (expected,)
            if actual not in {topic.lower() for topic in allowed}:
                return False
        return True


@dataclass
class LogWindow:
    """The logs of blocks from_block to to_block, sorted by block number and log index.

    `to_block_hash` was read before the logs, so if the chain reorganised in between, the
    stored hash belongs to the old chain and the next check of it finds the change.
    """

    from_block: int
    to_block: int
    to_block_hash: str | None
    logs: list[Any]


@dataclass
class FetchStats:
    """Counters of one fetcher, for logs and tests."""

    requests: int = 0
    rejections: int = 0
    receipt_fallback_blocks: int = 0
    served_ranges: list[tuple[int, int]] = field(default_factory=list)


def is_range_rejection(exc: BaseException) -> bool:
    """Return whether an `eth_getLogs` failure may mean that the window was too large."""
    if isinstance(exc, MethodUnavailable):
        return False
    if isinstance(exc, Web3RPCError):
        return True
    if isinstance(exc, requests.HTTPError):
        status = exc.response.status_code if exc.response is not None else None
        return status is not None and status not in _NOT_RANGE_HTTP_STATUSES
    return isinstance(exc, requests.Timeout)


class LogFetcher:
    """Reads logs in windows of at most `max_block_range` blocks that shrink and grow with the provider.

    After a rejection the window is halved. After `grow_after_windows` windows in a row are
    accepted, it doubles again, up to `max_block_range`. The current size is kept between
    calls, so a watcher that polls through one fetcher learns its provider's limit once.
    """

    def __init__(self, w3: Web3, max_block_range: int, *, grow_after_windows: int = 4) -> None:
        assert max_block_range >= 1, f"invalid max_block_range {max_block_range}"
        self.w3 = w3
        self.max_block_range = max_block_range
        self.block_range = max_block_range
        self.grow_after_windows = grow_after_windows
        self.stats = FetchStats()
        self._accepted_in_a_row = 0

    def windows(self, queries: Sequence[LogQuery], from_block: int, to_block: int) -> Iterator[LogWindow]:
        """Yield windows that cover from_block to to_block exactly once, lowest first."""
        start = from_block
        while start <= to_block:
            end = min(start + self.block_range - 1, to_block)
            end_hash = read_block_hash(self.w3, end)
            try:
                logs = self._get_logs(queries, start, end)
            except Exception as exc:
                if not is_range_rejection(exc):
                    raise
                self.stats.rejections += 1
                if start == end:
                    logger.warning("eth_getLogs rejected block %d; reading its receipts instead: %s", start, exc)
                    logs = self._logs_from_receipts(queries, start, end_hash)
                else:
                    self.block_range = max(1, (end - start + 1) // 2)
                    self._accepted_in_a_row = 0
                    logger.info("eth_getLogs rejected blocks %d-%d; window is now %d blocks: %s", start, end, self.block_range, exc)
                    continue

            self.stats.served_ranges.append((start, end))
            self._grow_after_success()
            yield LogWindow(start, end, end_hash, logs)
            start = end + 1

    def _grow_after_success(self) -> None:
        self._accepted_in_a_row += 1
        if self._accepted_in_a_row >= self.grow_after_windows and self.block_range < self.max_block_range:
            self.block_range = min(self.max_block_range, self.block_range * 2)
            self._accepted_in_a_row = 0

    def _get_logs(self, queries: Sequence[LogQuery], start: int, end: int) -> list[Any]:
        logs: list[Any] = []
        for query in queries:
            self.stats.requests += 1
            logs.extend(self.w3.eth.get_logs(query.filter_params(start, end)))  # type: ignore[arg-type]
        return sorted(logs, key=lambda log: (int(log["blockNumber"]), int(log["logIndex"])))

    def _logs_from_receipts(self, queries: Sequence[LogQuery], block_number: int, block_hash: str | None) -> list[Any]:
        self.stats.receipt_fallback_blocks += 1
        try:
            receipts = read_block_receipts(self.w3, block_number)
        except (Web3RPCError, requests.RequestException) as exc:
            raise LogsUnavailable(f"neither the logs nor the receipts of block {block_number} could be read: {exc}") from exc
        logs = []
        for receipt in receipts:
            if block_hash is not None and to_hex(receipt["blockHash"]) != block_hash:
                raise ChainViewChanged(f"block {block_number} changed hash while its receipts were read")
            if receipt["status"] != 1:
                continue
            logs.extend(log for log in receipt["logs"] if any(query.matches(log) for query in queries))
        return sorted(logs, key=lambda log: int(log["logIndex"]))


def connect(chain: ChainSettings) -> Web3:
    """Return a Web3 on the chain's HTTP RPC URL that retries only failed connections.

    web3.py retries HTTP errors and timeouts by default, with backoff. Here they reach the
    caller at once: the log fetcher treats them as a window that is too large, and every other
    call fails the poll, which the next poll repeats.
    """
    retry = ExceptionRetryConfiguration(errors=(ConnectionError, requests.ConnectionError), retries=3, backoff_factor=0.25)
    provider = Web3.HTTPProvider(
        chain.rpc_url, request_kwargs={"timeout": chain.rpc_timeout_s}, exception_retry_configuration=retry
    )
    return Web3(provider)


def read_head_block(w3: Web3) -> int:
    return int(w3.eth.block_number)


def read_safe_block(w3: Web3, chain: ChainSettings, head_block: int) -> int:
    """Return the highest block whose deposits may be credited: `confirmations` deep, or finalized."""
    if chain.finality == "confirmations":
        return head_block - chain.confirmations + 1
    try:
        finalized = int(w3.eth.get_block("finalized")["number"])
    except (Web3RPCError, ValueError) as exc:
        raise ChainReadError(
            f"RPC of chain {chain.chain_id} did not return the finalized block; "
            "set finality to 'confirmations' for chains without it"
        ) from exc
    return min(finalized, head_block)


def read_block_hash(w3: Web3, block_number: int) -> str | None:
    """Return the canonical hash of a block, or None when the chain has no such block (yet)."""
    if block_number < 0:
        return None
    try:
        block = w3.eth.get_block(block_number)
    except BlockNotFound:
        return None
    return to_hex(block["hash"])


def read_receipt(w3: Web3, tx_hash: str) -> Any | None:
    """Return the receipt of a transaction in the canonical chain, or None when it has none."""
    try:
        return w3.eth.get_transaction_receipt(HexBytes(tx_hash))
    except TransactionNotFound:
        return None


def read_block_receipts(w3: Web3, block_number: int) -> list[Any]:
    """Return every receipt of a block: `eth_getBlockReceipts`, else one `eth_getTransactionReceipt` each."""
    try:
        return list(w3.eth.get_block_receipts(block_number))
    except MethodUnavailable:
        pass
    except Web3RPCError as exc:
        logger.info("eth_getBlockReceipts failed for block %d; reading receipts one by one: %s", block_number, exc)

    block = w3.eth.get_block(block_number)
    receipts = []
    for tx_hash in block["transactions"]:
        receipt = read_receipt(w3, to_hex(tx_hash))
        if receipt is None:
            raise ChainViewChanged(f"transaction {to_hex(tx_hash)} of block {block_number} has no receipt")
        receipts.append(receipt)
    return receipts

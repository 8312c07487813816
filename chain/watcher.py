"""The deposit watcher: reads ERC-20 Transfer logs into the treasury and hands them to the ledger.

The cursor is the last block whose logs are credited. The watcher only moves it over blocks that
already have the chain's confirmation depth, and it saves it in the same database transaction as
the credits of that block range, so a restart neither misses nor repeats a deposit. Blocks above
the cursor are scanned on every poll too, but their deposits are only recorded as pending.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from sqlalchemy.orm import Session
from web3 import Web3
from web3.exceptions import Web3RPCError

from marketplace import deposits
from marketplace.db import Database
from marketplace.models import ChainCursor
from marketplace.settings import ChainSettings

logger = logging.getLogger(__name__)

TRANSFER_TOPIC = Web3.keccak(text="Transfer(address,address,uint256)").to_0x_hex()


class RangeRejected(Exception):
    """The RPC provider rejected a block range for one block, which cannot be split further."""


def _address_topic(address: str) -> str:
    # Topics are passed as hex strings: eth-tester ignores a filter given as bytes.
    return "0x" + "00" * 12 + address[2:].lower()


def _topic_address(topic: bytes) -> str:
    return Web3.to_checksum_address(bytes(topic)[-20:])


@dataclass
class PollResult:
    head_block: int
    cursor_block: int
    credited: int = 0
    pending: int = 0
    orphaned: int = 0
    logs_seen: int = 0
    windows: list[tuple[int, int]] = field(default_factory=list)


class DepositWatcher:
    def __init__(self, db: Database, chain: ChainSettings, w3: Web3) -> None:
        self.db = db
        self.chain = chain
        self.w3 = w3

    def read_cursor(self, session: Session) -> int:
        cursor = session.get(ChainCursor, self.chain.chain_id)
        return cursor.last_block if cursor is not None else self.chain.start_block - 1

    def _save_cursor(self, session: Session, block: int) -> None:
        cursor = session.get(ChainCursor, self.chain.chain_id)
        if cursor is None:
            session.add(ChainCursor(chain_id=self.chain.chain_id, last_block=block))
        else:
            assert block >= cursor.last_block, f"cursor for chain {self.chain.chain_id} would move back to {block}"
            cursor.last_block = block
        session.flush()

    def _fetch_logs(self, from_block: int, to_block: int) -> list[deposits.DepositLog]:
        if not self.chain.tokens:
            return []
        raw_logs = self.w3.eth.get_logs(
            {
                "fromBlock": from_block,
                "toBlock": to_block,
                "address": [token.address for token in self.chain.tokens],
                "topics": [TRANSFER_TOPIC, None, _address_topic(self.chain.treasury_address)],
            }
        )
        result = []
        for raw in raw_logs:
            parsed = self._parse_log(raw)
            if parsed is not None:
                result.append(parsed)
        return result

    def _parse_log(self, raw) -> deposits.DepositLog | None:  # type: ignore[no-untyped-def]
        token = self.chain.token_by_address(raw["address"])
        topics = raw["topics"]
        if token is None or len(topics) != 3 or len(bytes(raw["data"])) != 32:
            logger.warning("skipped a malformed or unknown Transfer log", extra={"tx_hash": raw["transactionHash"].hex()})
            return None
        return deposits.DepositLog(
            chain_id=self.chain.chain_id,
            tx_hash="0x" + bytes(raw["transactionHash"]).hex(),
            log_index=int(raw["logIndex"]),
            block_number=int(raw["blockNumber"]),
            block_hash="0x" + bytes(raw["blockHash"]).hex(),
            token_address=token.address,
            token_decimals=token.decimals,
            from_address=_topic_address(topics[1]),
            to_address=_topic_address(topics[2]),
            amount_units=int.from_bytes(bytes(raw["data"]), "big"),
        )

    def fetch_logs(self, from_block: int, to_block: int) -> list[tuple[int, int, list[deposits.DepositLog]]]:
        """Fetch logs for a range in windows of at most max_block_range blocks, in block order,
        halving a window whenever the provider rejects it as too large."""
        step = self.chain.max_block_range
        windows = [(start, min(start + step - 1, to_block)) for start in range(from_block, to_block + 1, step)]
        stack = list(reversed(windows))
        fetched = []
        while stack:
            start, end = stack.pop()
            try:
                fetched.append((start, end, self._fetch_logs(start, end)))
            except (Web3RPCError, ValueError) as exc:
                if start == end:
                    raise RangeRejected(f"eth_getLogs rejected block {start} on chain {self.chain.chain_id}: {exc}") from exc
                middle = (start + end) // 2
                logger.info("eth_getLogs range rejected; splitting", extra={"from_block": start, "to_block": end})
                # The lower half is fetched first so the cursor moves forward without gaps.
                stack.append((middle + 1, end))
                stack.append((start, middle))
        return fetched

    def poll_once(self) -> PollResult:
        head = self.w3.eth.block_number
        safe_block = head - self.chain.confirmations + 1
        with self.db.session() as session:
            cursor = self.read_cursor(session)
        result = PollResult(head_block=head, cursor_block=cursor)

        while cursor < safe_block:
            window_end = min(cursor + self.chain.max_block_range, safe_block)
            for start, end, logs in self.fetch_logs(cursor + 1, window_end):
                with self.db.transaction() as session:
                    for log in logs:
                        deposit = deposits.credit_deposit(session, log)
                        result.credited += deposit.status == "credited"
                    seen = {(log.tx_hash.lower(), log.log_index) for log in logs}
                    result.orphaned += deposits.orphan_missing_pending(session, self.chain.chain_id, start, end, seen)
                    self._save_cursor(session, end)
                result.logs_seen += len(logs)
                result.windows.append((start, end))
                cursor = end
        result.cursor_block = cursor

        if head > cursor:
            for _, _, logs in self.fetch_logs(cursor + 1, head):
                with self.db.transaction() as session:
                    for log in logs:
                        deposits.record_pending(session, log)
                result.pending += len(logs)
        return result

"""The deposit watcher: reads deposit logs on one chain and hands them to `marketplace.deposits`.

Two kinds of log are deposits: an ERC-20 `Transfer` of an allowlisted token to the treasury,
and a `Deposited` event of the chain's TopUpVault for an allowlisted token. Only configured
token contracts count, by address. A log of any other contract, a zero amount, a vault
withdrawal to the treasury and a malformed log are skipped with a log line and a counter.

A fee-on-transfer token credits what arrived. The vault emits the increase of its own balance,
and reverts when nothing arrived. A plain transfer is credited at the value of its Transfer log
to the treasury, which is the net amount for tokens that log the net amount, as the test token
FeeOnTransferToken does. A token whose Transfer logs more than it delivers must not be listed.

Each poll runs three steps:

1. Reorganisation check. The cursor stores the hash of its block, and a different canonical
   hash means that a reorganisation reached below the cursor. Then settled deposits in the last
   `reorg_check_blocks` blocks are checked against their receipts (and moved, or reversed), and
   the cursor goes back by that many blocks, so that the range is scanned again.
2. Confirmed scan, from the cursor to the highest creditable block (`confirmations` deep, or
   the `finalized` tag). Each window's deposits are checked against their transaction receipts
   (status 1, same block hash, same log), then credited in one database transaction together
   with the cursor, so a restart neither misses nor repeats a deposit. Known deposits of the
   window that the logs no longer contain are looked up by receipt: a log that is gone orphans a
   pending deposit and reverses a credited one.
3. Pending scan, from the cursor to the head: deposits are recorded as pending with their block
   hash, for the deposit status API. Nothing is credited here.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session
from web3 import Web3

from chain.rpc import (
    ChainViewChanged,
    LogFetcher,
    LogQuery,
    LogWindow,
    connect,
    read_block_hash,
    read_head_block,
    read_receipt,
    read_safe_block,
    to_hex,
)
from marketplace import deposits
from marketplace.db import Database
from marketplace.models import ChainCursor, Deposit
from marketplace.settings import ChainSettings

logger = logging.getLogger(__name__)

TRANSFER_TOPIC = Web3.keccak(text="Transfer(address,address,uint256)").to_0x_hex()
DEPOSITED_TOPIC = Web3.keccak(text="Deposited(bytes32,address,address,uint256)").to_0x_hex()


class CursorMoved(Exception):
    """Another watcher process moved the cursor of this chain first, so this poll stops."""


def _address_topic(address: str) -> str:
    # Topics are passed as hex strings: eth-tester ignores a filter given as bytes.
    return "0x" + "00" * 12 + address[2:].lower()


def _topic_address(topic: bytes) -> str:
    return Web3.to_checksum_address(bytes(topic)[-20:])


@dataclass
class PollResult:
    """Counters and windows of one poll, for logs, the Celery task result and tests."""

    head_block: int
    safe_block: int
    cursor_block: int
    credited: int = 0
    unattributed: int = 0
    pending: int = 0
    orphaned: int = 0
    reversed: int = 0
    moved: int = 0
    rejected: int = 0
    skipped_logs: int = 0
    logs_seen: int = 0
    reorg_detected: bool = False
    # The reason the poll stopped early, or None. The next poll continues from the saved cursor.
    interrupted: str | None = None
    windows: list[tuple[int, int]] = field(default_factory=list)


@dataclass(frozen=True)
class LocatedLog:
    """A deposit log found again in its transaction's receipt, in the canonical chain."""

    block_number: int
    block_hash: str
    log: deposits.DepositLog


class DepositWatcher:
    """Follows one chain. Keep one instance per chain, so its log fetcher remembers the provider's limits."""

    def __init__(
        self,
        db: Database,
        chain: ChainSettings,
        w3: Web3,
        *,
        on_window_committed: Callable[[LogWindow], None] | None = None,
    ) -> None:
        self.db = db
        self.chain = chain
        self.w3 = w3
        self.fetcher = LogFetcher(w3, chain.max_block_range)
        self.on_window_committed = on_window_committed
        self.skipped_logs = 0

    # --- logs ---------------------------------------------------------------------------

    def log_queries(self) -> list[LogQuery]:
        queries = []
        if self.chain.tokens:
            queries.append(
                LogQuery(
                    addresses=tuple(token.address for token in self.chain.tokens),
                    topics=(TRANSFER_TOPIC, None, _address_topic(self.chain.treasury_address)),
                )
            )
        if self.chain.vault_address is not None:
            queries.append(LogQuery(addresses=(self.chain.vault_address,), topics=(DEPOSITED_TOPIC,)))
        return queries

    def parse_log(self, raw: Any) -> deposits.DepositLog | None:
        """Turn a raw log into a deposit, or return None (and count it) when it is no deposit."""
        try:
            parsed = self._parse(raw)
        except (KeyError, TypeError, ValueError) as exc:
            parsed = None
            reason = f"malformed log: {exc}"
        else:
            reason = None if isinstance(parsed, deposits.DepositLog) else parsed
        if isinstance(parsed, deposits.DepositLog):
            return parsed

        self.skipped_logs += 1
        logger.warning(
            "skipped a log that is not a deposit: chain=%d tx=%s log=%s reason=%s",
            self.chain.chain_id, to_hex(raw.get("transactionHash", b"")), raw.get("logIndex"), reason,
        )
        return None

    def _parse(self, raw: Any) -> deposits.DepositLog | str:
        """Return the deposit, or a string with the reason why the log is not one."""
        address = Web3.to_checksum_address(raw["address"])
        topics = [bytes(topic) for topic in raw["topics"]]
        data = bytes(raw["data"])
        if len(topics) not in (3, 4) or len(data) != 32:
            return f"unexpected shape: {len(topics)} topics, {len(data)} data bytes"
        amount_units = int.from_bytes(data, "big")
        if amount_units == 0:
            return "zero amount"

        event = to_hex(topics[0])
        if event == TRANSFER_TOPIC and len(topics) == 3:
            token = self.chain.token_by_address(address)
            if token is None:
                return f"Transfer of unlisted token {address}"
            from_address, to_address = _topic_address(topics[1]), _topic_address(topics[2])
            if to_address != self.chain.treasury_address:
                return f"Transfer to {to_address}, not the treasury"
            if from_address in (self.chain.vault_address, self.chain.treasury_address):
                return f"internal Transfer from {from_address}"
            account_ref = None
            source = "transfer"
        elif event == DEPOSITED_TOPIC and len(topics) == 4:
            if address != self.chain.vault_address:
                return f"Deposited event of {address}, which is not the configured vault"
            token = self.chain.token_by_address(_topic_address(topics[2]))
            if token is None:
                return f"vault deposit of unlisted token {_topic_address(topics[2])}"
            account_ref = int.from_bytes(topics[1], "big")
            from_address, to_address = _topic_address(topics[3]), address
            source = "vault"
        else:
            return f"event {event} is neither Transfer nor Deposited"

        return deposits.DepositLog(
            chain_id=self.chain.chain_id,
            tx_hash=to_hex(raw["transactionHash"]),
            log_index=int(raw["logIndex"]),
            block_number=int(raw["blockNumber"]),
            block_hash=to_hex(raw["blockHash"]),
            token_address=token.address,
            token_decimals=token.decimals,
            from_address=from_address,
            to_address=to_address,
            amount_units=amount_units,
            source=source,
            account_ref=account_ref,
        )

    def iter_deposit_logs(self, from_block: int, to_block: int) -> Iterator[tuple[LogWindow, list[deposits.DepositLog]]]:
        """Yield each window of the range with its deposit logs; other logs are skipped."""
        queries = self.log_queries()
        if not queries:
            return
        for window in self.fetcher.windows(queries, from_block, to_block):
            parsed = [self.parse_log(raw) for raw in window.logs]
            yield window, [log for log in parsed if log is not None]

    # --- cursor -------------------------------------------------------------------------

    def read_cursor(self, session: Session) -> int:
        cursor = session.get(ChainCursor, self.chain.chain_id)
        return cursor.last_block if cursor is not None else self.chain.start_block - 1

    def _lock_cursor(self, session: Session, expected_block: int) -> ChainCursor:
        """Lock the cursor row for this transaction and check that no other watcher moved it since it was read."""
        cursor = session.scalar(
            select(ChainCursor).where(ChainCursor.chain_id == self.chain.chain_id).with_for_update()
        )
        current = cursor.last_block if cursor is not None else self.chain.start_block - 1
        if current != expected_block:
            raise CursorMoved(f"cursor of chain {self.chain.chain_id} is at {current}, expected {expected_block}")
        if cursor is None:
            cursor = ChainCursor(chain_id=self.chain.chain_id, last_block=expected_block)
            session.add(cursor)
        return cursor

    # --- poll ---------------------------------------------------------------------------

    def poll_once(self) -> PollResult:
        """Run the three steps once.

        Raises ChainReadError subclasses and RPC errors, and the next poll tries again.
        """
        head = read_head_block(self.w3)
        safe = min(read_safe_block(self.w3, self.chain, head), head)
        with self.db.session() as session:
            cursor = self.read_cursor(session)
        result = PollResult(head_block=head, safe_block=safe, cursor_block=cursor)

        try:
            cursor = self._check_reorganisation(cursor, result)
            cursor = self._scan_confirmed(cursor, head, safe, result)
            self._scan_pending(cursor, head, result)
        except (ChainViewChanged, CursorMoved) as exc:
            result.interrupted = str(exc)
            logger.warning("deposit poll of chain %d stopped early; the next poll continues: %s", self.chain.chain_id, exc)
        self._save_heads(head, safe)

        with self.db.session() as session:
            result.cursor_block = self.read_cursor(session)
        result.skipped_logs = self.skipped_logs
        return result

    def _save_heads(self, head: int, safe: int) -> None:
        with self.db.transaction() as session:
            cursor = session.get(ChainCursor, self.chain.chain_id)
            if cursor is None:
                cursor = ChainCursor(chain_id=self.chain.chain_id, last_block=self.chain.start_block - 1)
                session.add(cursor)
            cursor.head_block = head
            cursor.safe_block = safe

    # --- step 1: reorganisation below the cursor ----------------------------------------

    def _check_reorganisation(self, cursor: int, result: PollResult) -> int:
        with self.db.session() as session:
            row = session.get(ChainCursor, self.chain.chain_id)
            stored_hash = row.last_block_hash if row is not None else None
        if stored_hash is None or read_block_hash(self.w3, cursor) == stored_hash:
            return cursor

        result.reorg_detected = True
        low = max(self.chain.start_block, cursor - self.chain.reorg_check_blocks + 1)
        logger.error(
            "chain %d reorganised below the watcher's cursor at block %d; checking deposits from block %d again",
            self.chain.chain_id, cursor, low,
        )
        self._recheck_settled(low, result)

        # NOTE: a reorganisation deeper than reorg_check_blocks is not rescanned here. The
        # reconciler reports its deposits as missing in the ledger or missing on-chain.
        with self.db.transaction() as session:
            row = self._lock_cursor(session, cursor)
            row.last_block = low - 1
            row.last_block_hash = None
        return low - 1

    def _recheck_settled(self, low: int, result: PollResult) -> None:
        with self.db.session() as session:
            rows = list(
                session.scalars(
                    select(Deposit).where(
                        Deposit.chain_id == self.chain.chain_id,
                        Deposit.block_number >= low,
                        Deposit.status.in_(deposits.SETTLED_STATUSES),
                    )
                )
            )
        canonical: dict[int, str | None] = {}
        for row in rows:
            if row.block_number not in canonical:
                canonical[row.block_number] = read_block_hash(self.w3, row.block_number)
            if canonical[row.block_number] == row.block_hash:
                continue
            located = self._locate(row)
            with self.db.transaction() as session:
                if located is not None:
                    deposits.move_deposit(session, row.id, located.block_number, located.block_hash)
                    result.moved += 1
                elif row.status == "credited":
                    deposits.reverse_deposit(session, row.id, f"block {row.block_number} ({row.block_hash}) left the canonical chain")
                    result.reversed += 1
                else:
                    deposits.orphan_deposit(session, row.id, f"block {row.block_number} left the canonical chain")
                    result.orphaned += 1

    def _locate(self, row: Deposit) -> LocatedLog | None:
        """Find a deposit's log in its transaction's canonical receipt, at the same log index."""
        receipt = read_receipt(self.w3, row.tx_hash)
        if receipt is None or receipt["status"] != 1:
            return None
        for raw in receipt["logs"]:
            if int(raw["logIndex"]) != row.log_index:
                continue
            log = self.parse_log(raw)
            same = (
                log is not None
                and log.token_address == row.token_address
                and log.from_address == row.from_address
                and str(log.amount_units) == row.amount_units
            )
            if same:
                assert log is not None
                return LocatedLog(log.block_number, log.block_hash, log)
        return None

    # --- step 2: confirmed blocks -------------------------------------------------------

    def _scan_confirmed(self, cursor: int, head: int, safe: int, result: PollResult) -> int:
        if cursor >= safe:
            return cursor
        for window, logs in self.iter_deposit_logs(cursor + 1, safe):
            self._commit_window(window, logs, head, safe, result)
            cursor = window.to_block
            result.windows.append((window.from_block, window.to_block))
            if self.on_window_committed is not None:
                self.on_window_committed(window)
        return cursor

    def _commit_window(self, window: LogWindow, logs: list[deposits.DepositLog], head: int, safe: int, result: PollResult) -> None:
        with self.db.session() as session:
            known = deposits.find_deposits(session, self.chain.chain_id, [log.key for log in logs])
            in_range = list(
                session.scalars(
                    select(Deposit).where(
                        Deposit.chain_id == self.chain.chain_id,
                        Deposit.block_number >= window.from_block,
                        Deposit.block_number <= window.to_block,
                        Deposit.status.in_(("pending", *deposits.SETTLED_STATUSES)),
                    )
                )
            )
            prior_status = {key: row.status for key, row in known.items()}
            settled_hashes = {key: row.block_hash for key, row in known.items() if row.status in deposits.SETTLED_STATUSES}

        # Known deposits of this range that the logs no longer contain: found elsewhere, or gone.
        seen = {log.key for log in logs}
        missing: list[tuple[Deposit, LocatedLog | None]] = []
        for row in in_range:
            if (row.tx_hash, row.log_index) in seen:
                continue
            located = self._locate(row)
            if located is not None and located.block_number <= window.to_block:
                # The provider left out a log that the receipt proves, so it is credited like the others.
                logs.append(located.log)
                seen.add(located.log.key)
            else:
                missing.append((row, located))

        unsettled = [log for log in logs if settled_hashes.get(log.key) != log.block_hash]
        rejections = self._check_receipts(unsettled)

        with self.db.transaction() as session:
            cursor = self._lock_cursor(session, window.from_block - 1)
            for log in sorted(logs, key=lambda log: (log.block_number, log.log_index)):
                reason = rejections.get(log.key)
                if reason is not None:
                    deposits.reject_deposit(session, log, reason)
                    result.rejected += 1
                    continue
                deposit = deposits.credit_deposit(session, log)
                if prior_status.get(log.key) != deposit.status:
                    result.credited += deposit.status == "credited"
                    result.unattributed += deposit.status == "unattributed"
                    result.rejected += deposit.status == "rejected"
            for row, located in missing:
                if located is not None:
                    deposits.move_deposit(session, row.id, located.block_number, located.block_hash)
                    result.moved += 1
                elif row.status == "credited":
                    deposits.reverse_deposit(session, row.id, f"log is no longer in block range {window.from_block}-{window.to_block}")
                    result.reversed += 1
                else:
                    deposits.orphan_deposit(session, row.id, f"log is no longer in block {row.block_number}")
                    result.orphaned += 1
            cursor.last_block = window.to_block
            cursor.last_block_hash = window.to_block_hash
            cursor.head_block = head
            cursor.safe_block = safe
        result.logs_seen += len(logs)
        logger.debug("deposit window committed: chain=%d blocks=%d-%d logs=%d", self.chain.chain_id, window.from_block, window.to_block, len(logs))

    def _check_receipts(self, logs: list[deposits.DepositLog]) -> dict[tuple[str, int], str]:
        """Check logs against their transaction receipts and return a rejection reason per failing log.

        Raises ChainViewChanged when a receipt is missing or in another block. That means the
        chain reorganised after the logs were read, so the next poll reads the window again.
        """
        by_tx: dict[str, list[deposits.DepositLog]] = {}
        for log in logs:
            by_tx.setdefault(log.tx_hash.lower(), []).append(log)

        rejections: dict[tuple[str, int], str] = {}
        for tx_hash, tx_logs in by_tx.items():
            receipt = read_receipt(self.w3, tx_hash)
            if receipt is None:
                raise ChainViewChanged(f"transaction {tx_hash} from eth_getLogs has no receipt")
            if to_hex(receipt["blockHash"]) != tx_logs[0].block_hash:
                raise ChainViewChanged(f"transaction {tx_hash} is in block {to_hex(receipt['blockHash'])} now")
            if receipt["status"] != 1:
                for log in tx_logs:
                    rejections[log.key] = "the transaction reverted"
                continue
            receipt_logs = {int(raw["logIndex"]): raw for raw in receipt["logs"]}
            for log in tx_logs:
                raw = receipt_logs.get(log.log_index)
                if raw is None or self._parse(raw) != log:
                    rejections[log.key] = f"the receipt has no matching log at index {log.log_index}"
        return rejections

    # --- step 3: unconfirmed blocks -----------------------------------------------------

    def _scan_pending(self, cursor: int, head: int, result: PollResult) -> None:
        if cursor >= head:
            return
        for _window, logs in self.iter_deposit_logs(cursor + 1, head):
            if not logs:
                continue
            with self.db.transaction() as session:
                for log in logs:
                    deposit = deposits.record_pending(session, log)
                    result.pending += deposit.status == "pending"


# --- command line ---------------------------------------------------------------------------


def watch(db: Database, watchers: list[DepositWatcher], *, poll_interval_s: float, until_block: int | None = None) -> None:
    """Poll every watcher until each cursor reaches until_block, or forever when it is None."""
    while True:
        done = True
        for watcher in watchers:
            try:
                result = watcher.poll_once()
            except Exception:
                # A long-running watcher outlives RPC and database outages: log and poll again.
                logger.exception("deposit poll of chain %d failed; retrying", watcher.chain.chain_id)
                done = False
                continue
            logger.info(
                "chain %d: head %d, cursor %d, %d credited, %d pending",
                watcher.chain.chain_id, result.head_block, result.cursor_block, result.credited, result.pending,
            )
            done = done and until_block is not None and result.cursor_block >= until_block
        if done:
            return
        time.sleep(poll_interval_s)


def main(argv: list[str] | None = None) -> int:
    """Run the deposit watcher for every chain in TOKENPORT_CHAINS, outside Celery."""
    from marketplace.schema import upgrade_schema
    from marketplace.settings import get_settings

    parser = argparse.ArgumentParser(prog="python -m chain.watcher", description=main.__doc__)
    parser.add_argument("--until-block", type=int, help="exit once every chain's cursor reaches this block")
    parser.add_argument("--progress", action="store_true", help="print one line to stdout per committed block window")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)

    settings = get_settings()
    db = Database(settings.database_url)
    upgrade_schema(db)

    def print_progress(window: LogWindow) -> None:
        print(f"committed {window.from_block}-{window.to_block}", flush=True)

    watchers = [
        DepositWatcher(
            db,
            chain,
            connect(chain),
            on_window_committed=print_progress if args.progress else None,
        )
        for chain in settings.chains
    ]
    interval = min((chain.poll_interval_s for chain in settings.chains), default=2.0)
    watch(db, watchers, poll_interval_s=interval, until_block=args.until_block)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Deploy the SettlementRegistry contract, commit settlement periods and read them back.

A period's totals are in nano-USD (1 USD = 10**9 nano-USD), the ledger unit. Its timestamps are
Unix seconds, and it covers the half-open interval [from_timestamp, to_timestamp). Periods are
numbered from 1 without gaps, and each one starts where the previous one ends.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from hexbytes import HexBytes
from web3 import Web3
from web3.contract import Contract
from web3.types import BlockIdentifier, TxReceipt

from chain.contracts import Sender, deploy_contract, sender_address, transact

logger = logging.getLogger(__name__)

UINT32_MAX = 2**32 - 1
UINT64_MAX = 2**64 - 1
UINT256_MAX = 2**256 - 1


@dataclass(frozen=True)
class PeriodCommitment:
    """The fields that the operator commits for one settlement period."""

    period_id: int
    from_timestamp: int
    to_timestamp: int
    ledger_root: bytes
    balances_root: bytes
    records_root: bytes
    total_liabilities_nano_usd: int
    total_usage_nano_usd: int
    total_deposits_nano_usd: int
    total_payouts_nano_usd: int
    record_count: int

    def __post_init__(self) -> None:
        _check_range("period_id", self.period_id, 1, UINT64_MAX)
        _check_range("from_timestamp", self.from_timestamp, 0, UINT64_MAX)
        _check_range("to_timestamp", self.to_timestamp, 0, UINT64_MAX)
        if self.to_timestamp <= self.from_timestamp:
            raise ValueError(
                f"invalid period: to_timestamp {self.to_timestamp} must be after "
                f"from_timestamp {self.from_timestamp}"
            )
        for name in ("ledger_root", "balances_root", "records_root"):
            root = getattr(self, name)
            if not isinstance(root, bytes) or len(root) != 32:
                raise ValueError(f"invalid {name} {root!r}: expected 32 bytes")
        for name in (
            "total_liabilities_nano_usd",
            "total_usage_nano_usd",
            "total_deposits_nano_usd",
            "total_payouts_nano_usd",
        ):
            _check_range(name, getattr(self, name), 0, UINT256_MAX)
        _check_range("record_count", self.record_count, 0, UINT32_MAX)

    def contract_args(self) -> tuple[Any, ...]:
        """Return the arguments of ``commitPeriod`` in ABI order."""
        return (
            self.period_id,
            self.from_timestamp,
            self.to_timestamp,
            self.ledger_root,
            self.balances_root,
            self.records_root,
            self.total_liabilities_nano_usd,
            self.total_usage_nano_usd,
            self.total_deposits_nano_usd,
            self.total_payouts_nano_usd,
            self.record_count,
        )


@dataclass(frozen=True)
class StoredPeriod:
    """A committed period as the registry stores it."""

    commitment: PeriodCommitment
    committed_at_block: int


@dataclass(frozen=True)
class PeriodCommittedLog:
    """A ``PeriodCommitted`` event and the position of its log on the chain."""

    commitment: PeriodCommitment
    block_number: int
    block_hash: HexBytes
    transaction_hash: HexBytes
    log_index: int


def _check_range(name: str, value: int, minimum: int, maximum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"invalid {name} {value!r}: expected an int")
    if not minimum <= value <= maximum:
        raise ValueError(f"invalid {name} {value}: expected {minimum} to {maximum}")


def deploy_registry(w3: Web3, operator_sender: Sender) -> Contract:
    """Deploy a SettlementRegistry from ``operator_sender`` with that account as its operator."""
    return deploy_contract(
        w3, "SettlementRegistry", sender_address(operator_sender), sender=operator_sender
    )


def commit_period(
    w3: Web3, registry: Contract, operator_sender: Sender, commitment: PeriodCommitment
) -> TxReceipt:
    """Commit one period and return the receipt. The registry's operator must send it.

    Raises web3's ``ContractCustomError`` when the registry rejects the period during gas
    estimation, and ``TransactionFailedError`` when the mined transaction reverted.
    """
    function = registry.functions.commitPeriod(*commitment.contract_args())
    receipt = transact(w3, function, operator_sender)
    logger.info(
        "committed settlement period %d to registry %s (tx=%s, gas=%d)",
        commitment.period_id, registry.address,
        receipt["transactionHash"].to_0x_hex(), receipt["gasUsed"],
    )
    return receipt


def last_period_id(registry: Contract) -> int:
    """Return the id of the last committed period, or 0 before the first commitment."""
    return registry.functions.lastPeriodId().call()


def read_period(registry: Contract, period_id: int) -> StoredPeriod | None:
    """Read period ``period_id`` from the registry, or return None if it is not committed."""
    if period_id < 1 or period_id > last_period_id(registry):
        return None
    (
        from_timestamp,
        to_timestamp,
        committed_at_block,
        record_count,
        ledger_root,
        balances_root,
        records_root,
        total_liabilities_nano_usd,
        total_usage_nano_usd,
        total_deposits_nano_usd,
        total_payouts_nano_usd,
    ) = registry.functions.periods(period_id).call()
    commitment = PeriodCommitment(
        period_id=period_id,
        from_timestamp=from_timestamp,
        to_timestamp=to_timestamp,
        ledger_root=bytes(ledger_root),
        balances_root=bytes(balances_root),
        records_root=bytes(records_root),
        total_liabilities_nano_usd=total_liabilities_nano_usd,
        total_usage_nano_usd=total_usage_nano_usd,
        total_deposits_nano_usd=total_deposits_nano_usd,
        total_payouts_nano_usd=total_payouts_nano_usd,
        record_count=record_count,
    )
    return StoredPeriod(commitment=commitment, committed_at_block=committed_at_block)


def fetch_period_commitments(
    registry: Contract,
    from_block: BlockIdentifier = 0,
    to_block: BlockIdentifier = "latest",
) -> list[PeriodCommittedLog]:
    """Return every ``PeriodCommitted`` event of the registry in a block range, in log order.

    The range is inclusive and fetched with one ``eth_getLogs`` request.
    """
    # NOTE: providers that limit the block range of eth_getLogs reject a long range here.
    # Callers on such providers split the range themselves.
    events = registry.events.PeriodCommitted().get_logs(from_block=from_block, to_block=to_block)
    return [_period_committed_log(event) for event in events]


def _period_committed_log(event: Any) -> PeriodCommittedLog:
    args = event["args"]
    commitment = PeriodCommitment(
        period_id=args["periodId"],
        from_timestamp=args["fromTimestamp"],
        to_timestamp=args["toTimestamp"],
        ledger_root=bytes(args["ledgerRoot"]),
        balances_root=bytes(args["balancesRoot"]),
        records_root=bytes(args["recordsRoot"]),
        total_liabilities_nano_usd=args["totalLiabilitiesNanoUsd"],
        total_usage_nano_usd=args["totalUsageNanoUsd"],
        total_deposits_nano_usd=args["totalDepositsNanoUsd"],
        total_payouts_nano_usd=args["totalPayoutsNanoUsd"],
        record_count=args["recordCount"],
    )
    return PeriodCommittedLog(
        commitment=commitment,
        block_number=event["blockNumber"],
        block_hash=HexBytes(event["blockHash"]),
        transaction_hash=HexBytes(event["transactionHash"]),
        log_index=event["logIndex"],
    )

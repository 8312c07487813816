"""Committing closed periods on anvil: resuming a built period, and refusing a diverged registry."""

from __future__ import annotations

import math
import time

import pytest
from web3 import Web3

from chain.devchain import DEV_DEPLOYER, mine_blocks
from chain.registry import PeriodCommitment, commit_period, deploy_registry, read_period
from marketplace.db import Database
from marketplace.models import SettlementPeriod
from marketplace.settlement.period import SettlementAnchor, SettlementError, close_next_period
from tests.factories import credit_without_chain
from tests.test_settlement_period import seed_market

pytestmark = pytest.mark.anvil


@pytest.fixture
def anchor(anvil_w3: Web3) -> SettlementAnchor:
    operator = DEV_DEPLOYER.local_account()
    return SettlementAnchor(anvil_w3, deploy_registry(anvil_w3, operator), operator)


def test_built_period_commits_later_unchanged(db: Database, anchor: SettlementAnchor):
    market = seed_market(db)
    credit_without_chain(db, market["buyer"], 1_000)
    latest = anchor.w3.eth.get_block("latest")["timestamp"]
    to_timestamp = max(math.ceil(time.time()), latest) + 1

    assert close_next_period(db, anchor, chains=[], to_timestamp=to_timestamp) is None
    with db.session() as session:
        built = session.get(SettlementPeriod, 1)
    assert built.status == "built"

    credit_without_chain(db, market["buyer"], 5, tx_hash="0x" + "cd" * 32)
    # The session's anvil reverts its clock with each snapshot, so the test sets the block time.
    anchor.w3.manager.request_blocking("evm_setNextBlockTimestamp", [to_timestamp + 1])
    mine_blocks(anchor.w3, 1)
    committed = close_next_period(db, anchor, chains=[], to_timestamp=to_timestamp + 3_600)

    assert committed is not None
    assert (committed.period_id, committed.status, committed.to_timestamp) == (1, "committed", to_timestamp)
    assert committed.ledger_root == built.ledger_root
    stored = read_period(anchor.registry, 1)
    assert "0x" + stored.commitment.ledger_root.hex() == built.ledger_root
    assert stored.commitment.total_liabilities_nano_usd == 1_000


def test_registry_ahead_of_database_stops_the_close(db: Database, anchor: SettlementAnchor):
    seed_market(db)
    latest = anchor.w3.eth.get_block("latest")["timestamp"]
    foreign = PeriodCommitment(
        period_id=1,
        from_timestamp=0,
        to_timestamp=latest - 10,
        ledger_root=bytes(32),
        balances_root=bytes(32),
        records_root=bytes(32),
        total_liabilities_nano_usd=0,
        total_usage_nano_usd=0,
        total_deposits_nano_usd=0,
        total_payouts_nano_usd=0,
        record_count=0,
    )
    commit_period(anchor.w3, anchor.registry, DEV_DEPLOYER.local_account(), foreign)

    with pytest.raises(SettlementError, match="the registry's last period is 1, but the database's is 0"):
        close_next_period(db, anchor, chains=[], to_timestamp=latest - 5)
    with db.session() as session:
        assert session.get(SettlementPeriod, 1) is None

"""The embedded development environment: anvil with the test stablecoin, and the mock upstream.

`tokenport serve` and `tokenport demo` both start it. Every key printed or used here is a
development-only key derived from anvil's public test mnemonic.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from web3 import Web3
from web3.contract import Contract

from chain.devchain import (
    DEV_BUYER,
    DEV_DEPLOYER,
    DEV_SUPPLIER_PAYOUT,
    DEV_TREASURY,
    AnvilProcess,
    deploy_dev_stablecoin,
    fund_wallet,
)
from marketplace import metering
from marketplace.db import Database
from marketplace.servers import BackgroundServer
from marketplace.settings import ChainSettings, TokenSettings
from providers.mock_upstream import MOCK_API_KEY, create_mock_app

logger = logging.getLogger(__name__)

DEV_CHAIN_ID = 31337
DEMO_BUYER_FUNDING_UNITS = 100_000_000  # 100 USDC at 6 decimals
DEMO_ETH_FUNDING_WEI = 10**18
USDC_DECIMALS = 6


@dataclass
class DevEnvironment:
    anvil: AnvilProcess
    w3: Web3
    token: Contract
    chain: ChainSettings
    mock_upstream: BackgroundServer

    @property
    def mock_base_url(self) -> str:
        return f"{self.mock_upstream.url}/v1"

    @property
    def mock_api_key(self) -> str:
        return MOCK_API_KEY

    def stop(self) -> None:
        self.mock_upstream.stop()
        self.anvil.stop()


def start_dev_environment(
    *, anvil_port: int = 0, mock_port: int = 0, confirmations: int = 3, poll_interval_s: float = 1.0, block_time_s: int | None = None
) -> DevEnvironment:
    """Start anvil with the test stablecoin and the mock upstream. With `block_time_s` anvil mines
    a block on that interval, so deposits confirm without anyone mining by hand."""
    anvil = AnvilProcess(port=anvil_port, block_time=block_time_s).start()
    try:
        w3 = anvil.web3()
        token = deploy_dev_stablecoin(w3)
        fund_wallet(w3, token, DEV_BUYER.address, DEMO_BUYER_FUNDING_UNITS, DEMO_ETH_FUNDING_WEI)
        fund_wallet(w3, token, DEV_SUPPLIER_PAYOUT.address, 0, DEMO_ETH_FUNDING_WEI)
        chain = ChainSettings(
            chain_id=DEV_CHAIN_ID,
            name="anvil",
            rpc_url=anvil.url,
            treasury_address=DEV_TREASURY.address,
            confirmations=confirmations,
            poll_interval_s=poll_interval_s,
            start_block=w3.eth.block_number,
            tokens=[TokenSettings(symbol="USDC", address=token.address, decimals=USDC_DECIMALS)],
        )
        mock = BackgroundServer(create_mock_app(MOCK_API_KEY), port=mock_port, name="mock-upstream").start()
    except BaseException:
        anvil.stop()
        raise
    logger.info("development chain ready", extra={"rpc_url": anvil.url, "token": token.address, "deployer": DEV_DEPLOYER.address})
    return DevEnvironment(anvil=anvil, w3=w3, token=token, chain=chain, mock_upstream=mock)


class ChainPoller(threading.Thread):
    """Runs the deposit watcher and the hold sweep on a timer, where Celery beat does in production."""

    def __init__(self, db: Database, chain: ChainSettings, w3: Web3, chain_heads: dict[int, int]) -> None:
        super().__init__(name="chain-poller", daemon=True)
        self.db = db
        self.chain = chain
        self.w3 = w3
        self.chain_heads = chain_heads
        self.stopped = threading.Event()

    def run(self) -> None:
        from chain.watcher import DepositWatcher

        watcher = DepositWatcher(self.db, self.chain, self.w3)
        while not self.stopped.wait(self.chain.poll_interval_s):
            try:
                result = watcher.poll_once()
                self.chain_heads[self.chain.chain_id] = result.head_block
                with self.db.transaction() as session:
                    metering.expire_holds(session)
            except Exception:
                logger.exception("chain poll failed; retrying at the next interval", extra={"chain_id": self.chain.chain_id})

    def stop(self) -> None:
        self.stopped.set()
        self.join(timeout=10)

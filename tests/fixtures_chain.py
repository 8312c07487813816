"""Fixtures for the chain: eth-tester in process and anvil from contracts/node_modules."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from eth_tester import EthereumTester, PyEVMBackend
from web3 import EthereumTesterProvider, Web3
from web3.contract import Contract

from chain.devchain import (
    DEV_ACCOUNTS,
    AnvilNotFoundError,
    AnvilProcess,
    deploy_dev_stablecoin,
    find_anvil_binary,
)

# Each development account starts with the same ETH balance on eth-tester as on anvil.
DEV_ACCOUNT_BALANCE_WEI = 10_000 * 10**18


@pytest.fixture
def eth_tester_w3() -> Web3:
    """Web3 on a fresh in-process py-evm chain where the development accounts hold ETH.

    eth-tester's own prefunded accounts differ from the development accounts, so its first
    account sends each development account ``DEV_ACCOUNT_BALANCE_WEI``. Transactions are
    mined as they arrive.
    """
    tester = EthereumTester(PyEVMBackend())
    tester.enable_auto_mine_transactions()
    w3 = Web3(EthereumTesterProvider(tester))

    funder = w3.eth.accounts[0]
    for account in DEV_ACCOUNTS.values():
        transaction_hash = w3.eth.send_transaction(
            {"from": funder, "to": account.address, "value": DEV_ACCOUNT_BALANCE_WEI}
        )
        w3.eth.wait_for_transaction_receipt(transaction_hash)
    return w3


@pytest.fixture
def dev_token(eth_tester_w3: Web3) -> Contract:
    """TestStablecoin ("Test USD Coin", "USDC", 6 decimals) deployed on ``eth_tester_w3``."""
    return deploy_dev_stablecoin(eth_tester_w3)


@pytest.fixture(scope="session")
def anvil() -> Iterator[AnvilProcess]:
    """One anvil node for the test session, on a free port of 127.0.0.1, automining.

    Skips when the anvil binary is not installed, except under CI (``CI`` set), where a
    missing binary is an install error and fails the test.
    """
    try:
        find_anvil_binary()
    except AnvilNotFoundError as error:
        if os.environ.get("CI"):
            pytest.fail(f"CI must install the chain tools: {error}")
        pytest.skip(str(error))

    with AnvilProcess() as node:
        yield node


@pytest.fixture
def anvil_w3(anvil: AnvilProcess) -> Iterator[Web3]:
    """Web3 connected to the session's anvil node, with its state reset after each test.

    The fixture takes an ``evm_snapshot`` before the test and reverts to it afterwards, so
    the blocks, balances and contracts a test creates do not reach the next test.
    """
    w3 = anvil.web3()
    snapshot_id = w3.manager.request_blocking("evm_snapshot", [])
    yield w3
    reverted = w3.manager.request_blocking("evm_revert", [snapshot_id])
    if not reverted:
        raise RuntimeError(f"anvil rejected evm_revert to snapshot {snapshot_id}")

"""A provider that caps eth_getLogs by block range and by result count: nothing is skipped or credited twice.

The 25,000-block gap is mined on an in-process eth-tester chain, because anvil 1.7.1 slows
down with every block it mines. On a 2-core machine, 1,000 blocks took about 2 s and the next
2,000 about 8 s, so one `anvil_mine` of 25,000 blocks would take minutes. The HTTP proxy test
runs the same caps in front of anvil, over a shorter gap and with vault deposits too.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import eth_tester.backends.pyevm.main as pyevm_backend
import pytest
from eth_tester import EthereumTester, PyEVMBackend
from web3 import EthereumTesterProvider, Web3

from chain.devchain import DEV_ACCOUNTS, DEV_BUYER, DEV_TREASURY, derive_dev_account, fund_wallet, mine_blocks
from chain.vault import account_ref_for, allow_token, deploy_vault, deposit_to_vault
from chain.watcher import DepositWatcher
from marketplace.deposits import deposit_transfer_id, units_to_nano_usd
from marketplace.reconciliation import reconcile
from tests.fake_rpc import CappedRpcProxy, LogCaps, capped_logs_middleware
from tests.fixtures_chain import DEV_ACCOUNT_BALANCE_WEI
from tests.test_watcher import bind_wallet, chain_settings, deploy_token, deposit_rows, ledger_amounts, send_raw, sign_transfers

GAP_BLOCKS = 25_000
CAP_BLOCKS = 1_000
CAP_LOGS = 5
CONFIRMATIONS = 12
# eth-tester checks a pending transaction's nonce against the last block, so each transfer of
# the dense block comes from its own wallet.
DENSE_SENDERS = [derive_dev_account(index) for index in range(10, 22)]


@pytest.fixture(params=["sqlite"])
def database_url(request, tmp_path) -> str:
    """SQLite only: these tests are about the provider's limits, which the database does not change."""
    return f"sqlite:///{tmp_path / 'tokenport.db'}"


def _index_transactions(w3: Web3, from_block: int, index: dict[bytes, int]) -> None:
    for number in range(from_block, w3.eth.block_number + 1):
        for tx_hash in w3.eth.get_block(number)["transactions"]:
            index[bytes(tx_hash)] = number


def _build_gapped_chain(index: dict[bytes, int]) -> dict:
    """Deposits spread over 25,000 blocks, one block holding more logs than the cap allows.

    Every transaction's block number goes into `index`, for the receipt lookup patch below.
    """
    tester = EthereumTester(PyEVMBackend())
    tester.enable_auto_mine_transactions()
    w3 = Web3(EthereumTesterProvider(tester))
    for account in [*DEV_ACCOUNTS.values(), *DENSE_SENDERS]:
        w3.eth.wait_for_transaction_receipt(
            w3.eth.send_transaction({"from": w3.eth.accounts[0], "to": account.address, "value": DEV_ACCOUNT_BALANCE_WEI})
        )
    usdc = deploy_token(w3, "USDC", 6)
    usds = deploy_token(w3, "USDS", 18)
    for token in (usdc, usds):
        fund_wallet(w3, token, DEV_BUYER.address, 10**30, 0)
    for sender in DENSE_SENDERS:
        fund_wallet(w3, usdc, sender.address, 10**12, 0)
    start_block = w3.eth.block_number + 1
    expected: dict[str, int] = {}

    # Sparse deposits, one every 1,200 blocks, alternating a 6- and an 18-decimal token.
    for position in range(20):
        token, decimals = (usdc, 6) if position % 2 == 0 else (usds, 18)
        amount = (position + 1) * 10**decimals + 1
        before = w3.eth.block_number + 1
        (tx_hash,) = send_raw(w3, sign_transfers(w3, token, DEV_BUYER, DEV_TREASURY.address, [amount]))
        _index_transactions(w3, before, index)
        expected[tx_hash] = units_to_nano_usd(amount, decimals)
        mine_blocks(w3, 1_200)

    # One block with 12 deposits, more than the provider returns for any range.
    before = w3.eth.block_number + 1
    tester.disable_auto_mine_transactions()
    dense_amounts = [1_000_000 + offset for offset in range(12)]
    dense = []
    for sender, amount in zip(DENSE_SENDERS, dense_amounts, strict=True):
        dense += send_raw(w3, sign_transfers(w3, usdc, sender, DEV_TREASURY.address, [amount]), wait=False)
    mine_blocks(w3, 1)
    tester.enable_auto_mine_transactions()
    _index_transactions(w3, before, index)
    dense_blocks = {index[bytes.fromhex(tx_hash[2:])] for tx_hash in dense}
    assert len(dense_blocks) == 1, f"the dense transfers landed in blocks {dense_blocks}"
    expected.update((tx_hash, amount * 1_000) for tx_hash, amount in zip(dense, dense_amounts, strict=True))

    mine_blocks(w3, start_block + GAP_BLOCKS + CONFIRMATIONS - w3.eth.block_number)
    return {
        "tester": tester,
        "usdc": usdc,
        "usds": usds,
        "start_block": start_block,
        "expected": expected,
        "dense_block": dense_blocks.pop(),
    }


@pytest.fixture(scope="module")
def gapped_chain() -> Iterator[dict]:
    """The gapped chain, with eth-tester's receipt lookup sped up for the module.

    eth-tester finds a transaction by reading every block back from the head, which costs
    about a second per receipt on this chain. The patch looks the block up in an index first.
    """
    index: dict[bytes, int] = {}
    original = pyevm_backend._get_transaction_by_hash

    def find_indexed(chain, transaction_hash):  # type: ignore[no-untyped-def]
        number = index.get(bytes(transaction_hash))
        if number is not None:
            block = chain.get_canonical_block_by_number(number)
            for position, transaction in enumerate(block.transactions):
                if transaction.hash == transaction_hash:
                    return block, transaction, position
        return original(chain, transaction_hash)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(pyevm_backend, "_get_transaction_by_hash", find_indexed)
        started = time.monotonic()
        chain = _build_gapped_chain(index)
        chain["build_s"] = time.monotonic() - started
        yield chain


def test_capped_provider_25000_block_gap(db, gapped_chain):
    w3 = Web3(EthereumTesterProvider(gapped_chain["tester"]))
    caps = LogCaps(max_block_range=CAP_BLOCKS, max_results=CAP_LOGS)
    w3.middleware_onion.add(capped_logs_middleware(caps))
    chain = chain_settings(
        w3,
        [(gapped_chain["usdc"], 6), (gapped_chain["usds"], 18)],
        confirmations=CONFIRMATIONS,
        max_block_range=10_000,
        start_block=gapped_chain["start_block"],
    )
    for wallet in [DEV_BUYER, *DENSE_SENDERS]:
        bind_wallet(db, chain.chain_id, wallet)
    watcher = DepositWatcher(db, chain, w3)
    head = w3.eth.block_number
    safe = head - CONFIRMATIONS + 1
    assert safe - chain.start_block + 1 >= GAP_BLOCKS

    started = time.monotonic()
    result = watcher.poll_once()
    poll_s = time.monotonic() - started

    expected = {deposit_transfer_id(chain.chain_id, tx_hash, 0): amount for tx_hash, amount in gapped_chain["expected"].items()}
    assert len(expected) == 32
    assert ledger_amounts(db) == expected
    assert [row.status for row in deposit_rows(db)] == ["credited"] * 32
    assert result.credited == 32
    assert result.cursor_block == safe
    # The committed windows cover the gap exactly once, in order, without a hole.
    assert result.windows[0][0] == chain.start_block
    assert result.windows[-1][1] == safe
    assert all(later[0] == earlier[1] + 1 for earlier, later in zip(result.windows, result.windows[1:], strict=False))
    assert all(end - start + 1 <= CAP_BLOCKS for start, end in result.windows)
    # The provider served every other block and rejected both ways; the dense block came from receipts.
    assert caps.range_rejections >= 1
    assert caps.result_rejections >= 1
    assert watcher.fetcher.stats.receipt_fallback_blocks == 1
    assert set(range(chain.start_block, safe + 1)) - caps.covered_blocks() == {gapped_chain["dense_block"]}
    print(
        f"\n25,000-block gap: chain built in {gapped_chain['build_s']:.1f} s, poll {poll_s:.2f} s, "
        f"{len(result.windows)} windows, {watcher.fetcher.stats.requests} eth_getLogs, "
        f"{caps.range_rejections} range and {caps.result_rejections} result rejections, "
        f"{watcher.fetcher.stats.receipt_fallback_blocks} block read from receipts"
    )


@pytest.mark.anvil
@pytest.mark.parametrize("rejection_http_status", [200, 413])
def test_capped_http_proxy_before_anvil(db, anvil_w3, rejection_http_status):
    usdc = deploy_token(anvil_w3, "USDC", 6)
    fund_wallet(anvil_w3, usdc, DEV_BUYER.address, 10**12, 0)
    vault = deploy_vault(anvil_w3, DEV_TREASURY.local_account())
    allow_token(anvil_w3, vault, usdc.address, DEV_TREASURY.local_account())
    chain = chain_settings(anvil_w3, [(usdc, 6)], confirmations=2, max_block_range=500, vault_address=vault.address)
    account_id = bind_wallet(db, chain.chain_id, DEV_BUYER)
    expected = {}
    for position in range(6):
        # 1 to 3 transfers in one block, then a vault deposit, then 60 empty blocks.
        amounts = [1_000_000 * (position + 1) + offset for offset in range(position % 3 + 1)]
        anvil_w3.manager.request_blocking("evm_setAutomine", [False])
        tx_hashes = send_raw(anvil_w3, sign_transfers(anvil_w3, usdc, DEV_BUYER, DEV_TREASURY.address, amounts), wait=False)
        mine_blocks(anvil_w3, 1)
        anvil_w3.manager.request_blocking("evm_setAutomine", [True])
        for tx_hash, amount in zip(tx_hashes, amounts, strict=True):
            log_index = int(anvil_w3.eth.get_transaction_receipt(tx_hash)["logs"][0]["logIndex"])
            expected[deposit_transfer_id(chain.chain_id, tx_hash, log_index)] = amount * 1_000
        receipt = deposit_to_vault(anvil_w3, vault, usdc, DEV_BUYER.private_key, 700_000, account_ref_for(account_id))
        deposited_index = int(receipt["logs"][-1]["logIndex"])
        expected[deposit_transfer_id(chain.chain_id, "0x" + bytes(receipt["transactionHash"]).hex(), deposited_index)] = 700_000_000
        mine_blocks(anvil_w3, 60)
    mine_blocks(anvil_w3, 2)
    caps = LogCaps(max_block_range=40, max_results=2)

    started = time.monotonic()
    with CappedRpcProxy(anvil_w3.provider.endpoint_uri, caps, rejection_http_status=rejection_http_status) as proxy:
        capped = proxy.web3()
        result = DepositWatcher(db, chain, capped).poll_once()
        report = reconcile(db, [(chain, capped)])
    elapsed_s = time.monotonic() - started

    assert ledger_amounts(db) == expected
    assert result.cursor_block == anvil_w3.eth.block_number - 1
    assert all(later[0] == earlier[1] + 1 for earlier, later in zip(result.windows, result.windows[1:], strict=False))
    assert caps.range_rejections >= 1
    assert caps.result_rejections >= 1
    assert report.differences == []
    assert report.chain_deposits_nano_usd == sum(expected.values())
    # web3.py would retry each HTTP 413 five times with backoff; the watcher's connection does not.
    assert elapsed_s < 10

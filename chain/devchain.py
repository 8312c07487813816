"""Development chain support: development-only accounts, a local anvil node and helpers.

Everything here is for development and tests. The mnemonic and the private keys below are
public (they are anvil's defaults), so any funds sent to these addresses on a real chain
can be taken by anyone.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import NamedTuple

from eth_account import Account
from eth_account.signers.local import LocalAccount
from hexbytes import HexBytes
from web3 import EthereumTesterProvider, Web3
from web3.contract import Contract

from chain.contracts import deploy_contract, send_transaction, transact, wait_for_success

logger = logging.getLogger(__name__)

Account.enable_unaudited_hdwallet_features()

# Anvil's default mnemonic. Development only: its keys are published and must never hold value.
DEV_MNEMONIC = "test test test test test test test test test test test junk"
DEV_CHAIN_ID = 31337
ANVIL_HOST = "127.0.0.1"

CONTRACTS_DIR = Path(__file__).resolve().parent.parent / "contracts"
ANVIL_BINARY = CONTRACTS_DIR / "node_modules" / ".bin" / "anvil"

DEV_STABLECOIN_NAME = "Test USD Coin"
DEV_STABLECOIN_SYMBOL = "USDC"
DEV_STABLECOIN_DECIMALS = 6


class DevAccount(NamedTuple):
    """A development-only account derived from ``DEV_MNEMONIC``: (address, private key)."""

    address: str
    private_key: str

    def __repr__(self) -> str:
        # Keeps the private key out of logs, tracebacks and pytest output.
        return f"DevAccount(address={self.address!r}, private_key=<development-only, hidden>)"

    def local_account(self) -> LocalAccount:
        """Return an eth-account signer for this development-only key."""
        return Account.from_key(self.private_key)


def derive_dev_account(index: int) -> DevAccount:
    """Derive development-only account ``index`` from ``DEV_MNEMONIC`` (path m/44'/60'/0'/0/index)."""
    account = Account.from_mnemonic(DEV_MNEMONIC, account_path=f"m/44'/60'/0'/0/{index}")
    return DevAccount(address=account.address, private_key=account.key.to_0x_hex())


# Development-only accounts, at the same indexes as anvil's prefunded accounts.
DEV_DEPLOYER = derive_dev_account(0)  # deploys the test tokens and owns them (mint rights)
DEV_TREASURY = derive_dev_account(1)
DEV_BUYER = derive_dev_account(2)
DEV_SUPPLIER_PAYOUT = derive_dev_account(3)
DEV_ACCOUNTS = {
    "deployer": DEV_DEPLOYER,
    "treasury": DEV_TREASURY,
    "buyer": DEV_BUYER,
    "supplier_payout": DEV_SUPPLIER_PAYOUT,
}


class AnvilNotFoundError(FileNotFoundError):
    """The anvil binary from the contracts/ npm packages is not installed."""


class AnvilStartError(RuntimeError):
    """Anvil exited or did not respond to JSON-RPC before the startup timeout."""


class AnvilExitedError(AnvilStartError):
    """Anvil exited during startup, for example because its port was already in use."""


def find_anvil_binary() -> Path:
    """Return the path of ``contracts/node_modules/.bin/anvil``.

    Raises ``AnvilNotFoundError`` when it is missing. The file is the npm wrapper script, so
    ``node`` must be on ``PATH`` to run it.
    """
    if not ANVIL_BINARY.is_file():
        raise AnvilNotFoundError(
            f"anvil not found at {ANVIL_BINARY}. "
            "Install the pinned chain tools with: npm ci --prefix contracts"
        )
    return ANVIL_BINARY


def pick_free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free when this function checked it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((ANVIL_HOST, 0))
        return probe.getsockname()[1]


# The readiness probe goes straight to 127.0.0.1, never through an HTTP proxy from the environment.
_DIRECT_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _request_chain_id(url: str, timeout: float) -> int:
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []})
    request = urllib.request.Request(
        url, data=body.encode(), headers={"Content-Type": "application/json"}
    )
    with _DIRECT_OPENER.open(request, timeout=timeout) as response:
        return int(json.loads(response.read())["result"], 16)


class AnvilProcess:
    """An anvil node on 127.0.0.1, started as a subprocess with ``DEV_MNEMONIC``.

    The chain id is 31337 and the ten mnemonic accounts start with 10,000 ETH each.
    ``block_time`` is the interval mining period in seconds, and ``None`` mines one block per
    transaction (automine). Anvil's output goes to ``log_path``, a temporary file that
    ``stop()`` removes. A failed start removes it too and quotes its end in the error.
    Use it as a context manager or call ``start()`` and ``stop()``.
    """

    def __init__(
        self,
        port: int = 0,
        block_time: float | None = None,
        startup_timeout: float = 30.0,
    ) -> None:
        if block_time is not None and block_time <= 0:
            raise ValueError(f"invalid block_time {block_time}: expected seconds > 0 or None")
        self.requested_port = port
        self.port = port
        self.block_time = block_time
        self.startup_timeout = startup_timeout
        self.log_path: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """HTTP JSON-RPC endpoint of the node."""
        return f"http://{ANVIL_HOST}:{self.port}"

    def web3(self) -> Web3:
        """Return a Web3 connected to this node over HTTP."""
        return Web3(Web3.HTTPProvider(self.url, request_kwargs={"timeout": 30}))

    def _command(self) -> list[str]:
        command = [
            str(find_anvil_binary()),
            "--host", ANVIL_HOST,
            "--port", str(self.port),
            "--mnemonic", DEV_MNEMONIC,
            "--chain-id", str(DEV_CHAIN_ID),
            "--silent",
        ]
        if self.block_time is not None:
            command += ["--block-time", str(self.block_time)]
        return command

    def start(self) -> AnvilProcess:
        """Start anvil, wait until it responds to ``eth_chainId`` and return self.

        Raises ``AnvilNotFoundError`` when the binary is missing and ``AnvilStartError``
        when anvil exits or does not respond within ``startup_timeout`` seconds. With port 0,
        a start whose picked port was taken in the meantime is retried on a new port.
        """
        if self._process is not None:
            raise RuntimeError(f"anvil is already running at {self.url}")
        attempts = 3 if self.requested_port == 0 else 1
        for attempt in range(1, attempts + 1):
            try:
                self._start_once()
                return self
            except AnvilExitedError as error:
                if attempt == attempts:
                    raise
                logger.warning("anvil start attempt %d failed, retrying on a new port: %s", attempt, error)
        raise AssertionError("unreachable")

    def _start_once(self) -> None:
        self.port = self.requested_port or pick_free_port()
        if self._port_accepts_connections():
            # Without this check, another node on the port could respond to the readiness
            # probe while the new anvil fails to bind.
            raise AnvilStartError(
                f"port {self.port} on {ANVIL_HOST} is already in use. Choose another port or 0"
            )
        command = self._command()
        self._remove_log()
        log_fd, log_name = tempfile.mkstemp(prefix="tokenport-anvil-", suffix=".log")
        self.log_path = Path(log_name)
        with os.fdopen(log_fd, "wb") as log_file:
            # A new session gives anvil its own process group, so stop() can signal both the
            # npm wrapper (node) and the anvil binary it spawns.
            self._process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        logger.info("starting anvil at %s (pid=%d, log=%s)", self.url, self._process.pid, self.log_path)

        try:
            self._wait_until_ready()
        except BaseException:
            # The error message already contains the end of the log.
            self._terminate()
            self._remove_log()
            raise
        logger.info("anvil ready at %s", self.url)

    def _wait_until_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while True:
            exit_code = self._process.poll()
            if exit_code is not None:
                raise AnvilExitedError(
                    f"anvil exited with code {exit_code} before responding at {self.url}. "
                    f"Output: {self._log_tail()!r}"
                )
            try:
                chain_id = _request_chain_id(self.url, timeout=1.0)
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                chain_id = None
            if chain_id is not None and chain_id != DEV_CHAIN_ID:
                raise AnvilStartError(
                    f"node at {self.url} returned chain id {chain_id}, expected {DEV_CHAIN_ID}. "
                    "Another process may be using the port"
                )
            if chain_id == DEV_CHAIN_ID and self._process.poll() is None:
                return
            if time.monotonic() >= deadline:
                raise AnvilStartError(
                    f"anvil did not respond to eth_chainId at {self.url} within "
                    f"{self.startup_timeout} s. Output: {self._log_tail()!r}"
                )
            time.sleep(0.05)

    def _log_tail(self, max_chars: int = 2000) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")[-max_chars:]

    def _terminate(self, timeout: float = 10.0) -> None:
        process = self._process
        if process is None:
            return
        self._signal_group(process, signal.SIGTERM)
        if not self._wait_stopped(process, timeout):
            logger.warning("anvil (pid=%d) still running %s s after SIGTERM, sending SIGKILL", process.pid, timeout)
            self._signal_group(process, signal.SIGKILL)
            if not self._wait_stopped(process, timeout):
                logger.error("anvil (pid=%d) still listens on port %d after SIGKILL", process.pid, self.port)
        self._process = None

    def _wait_stopped(self, process: subprocess.Popen[bytes], timeout: float) -> bool:
        # The npm wrapper (node) exits on SIGTERM without waiting for the anvil binary it
        # spawned, and the orphaned binary is reaped later by init. So the node counts as
        # stopped once the wrapper has exited and nothing accepts connections on the port.
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None and not self._port_accepts_connections():
                return True
            time.sleep(0.02)
        return False

    def _port_accepts_connections(self) -> bool:
        try:
            with socket.create_connection((ANVIL_HOST, self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def _remove_log(self) -> None:
        if self.log_path is not None:
            self.log_path.unlink(missing_ok=True)
            self.log_path = None

    @staticmethod
    def _signal_group(process: subprocess.Popen[bytes], signal_number: int) -> None:
        try:
            os.killpg(process.pid, signal_number)
        except ProcessLookupError:
            pass

    def stop(self) -> None:
        """Stop anvil (SIGTERM, then SIGKILL after 10 s) and remove its log file."""
        if self._process is None:
            return
        pid = self._process.pid
        self._terminate()
        self._remove_log()
        logger.info("stopped anvil at %s (pid=%d)", self.url, pid)

    @property
    def running(self) -> bool:
        """Whether the anvil process was started and has not exited."""
        return self._process is not None and self._process.poll() is None

    def __enter__(self) -> AnvilProcess:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def deploy_dev_stablecoin(w3: Web3) -> Contract:
    """Deploy TestStablecoin("Test USD Coin", "USDC", 6) from ``DEV_DEPLOYER``.

    The transaction is signed locally with the development-only deployer key, so it works
    on any node where that address has enough ETH for gas.
    """
    return deploy_contract(
        w3,
        "TestStablecoin",
        DEV_STABLECOIN_NAME,
        DEV_STABLECOIN_SYMBOL,
        DEV_STABLECOIN_DECIMALS,
        sender=DEV_DEPLOYER.local_account(),
    )


def fund_wallet(w3: Web3, token: Contract, address: str, amount_units: int, eth_wei: int) -> None:
    """Mint ``amount_units`` base units of ``token`` to ``address`` and send it ``eth_wei`` wei.

    Both transactions come from ``DEV_DEPLOYER``, who must own ``token``. A zero amount
    skips that transaction. Waits until each one is mined.
    """
    if amount_units < 0 or eth_wei < 0:
        raise ValueError(f"invalid funding amounts {amount_units}, {eth_wei}: expected >= 0")
    recipient = Web3.to_checksum_address(address)
    deployer = DEV_DEPLOYER.local_account()

    if amount_units > 0:
        transact(w3, token.functions.mint(recipient, amount_units), deployer)
    if eth_wei > 0:
        transaction_hash = send_transaction(w3, {"to": recipient, "value": eth_wei}, deployer)
        wait_for_success(w3, transaction_hash, f"ETH transfer to {recipient}")
    logger.info("funded %s with %d token units and %d wei", recipient, amount_units, eth_wei)


def send_token(
    w3: Web3,
    token: Contract,
    private_key: str,
    to: str,
    amount_units: int,
    wait: bool = True,
) -> HexBytes:
    """Sign and send ``token.transfer(to, amount_units)`` from the key's address.

    Returns the transaction hash. With ``wait`` the call returns after the transfer is
    mined and raises ``TransactionFailedError`` if it reverted. Without it, the caller
    mines or waits.
    """
    sender = Account.from_key(private_key)
    function = token.functions.transfer(Web3.to_checksum_address(to), amount_units)
    transaction = function.build_transaction({"from": sender.address})
    transaction_hash = send_transaction(w3, transaction, sender)
    if wait:
        wait_for_success(w3, transaction_hash, "token transfer")
    return transaction_hash


def mine_blocks(w3: Web3, n: int) -> None:
    """Mine exactly ``n`` blocks on an anvil node or on an in-process eth-tester chain."""
    if n < 0:
        raise ValueError(f"invalid block count {n}: expected >= 0")
    if n == 0:
        return
    if isinstance(w3.provider, EthereumTesterProvider):
        w3.provider.ethereum_tester.mine_blocks(n)
        return
    # anvil_mine takes the block count as a hex quantity, and request_blocking raises on an
    # error response.
    w3.manager.request_blocking("anvil_mine", [hex(n)])

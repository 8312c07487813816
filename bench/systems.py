"""The systems under test: how each one is installed and started, and the request each one gets.

Every system runs as one server process on 127.0.0.1 and relays to the same mock upstream, so
the figures differ only by what each system does per call.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from bench.processes import ManagedProcess, pick_free_port, start_process
from providers.mock_upstream import MOCK_API_KEY

BENCH_DIR = Path(__file__).resolve().parent
LITELLM_VENV = BENCH_DIR / ".venv-litellm"
# litellm 1.106.12 is the newest release whose `proxy` extra installs from PyPI here: from
# 1.108 on it pins litellm-enterprise and litellm-proxy releases that PyPI does not serve.
LITELLM_REQUIREMENT = "litellm[proxy]==1.106.12"
# The Prisma client that LiteLLM's proxy requires when a database URL is set.
PRISMA_REQUIREMENT = "prisma==0.15.0"
PORTKEY_DIR = BENCH_DIR / "portkey"
PORTKEY_SERVER = PORTKEY_DIR / "node_modules" / "@portkey-ai" / "gateway" / "build" / "start-server.js"
LITELLM_MASTER_KEY = "sk-bench-litellm-master"

PROMPT = [{"role": "user", "content": "Say hello to the benchmark"}]
# The mock replies with one token per word, so 16 tokens are 16 stream chunks.
MAX_TOKENS = 16


@dataclass
class Target:
    """One running system: where to send a call, with which headers and model name."""

    name: str
    url: str
    model: str
    headers: dict[str, str]
    process: ManagedProcess | None = None
    notes: list[str] = field(default_factory=list)

    def body(self, stream: bool) -> dict:
        body: dict = {"model": self.model, "messages": PROMPT, "max_tokens": MAX_TOKENS}
        if stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        return body

    @property
    def endpoint(self) -> str:
        return self.url + "/v1/chat/completions"

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()


def uvicorn_command(app: str, port: int, *, factory: bool) -> list[str]:
    command = [sys.executable, "-m", "uvicorn", app, "--host", "127.0.0.1", "--port", str(port)]
    command += ["--workers", "1", "--loop", "uvloop", "--http", "httptools", "--no-access-log", "--log-level", "warning"]
    return command + (["--factory"] if factory else [])


def start_mock_upstream(log_dir: Path) -> ManagedProcess:
    port = pick_free_port()
    command = [sys.executable, "-m", "providers.mock_upstream", "--host", "127.0.0.1", "--port", str(port)]
    return start_process("mock-upstream", command, port=port, log_dir=log_dir, ready_path="/_mock/stats")


def direct_target(mock: ManagedProcess) -> Target:
    return Target("floor (mock direct)", mock.url, "mock-1", {"Authorization": f"Bearer {MOCK_API_KEY}"})


def start_passthrough(mock: ManagedProcess, log_dir: Path, client: str = "aiohttp") -> Target:
    port = pick_free_port()
    env = {"BENCH_UPSTREAM_URL": mock.url + "/v1", "BENCH_PASSTHROUGH_CLIENT": client}
    process = start_process(
        f"passthrough-{client}", uvicorn_command("bench.passthrough:create_app", port, factory=True), port=port, log_dir=log_dir, env=env
    )
    name = "pass-through" if client == "aiohttp" else f"pass-through ({client})"
    return Target(name, process.url, "mock-1", {"Authorization": f"Bearer {MOCK_API_KEY}"}, process)


def start_tokenport(database_url: str, api_key: str, log_dir: Path, redis_url: str, extra_env: dict[str, str] | None = None) -> Target:
    port = pick_free_port()
    env = {
        "TOKENPORT_MODE": "development",
        "TOKENPORT_DATABASE_URL": database_url,
        "TOKENPORT_REDIS_URL": redis_url,
        "TOKENPORT_REDIS_KEY_PREFIX": "tokenport-bench",
        **(extra_env or {}),
    }
    process = start_process(
        "tokenport", uvicorn_command("marketplace.api.app:create_app", port, factory=True), port=port, log_dir=log_dir, env=env, ready_path="/health"
    )
    return Target("Tokenport", process.url, "deepseek/deepseek-chat", {"Authorization": f"Bearer {api_key}"}, process)


# LiteLLM -------------------------------------------------------------------------------------


def install_litellm(log_dir: Path) -> Path:
    """Create bench/.venv-litellm with the pinned LiteLLM proxy, once; return its `litellm` command."""
    marker = LITELLM_VENV / ".installed"
    expected = f"{LITELLM_REQUIREMENT} {PRISMA_REQUIREMENT}"
    if not (marker.is_file() and marker.read_text() == expected):
        with open(log_dir / "litellm-install.log", "w") as log:
            subprocess.run([sys.executable, "-m", "venv", str(LITELLM_VENV)], check=True, stdout=log, stderr=subprocess.STDOUT)
            pip = [str(LITELLM_VENV / "bin" / "python"), "-m", "pip", "install", "--quiet"]
            subprocess.run([*pip, LITELLM_REQUIREMENT, PRISMA_REQUIREMENT], check=True, stdout=log, stderr=subprocess.STDOUT)
        marker.write_text(expected)
    return LITELLM_VENV / "bin" / "litellm"


def _litellm_config(mock: ManagedProcess, database_url: str | None) -> str:
    general: dict = {"master_key": LITELLM_MASTER_KEY}
    if database_url is not None:
        general["database_url"] = database_url
    config = {
        "model_list": [
            {
                "model_name": "mock-1",
                "litellm_params": {"model": "openai/mock-1", "api_base": mock.url + "/v1", "api_key": MOCK_API_KEY},
            }
        ],
        "general_settings": general,
        "litellm_settings": {"telemetry": False},
    }
    # JSON is valid YAML, and LiteLLM reads its config with a YAML parser.
    return json.dumps(config, indent=2)


def start_litellm(mock: ManagedProcess, log_dir: Path, litellm: Path, database_url: str | None) -> Target:
    port = pick_free_port()
    config_path = log_dir / "litellm-config.yaml"
    config_path.write_text(_litellm_config(mock, database_url))
    command = [str(litellm), "--config", str(config_path), "--host", "127.0.0.1", "--port", str(port), "--num_workers", "1"]
    env = {
        # The cost map ships inside the package; without this LiteLLM fetches it at start.
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "LITELLM_LOG": "ERROR",
        "PATH": f"{LITELLM_VENV / 'bin'}:/usr/local/bin:/usr/bin:/bin",
        "VIRTUAL_ENV": str(LITELLM_VENV),
    }
    process = start_process("litellm", command, port=port, log_dir=log_dir, env=env, ready_path="/health/liveliness", start_timeout_s=180)
    return Target("LiteLLM", process.url, "mock-1", {"Authorization": f"Bearer {LITELLM_MASTER_KEY}"}, process)


# Portkey -------------------------------------------------------------------------------------


def install_portkey(log_dir: Path) -> Path:
    """Install the pinned gateway from bench/portkey/package-lock.json, once."""
    marker = PORTKEY_DIR / "node_modules" / ".installed"
    lock = (PORTKEY_DIR / "package-lock.json").read_text()
    if not (marker.is_file() and marker.read_text() == lock):
        with open(log_dir / "portkey-install.log", "w") as log:
            subprocess.run(
                ["npm", "ci", "--no-audit", "--no-fund"], cwd=PORTKEY_DIR, check=True, stdout=log, stderr=subprocess.STDOUT
            )
        marker.write_text(lock)
    return PORTKEY_SERVER


def start_portkey(mock: ManagedProcess, log_dir: Path, server: Path) -> Target:
    port = pick_free_port()
    command = ["node", str(server), f"--port={port}", "--headless"]
    process = start_process("portkey", command, port=port, log_dir=log_dir, env={"NODE_ENV": "production"}, ready_path="/")
    headers = {
        "Authorization": f"Bearer {MOCK_API_KEY}",
        "x-portkey-provider": "openai",
        "x-portkey-custom-host": mock.url + "/v1",
    }
    return Target("Portkey", process.url, "mock-1", headers, process)

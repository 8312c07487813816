"""Static checks of docker/Dockerfile, docker/compose.yaml and .dockerignore.

The tests parse the files and compare them with the repository, so they need no Docker
engine. A renamed path, a misspelled service or an invalid TOKENPORT_CHAINS value fails here
before any image build.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
from pathlib import Path, PurePosixPath

import pytest
from cryptography.fernet import Fernet

# PyYAML is installed with uvicorn[standard], a runtime dependency in pyproject.toml.
import yaml

from marketplace.settings import Settings

REPO_ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = REPO_ROOT / "docker" / "Dockerfile"
COMPOSE_FILE = REPO_ROOT / "docker" / "compose.yaml"
DOCKERIGNORE = REPO_ROOT / ".dockerignore"

DEV_USDC_ADDRESS = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
DEV_TREASURY_ADDRESS = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
DEV_MNEMONIC = "test test test test test test test test test test test junk"

EXPECTED_COMMANDS = {
    "anvil": [
        "contracts/node_modules/.bin/anvil",
        "--host", "0.0.0.0",
        "--port", "8545",
        "--chain-id", "31337",
        "--mnemonic", DEV_MNEMONIC,
        "--block-time", "1",
    ],
    "chain-setup": ["tokenport", "setup-devchain", "--rpc-url", "http://anvil:8545"],
    "migrate": ["tokenport", "migrate"],
    "api": ["tokenport", "serve", "--host", "0.0.0.0", "--port", "8000"],
    "worker": ["celery", "-A", "marketplace.celery_app", "worker", "--loglevel=INFO"],
    "beat": ["celery", "-A", "marketplace.celery_app", "beat", "--loglevel=INFO"],
}
APP_SERVICES = sorted(EXPECTED_COMMANDS)
ALL_SERVICES = sorted(["postgres", "redis", *APP_SERVICES])

# Compose's ${NAME:-default} interpolation.
INTERPOLATION = re.compile(r"\$\{(?P<name>[A-Z0-9_]+):-(?P<default>[^}]*)\}")


def load_compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))


def compose_environment() -> dict[str, str]:
    """Return the shared x-env block with each ${NAME:-default} replaced by its default."""
    environment = load_compose()["x-env"]
    return {name: INTERPOLATION.sub(lambda match: match["default"], str(value)) for name, value in environment.items()}


def dockerfile_instructions() -> list[tuple[str, str]]:
    """Parse the Dockerfile into (INSTRUCTION, arguments) pairs, joining continued lines."""
    instructions = []
    pending = ""
    for line in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        instruction = pending + stripped
        pending = ""
        keyword, _, arguments = instruction.partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
    assert not pending, "the Dockerfile ends inside a continued line"
    return instructions


def copy_instructions() -> list[tuple[dict[str, str], list[str], str]]:
    """Return each COPY as (flags, sources, destination)."""
    copies = []
    for keyword, arguments in dockerfile_instructions():
        if keyword != "COPY":
            continue
        words = json.loads(arguments) if arguments.startswith("[") else shlex.split(arguments)
        flags = {}
        while words and words[0].startswith("--"):
            name, _, value = words.pop(0)[2:].partition("=")
            flags[name] = value
        assert len(words) >= 2, f"COPY needs a source and a destination: {arguments}"
        copies.append((flags, words[:-1], words[-1]))
    return copies


def dockerignore_patterns() -> list[str]:
    patterns = []
    for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines():
        pattern = line.strip()
        if pattern and not pattern.startswith("#"):
            patterns.append(pattern.lstrip("/"))
    return patterns


def is_dockerignored(path: str, patterns: list[str]) -> bool:
    """Check whether a context path, or a folder that contains it, matches a pattern.

    Covers the pattern forms .dockerignore uses here: plain paths, globs and a leading
    `**/` for any depth. Exception patterns (`!`) are not supported.
    """
    parts = PurePosixPath(path).parts
    prefixes = ["/".join(parts[: end + 1]) for end in range(len(parts))]
    for pattern in patterns:
        assert not pattern.startswith("!"), f"exception patterns are not supported here: {pattern}"
        for prefix in prefixes:
            if fnmatch.fnmatchcase(prefix, pattern):
                return True
            if pattern.startswith("**/") and fnmatch.fnmatchcase(PurePosixPath(prefix).name, pattern[3:]):
                return True
    return False


def test_compose_defines_all_services():
    assert sorted(load_compose()["services"]) == ALL_SERVICES


@pytest.mark.parametrize("service", APP_SERVICES)
def test_compose_service_command(service: str):
    assert load_compose()["services"][service]["command"] == EXPECTED_COMMANDS[service]


@pytest.mark.parametrize("service", APP_SERVICES)
def test_compose_service_uses_image(service: str):
    definition = load_compose()["services"][service]

    assert definition["build"] == {"context": "..", "dockerfile": "docker/Dockerfile"}
    assert definition["image"] == "tokenport:dev"
    assert definition["environment"] == load_compose()["x-env"]


def test_compose_build_file_exists():
    build = load_compose()["services"]["api"]["build"]
    context = (COMPOSE_FILE.parent / build["context"]).resolve()

    assert context == REPO_ROOT
    assert (context / build["dockerfile"]).is_file()


def test_compose_dependencies_are_defined():
    services = load_compose()["services"]
    for name, definition in services.items():
        for dependency in definition.get("depends_on", {}):
            assert dependency in services, f"{name} depends on undefined service {dependency}"


def test_compose_healthy_dependencies_have_healthchecks():
    services = load_compose()["services"]
    for name, definition in services.items():
        for dependency, condition in definition.get("depends_on", {}).items():
            if condition["condition"] == "service_healthy":
                assert "healthcheck" in services[dependency], f"{name} waits for {dependency}, which has no healthcheck"


def test_compose_api_waits_for_setup():
    depends_on = load_compose()["services"]["api"]["depends_on"]

    assert depends_on["migrate"] == {"condition": "service_completed_successfully"}
    assert depends_on["chain-setup"] == {"condition": "service_completed_successfully"}


def test_compose_chain_setup_waits_for_anvil():
    depends_on = load_compose()["services"]["chain-setup"]["depends_on"]

    assert depends_on == {"anvil": {"condition": "service_healthy"}}


def test_compose_ports_bind_loopback():
    services = load_compose()["services"]

    assert services["api"]["ports"] == ["127.0.0.1:8000:8000"]
    for name, definition in services.items():
        for port in definition.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} on every interface"


@pytest.mark.parametrize("service", ["anvil", "api"])
def test_compose_python_healthcheck_compiles(service: str):
    test = load_compose()["services"][service]["healthcheck"]["test"]

    assert test[:3] == ["CMD", "python", "-c"]
    compile(test[3], f"{service} healthcheck", "exec")


def test_compose_chains_parse_into_settings(monkeypatch: pytest.MonkeyPatch):
    for name, value in compose_environment().items():
        monkeypatch.setenv(name, value)

    settings = Settings()

    assert settings.mode == "production"
    assert settings.database_url == "postgresql://tokenport:tokenport@postgres:5432/tokenport"
    assert settings.redis_url == "redis://redis:6379/0"
    assert settings.siwe_domain == "127.0.0.1:8000"
    assert settings.siwe_uri == "http://127.0.0.1:8000"
    assert len(settings.chains) == 1
    chain = settings.chain(31337)
    assert chain.name == "anvil"
    assert chain.rpc_url == "http://anvil:8545"
    assert chain.treasury_address == DEV_TREASURY_ADDRESS
    assert chain.confirmations == 3
    assert [(token.symbol, token.address, token.decimals) for token in chain.tokens] == [("USDC", DEV_USDC_ADDRESS, 6)]


def test_compose_example_credential_key_is_fernet():
    Fernet(compose_environment()["TOKENPORT_CREDENTIAL_KEY"].encode())


def test_compose_credential_key_is_overridable():
    value = load_compose()["x-env"]["TOKENPORT_CREDENTIAL_KEY"]

    assert INTERPOLATION.fullmatch(value)["name"] == "TOKENPORT_CREDENTIAL_KEY"


def test_dockerfile_cmd_runs_serve():
    commands = [arguments for keyword, arguments in dockerfile_instructions() if keyword == "CMD"]

    assert json.loads(commands[-1]) == ["tokenport", "serve", "--host", "0.0.0.0", "--port", "8000"]


def test_dockerfile_runs_as_non_root():
    users = [arguments for keyword, arguments in dockerfile_instructions() if keyword == "USER"]

    assert users
    assert users[-1] not in ("root", "0")


def test_dockerfile_installs_without_extras():
    runs = [arguments for keyword, arguments in dockerfile_instructions() if keyword == "RUN"]

    assert any(re.search(r"\bpip install \.(\s|$)", run) for run in runs)
    assert not any(re.search(r"pip install [^&]*\.\[", run) for run in runs)


def test_dockerfile_copy_sources_exist():
    copies = [(flags, sources) for flags, sources, _ in copy_instructions() if "from" not in flags]

    assert copies
    for _, sources in copies:
        for source in sources:
            assert (REPO_ROOT / source).exists(), f"COPY source {source} is missing from the repository"


def test_dockerfile_copy_sources_not_ignored():
    patterns = dockerignore_patterns()
    for flags, sources, _ in copy_instructions():
        if "from" in flags:
            continue
        for source in sources:
            assert not is_dockerignored(source, patterns), f"COPY source {source} is excluded by .dockerignore"


def test_dockerfile_ships_anvil_for_compose():
    # The anvil service runs its command relative to the image's WORKDIR.
    workdirs = [arguments for keyword, arguments in dockerfile_instructions() if keyword == "WORKDIR"]
    destinations = [destination for _, _, destination in copy_instructions()]
    anvil_path = load_compose()["services"]["anvil"]["command"][0]

    assert str(PurePosixPath(workdirs[-1]) / anvil_path) in destinations


@pytest.mark.parametrize("path", [".venv", ".git", ".tokenport", "contracts/node_modules", "marketplace/__pycache__", ".pytest_cache"])
def test_dockerignore_excludes(path: str):
    assert is_dockerignored(path, dockerignore_patterns())

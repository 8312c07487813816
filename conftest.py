# Shared pytest fixtures live in tests/fixtures_*.py, one module per area.
pytest_plugins = [
    "tests.fixtures_chain",
    "tests.fixtures_providers",
    "tests.fixtures_app",
]

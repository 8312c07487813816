"""Fixtures for the chain: eth-tester in process and anvil from contracts/node_modules."""

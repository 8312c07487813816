"""Settlement anchoring: each period's balances and records, committed on-chain as Merkle roots.

The modules an auditor runs never import the database layer: `encoding`, `leaves`, `tree`,
`export`, `proof`, `chain_checks`, `verify` and `report`. So the verifier needs only an export
file and an RPC URL. `period` closes and commits a period from the ledger, `store` keeps its
leaves and tree nodes for proofs and exports, and `audit` serves them to the API.
docs/settlement.md documents the encodings and the export format.
"""

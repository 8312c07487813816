"""Settlement anchoring: each period's balances and records, committed on-chain as Merkle roots.

The pure modules (encoding, leaves, tree, export, proof, chain_checks, verify) never import the
database layer, so an auditor can run the verifier with only an export file and an RPC URL.
`period` closes a period from the database and `proofs` serves stored proofs.
"""

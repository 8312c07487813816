"""initial schema

Revision ID: 0001
Revises: 
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('accounts',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_table('auth_nonces',
    sa.Column('nonce', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('used_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('nonce')
    )
    op.create_table('chain_cursors',
    sa.Column('chain_id', sa.BigInteger(), nullable=False),
    sa.Column('last_block', sa.BigInteger(), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('last_block_hash', sa.String(length=66), nullable=True),
    sa.Column('head_block', sa.BigInteger(), nullable=True),
    sa.Column('safe_block', sa.BigInteger(), nullable=True),
    sa.PrimaryKeyConstraint('chain_id')
    )
    op.create_table('settlement_periods',
    sa.Column('period_id', sa.BigInteger(), autoincrement=False, nullable=False),
    sa.Column('chain_id', sa.BigInteger(), nullable=False),
    sa.Column('registry_address', sa.String(length=42), nullable=False),
    sa.Column('from_timestamp', sa.BigInteger(), nullable=False),
    sa.Column('to_timestamp', sa.BigInteger(), nullable=False),
    sa.Column('previous_ledger_root', sa.String(length=66), nullable=False),
    sa.Column('ledger_root', sa.String(length=66), nullable=False),
    sa.Column('balances_root', sa.String(length=66), nullable=False),
    sa.Column('records_root', sa.String(length=66), nullable=False),
    sa.Column('total_liabilities_nano_usd', sa.BigInteger(), nullable=False),
    sa.Column('total_buyer_liabilities_nano_usd', sa.BigInteger(), nullable=False),
    sa.Column('total_supplier_liabilities_nano_usd', sa.BigInteger(), nullable=False),
    sa.Column('total_usage_nano_usd', sa.BigInteger(), nullable=False),
    sa.Column('total_deposits_nano_usd', sa.BigInteger(), nullable=False),
    sa.Column('total_payouts_nano_usd', sa.BigInteger(), nullable=False),
    sa.Column('record_count', sa.BigInteger(), nullable=False),
    sa.Column('balance_count', sa.BigInteger(), nullable=False),
    sa.Column('reserve_sources', sa.JSON(), nullable=False),
    sa.Column('status', sa.String(length=10), nullable=False),
    sa.Column('commit_tx_hash', sa.String(length=66), nullable=True),
    sa.Column('commit_block_number', sa.BigInteger(), nullable=True),
    sa.Column('export_sha256', sa.String(length=64), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('committed_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('period_id'),
    sa.UniqueConstraint('to_timestamp')
    )
    op.create_table('signer_nonces',
    sa.Column('chain_id', sa.BigInteger(), nullable=False),
    sa.Column('address', sa.String(length=42), nullable=False),
    sa.Column('next_nonce', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('chain_id', 'address')
    )
    op.create_table('api_keys',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('account_id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('key_prefix', sa.String(length=16), nullable=False),
    sa.Column('key_hash', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('revoked_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('spend_limit_nano_usd', sa.BigInteger(), nullable=True),
    sa.Column('spend_limit_period', sa.String(length=10), nullable=True),
    sa.Column('requests_per_minute', sa.Integer(), nullable=True),
    sa.Column('tokens_per_minute', sa.Integer(), nullable=True),
    sa.Column('allowed_models', sa.JSON(), nullable=True),
    sa.ForeignKeyConstraint(['account_id'], ['accounts.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('key_hash')
    )
    with op.batch_alter_table('api_keys', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_api_keys_account_id'), ['account_id'], unique=False)

    op.create_table('deposits',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('chain_id', sa.BigInteger(), nullable=False),
    sa.Column('tx_hash', sa.String(length=66), nullable=False),
    sa.Column('log_index', sa.Integer(), nullable=False),
    sa.Column('block_number', sa.BigInteger(), nullable=False),
    sa.Column('block_hash', sa.String(length=66), nullable=False),
    sa.Column('token_address', sa.String(length=42), nullable=False),
    sa.Column('from_address', sa.String(length=42), nullable=False),
    sa.Column('to_address', sa.String(length=42), nullable=False),
    sa.Column('amount_units', sa.String(length=80), nullable=False),
    sa.Column('amount_nano_usd', sa.BigInteger(), nullable=False),
    sa.Column('account_id', sa.Integer(), nullable=True),
    sa.Column('status', sa.String(length=15), nullable=False),
    sa.Column('transfer_id', sa.String(length=160), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('source', sa.String(length=10), nullable=False),
    sa.Column('account_ref', sa.String(length=66), nullable=True),
    sa.Column('reversal_count', sa.Integer(), nullable=False),
    sa.Column('shortfall_nano_usd', sa.BigInteger(), nullable=False),
    sa.Column('credited_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('reversed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('status_reason', sa.String(length=300), nullable=True),
    sa.ForeignKeyConstraint(['account_id'], ['accounts.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('chain_id', 'tx_hash', 'log_index', name='uq_deposit_log')
    )
    with op.batch_alter_table('deposits', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_deposits_account_id'), ['account_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_deposits_from_address'), ['from_address'], unique=False)

    op.create_table('ledger_accounts',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=120), nullable=False),
    sa.Column('code', sa.String(length=30), nullable=False),
    sa.Column('account_id', sa.Integer(), nullable=True),
    sa.Column('debits_must_not_exceed_credits', sa.Boolean(), nullable=False),
    sa.Column('debits_pending_nano_usd', sa.BigInteger(), nullable=False),
    sa.Column('debits_posted_nano_usd', sa.BigInteger(), nullable=False),
    sa.Column('credits_pending_nano_usd', sa.BigInteger(), nullable=False),
    sa.Column('credits_posted_nano_usd', sa.BigInteger(), nullable=False),
    sa.CheckConstraint('NOT debits_must_not_exceed_credits OR debits_posted_nano_usd + debits_pending_nano_usd <= credits_posted_nano_usd', name='constrained_balance_nonnegative'),
    sa.ForeignKeyConstraint(['account_id'], ['accounts.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('name')
    )
    with op.batch_alter_table('ledger_accounts', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_ledger_accounts_account_id'), ['account_id'], unique=False)

    op.create_table('session_tokens',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('account_id', sa.Integer(), nullable=False),
    sa.Column('token_hash', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['account_id'], ['accounts.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('token_hash')
    )
    with op.batch_alter_table('session_tokens', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_session_tokens_account_id'), ['account_id'], unique=False)

    op.create_table('settlement_leaves',
    sa.Column('period_id', sa.BigInteger(), nullable=False),
    sa.Column('tree', sa.String(length=10), nullable=False),
    sa.Column('leaf_index', sa.BigInteger(), autoincrement=False, nullable=False),
    sa.Column('kind', sa.String(length=20), nullable=False),
    sa.Column('record_key', sa.String(length=200), nullable=False),
    sa.Column('owner_account_id', sa.Integer(), nullable=True),
    sa.Column('fields', sa.JSON(), nullable=False),
    sa.Column('leaf_hash', sa.String(length=66), nullable=False),
    sa.ForeignKeyConstraint(['period_id'], ['settlement_periods.period_id'], ),
    sa.PrimaryKeyConstraint('period_id', 'tree', 'leaf_index')
    )
    with op.batch_alter_table('settlement_leaves', schema=None) as batch_op:
        batch_op.create_index('ix_settlement_leaves_owner', ['period_id', 'owner_account_id', 'tree', 'leaf_index'], unique=False)

    op.create_table('settlement_tree_chunks',
    sa.Column('period_id', sa.BigInteger(), nullable=False),
    sa.Column('tree', sa.String(length=10), nullable=False),
    sa.Column('level', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('chunk_index', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('hashes', sa.LargeBinary(), nullable=False),
    sa.Column('sums', sa.LargeBinary(), nullable=True),
    sa.ForeignKeyConstraint(['period_id'], ['settlement_periods.period_id'], ),
    sa.PrimaryKeyConstraint('period_id', 'tree', 'level', 'chunk_index')
    )
    op.create_table('suppliers',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('account_id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('payout_address', sa.String(length=42), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['account_id'], ['accounts.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('account_id')
    )
    op.create_table('wallets',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('account_id', sa.Integer(), nullable=False),
    sa.Column('address', sa.String(length=42), nullable=False),
    sa.Column('verified_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['account_id'], ['accounts.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('address')
    )
    with op.batch_alter_table('wallets', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_wallets_account_id'), ['account_id'], unique=False)

    op.create_table('api_key_spend',
    sa.Column('api_key_id', sa.Integer(), nullable=False),
    sa.Column('period', sa.String(length=20), nullable=False),
    sa.Column('reserved_nano_usd', sa.BigInteger(), nullable=False),
    sa.Column('spent_nano_usd', sa.BigInteger(), nullable=False),
    sa.CheckConstraint('reserved_nano_usd >= 0', name='reserved_nonnegative'),
    sa.CheckConstraint('spent_nano_usd >= 0', name='spent_nonnegative'),
    sa.ForeignKeyConstraint(['api_key_id'], ['api_keys.id'], ),
    sa.PrimaryKeyConstraint('api_key_id', 'period')
    )
    op.create_table('ledger_transfers',
    sa.Column('id', sa.String(length=160), nullable=False),
    sa.Column('debit_account_id', sa.Integer(), nullable=False),
    sa.Column('credit_account_id', sa.Integer(), nullable=False),
    sa.Column('amount_nano_usd', sa.BigInteger(), nullable=False),
    sa.Column('code', sa.String(length=30), nullable=False),
    sa.Column('is_pending', sa.Boolean(), nullable=False),
    sa.Column('pending_id', sa.String(length=160), nullable=True),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('reference', sa.String(length=200), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint('amount_nano_usd >= 0', name='amount_nonnegative'),
    sa.ForeignKeyConstraint(['credit_account_id'], ['ledger_accounts.id'], ),
    sa.ForeignKeyConstraint(['debit_account_id'], ['ledger_accounts.id'], ),
    sa.ForeignKeyConstraint(['pending_id'], ['ledger_transfers.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('pending_id')
    )
    with op.batch_alter_table('ledger_transfers', schema=None) as batch_op:
        batch_op.create_index('ix_ledger_transfers_created_at', ['created_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_ledger_transfers_credit_account_id'), ['credit_account_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_ledger_transfers_debit_account_id'), ['debit_account_id'], unique=False)
        batch_op.create_index('ix_ledger_transfers_pending_open', ['is_pending', 'expires_at'], unique=False)

    op.create_table('listings',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('supplier_id', sa.Integer(), nullable=False),
    sa.Column('model', sa.String(length=200), nullable=False),
    sa.Column('upstream_protocol', sa.String(length=30), nullable=False),
    sa.Column('upstream_base_url', sa.String(length=500), nullable=False),
    sa.Column('upstream_model', sa.String(length=200), nullable=False),
    sa.Column('upstream_credential_encrypted', sa.Text(), nullable=False),
    sa.Column('list_input_micro_usd_per_mtok', sa.BigInteger(), nullable=False),
    sa.Column('list_output_micro_usd_per_mtok', sa.BigInteger(), nullable=False),
    sa.Column('offer_input_micro_usd_per_mtok', sa.BigInteger(), nullable=False),
    sa.Column('offer_cached_input_micro_usd_per_mtok', sa.BigInteger(), nullable=False),
    sa.Column('offer_cache_write_micro_usd_per_mtok', sa.BigInteger(), nullable=False),
    sa.Column('offer_output_micro_usd_per_mtok', sa.BigInteger(), nullable=False),
    sa.Column('max_output_tokens', sa.Integer(), nullable=True),
    sa.Column('requests_per_minute', sa.Integer(), nullable=True),
    sa.Column('tokens_per_minute', sa.Integer(), nullable=True),
    sa.Column('tokens_per_day', sa.BigInteger(), nullable=True),
    sa.Column('region', sa.String(length=40), nullable=True),
    sa.Column('status', sa.String(length=10), nullable=False),
    sa.Column('paused_reason', sa.String(length=300), nullable=True),
    sa.Column('paused_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint('offer_input_micro_usd_per_mtok >= 0', name='offer_input_nonnegative'),
    sa.CheckConstraint('offer_output_micro_usd_per_mtok >= 0', name='offer_output_nonnegative'),
    sa.ForeignKeyConstraint(['supplier_id'], ['suppliers.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('listings', schema=None) as batch_op:
        batch_op.create_index('ix_listings_model_status', ['model', 'status'], unique=False)
        batch_op.create_index(batch_op.f('ix_listings_supplier_id'), ['supplier_id'], unique=False)

    op.create_table('payouts',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('supplier_id', sa.Integer(), nullable=False),
    sa.Column('chain_id', sa.BigInteger(), nullable=False),
    sa.Column('token_address', sa.String(length=42), nullable=False),
    sa.Column('to_address', sa.String(length=42), nullable=False),
    sa.Column('amount_units', sa.String(length=80), nullable=False),
    sa.Column('amount_nano_usd', sa.BigInteger(), nullable=False),
    sa.Column('status', sa.String(length=15), nullable=False),
    sa.Column('nonce', sa.BigInteger(), nullable=True),
    sa.Column('failed_attempts', sa.Integer(), nullable=False),
    sa.Column('tx_hash', sa.String(length=66), nullable=True),
    sa.Column('block_number', sa.BigInteger(), nullable=True),
    sa.Column('block_hash', sa.String(length=66), nullable=True),
    sa.Column('transfer_id', sa.String(length=160), nullable=True),
    sa.Column('error', sa.String(length=500), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('confirmed_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['supplier_id'], ['suppliers.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('tx_hash')
    )
    with op.batch_alter_table('payouts', schema=None) as batch_op:
        batch_op.create_index('ix_payouts_chain_status', ['chain_id', 'status'], unique=False)
        batch_op.create_index(batch_op.f('ix_payouts_supplier_id'), ['supplier_id'], unique=False)

    op.create_table('generations',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('account_id', sa.Integer(), nullable=False),
    sa.Column('api_key_id', sa.Integer(), nullable=False),
    sa.Column('listing_id', sa.Integer(), nullable=True),
    sa.Column('model', sa.String(length=200), nullable=False),
    sa.Column('stream', sa.Boolean(), nullable=False),
    sa.Column('status', sa.String(length=20), nullable=False),
    sa.Column('prompt_tokens', sa.Integer(), nullable=False),
    sa.Column('completion_tokens', sa.Integer(), nullable=False),
    sa.Column('cached_prompt_tokens', sa.Integer(), nullable=False),
    sa.Column('cache_write_tokens', sa.Integer(), nullable=False),
    sa.Column('reasoning_tokens', sa.Integer(), nullable=False),
    sa.Column('usage_estimated', sa.Boolean(), nullable=False),
    sa.Column('hold_nano_usd', sa.BigInteger(), nullable=False),
    sa.Column('cost_nano_usd', sa.BigInteger(), nullable=False),
    sa.Column('hold_transfer_id', sa.String(length=160), nullable=True),
    sa.Column('spend_period', sa.String(length=20), nullable=True),
    sa.Column('latency_ms', sa.Integer(), nullable=True),
    sa.Column('error', sa.String(length=500), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['account_id'], ['accounts.id'], ),
    sa.ForeignKeyConstraint(['api_key_id'], ['api_keys.id'], ),
    sa.ForeignKeyConstraint(['listing_id'], ['listings.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('generations', schema=None) as batch_op:
        batch_op.create_index('ix_generations_account_created', ['account_id', 'created_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_generations_api_key_id'), ['api_key_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_generations_hold_transfer_id'), ['hold_transfer_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_generations_listing_id'), ['listing_id'], unique=False)

    op.create_table('payout_attempts',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('payout_id', sa.Integer(), nullable=False),
    sa.Column('nonce', sa.BigInteger(), nullable=False),
    sa.Column('tx_hash', sa.String(length=66), nullable=False),
    sa.Column('raw_transaction', sa.Text(), nullable=False),
    sa.Column('max_fee_per_gas_wei', sa.String(length=80), nullable=False),
    sa.Column('max_priority_fee_per_gas_wei', sa.String(length=80), nullable=False),
    sa.Column('status', sa.String(length=15), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('broadcast_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['payout_id'], ['payouts.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('tx_hash')
    )
    with op.batch_alter_table('payout_attempts', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_payout_attempts_payout_id'), ['payout_id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('payout_attempts', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_payout_attempts_payout_id'))

    op.drop_table('payout_attempts')
    with op.batch_alter_table('generations', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_generations_listing_id'))
        batch_op.drop_index(batch_op.f('ix_generations_hold_transfer_id'))
        batch_op.drop_index(batch_op.f('ix_generations_api_key_id'))
        batch_op.drop_index('ix_generations_account_created')

    op.drop_table('generations')
    with op.batch_alter_table('payouts', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_payouts_supplier_id'))
        batch_op.drop_index('ix_payouts_chain_status')

    op.drop_table('payouts')
    with op.batch_alter_table('listings', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_listings_supplier_id'))
        batch_op.drop_index('ix_listings_model_status')

    op.drop_table('listings')
    with op.batch_alter_table('ledger_transfers', schema=None) as batch_op:
        batch_op.drop_index('ix_ledger_transfers_pending_open')
        batch_op.drop_index(batch_op.f('ix_ledger_transfers_debit_account_id'))
        batch_op.drop_index(batch_op.f('ix_ledger_transfers_credit_account_id'))
        batch_op.drop_index('ix_ledger_transfers_created_at')

    op.drop_table('ledger_transfers')
    op.drop_table('api_key_spend')
    with op.batch_alter_table('wallets', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_wallets_account_id'))

    op.drop_table('wallets')
    op.drop_table('suppliers')
    op.drop_table('settlement_tree_chunks')
    with op.batch_alter_table('settlement_leaves', schema=None) as batch_op:
        batch_op.drop_index('ix_settlement_leaves_owner')

    op.drop_table('settlement_leaves')
    with op.batch_alter_table('session_tokens', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_session_tokens_account_id'))

    op.drop_table('session_tokens')
    with op.batch_alter_table('ledger_accounts', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_ledger_accounts_account_id'))

    op.drop_table('ledger_accounts')
    with op.batch_alter_table('deposits', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_deposits_from_address'))
        batch_op.drop_index(batch_op.f('ix_deposits_account_id'))

    op.drop_table('deposits')
    with op.batch_alter_table('api_keys', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_api_keys_account_id'))

    op.drop_table('api_keys')
    op.drop_table('signer_nonces')
    op.drop_table('settlement_periods')
    op.drop_table('chain_cursors')
    op.drop_table('auth_nonces')
    op.drop_table('accounts')

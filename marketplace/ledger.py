"""Double-entry ledger with two-phase holds, in the style of TigerBeetle.

The unit is the nano-USD: 1 USD = 10**9 nano-USD, so 1 USDC (6 decimals) unit is 1,000 nano-USD.

Every movement is one transfer that debits one account and credits another by the same amount,
so the sum of (credits_posted - debits_posted) over all accounts is always zero. A transfer id is
an idempotency key: writing the same transfer twice returns the first one. Transfers are never
updated or deleted; a correction is a new reversing transfer.

These functions flush but never commit: the use case that calls them owns the transaction, so a
ledger write commits together with the record that caused it.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy import func, insert, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from marketplace.models import LedgerAccount, LedgerTransfer, utcnow

logger = logging.getLogger(__name__)

NANO_USD_PER_USD = 10**9

PLATFORM_REVENUE = "platform:revenue"
USAGE_CLEARING = "clearing:usage"


class LedgerError(Exception):
    """A ledger operation that cannot be applied as asked."""


class InsufficientFunds(LedgerError):
    def __init__(self, account_name: str, available_nano_usd: int, requested_nano_usd: int) -> None:
        super().__init__(
            f"account {account_name} has {available_nano_usd} nano-USD available, "
            f"{requested_nano_usd} nano-USD requested"
        )
        self.available_nano_usd = available_nano_usd
        self.requested_nano_usd = requested_nano_usd


class TransferConflict(LedgerError):
    """A transfer id was reused for a different movement."""


class HoldAlreadyResolved(LedgerError):
    """A hold was posted, voided or expired before; it resolves exactly once."""


def buyer_account_name(account_id: int) -> str:
    return f"buyer:{account_id}"


def supplier_account_name(supplier_id: int) -> str:
    return f"supplier:{supplier_id}"


def chain_asset_account_name(chain_id: int, token_address: str) -> str:
    return f"chain:{chain_id}:{token_address}"


def get_or_create_account(
    session: Session,
    name: str,
    code: str,
    *,
    account_id: int | None = None,
    debits_must_not_exceed_credits: bool = False,
) -> LedgerAccount:
    existing = session.scalar(select(LedgerAccount).where(LedgerAccount.name == name))
    if existing is not None:
        return existing

    # INSERT ... ON CONFLICT DO NOTHING: two transactions creating the same account at once
    # both go on, and both read back the one row that won.
    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    session.execute(
        insert(LedgerAccount)
        .values(
            name=name,
            code=code,
            account_id=account_id,
            debits_must_not_exceed_credits=debits_must_not_exceed_credits,
            debits_pending_nano_usd=0,
            debits_posted_nano_usd=0,
            credits_pending_nano_usd=0,
            credits_posted_nano_usd=0,
        )
        .on_conflict_do_nothing(index_elements=["name"])
    )
    account = session.scalar(select(LedgerAccount).where(LedgerAccount.name == name))
    assert account is not None, f"ledger account {name} vanished after insert"
    return account


def find_accounts(session: Session, names: Iterable[str]) -> dict[str, LedgerAccount]:
    """Read the accounts with these names in one query; a name with no account is left out."""
    rows = session.scalars(select(LedgerAccount).where(LedgerAccount.name.in_(set(names))))
    return {account.name: account for account in rows}


def get_buyer_account(session: Session, account_id: int) -> LedgerAccount:
    return get_or_create_account(
        session,
        buyer_account_name(account_id),
        "buyer",
        account_id=account_id,
        debits_must_not_exceed_credits=True,
    )


@dataclass(frozen=True)
class Balance:
    posted_nano_usd: int
    pending_debits_nano_usd: int

    @property
    def available_nano_usd(self) -> int:
        return self.posted_nano_usd - self.pending_debits_nano_usd


def read_balance(session: Session, ledger_account_id: int) -> Balance:
    row = session.execute(
        select(
            LedgerAccount.credits_posted_nano_usd,
            LedgerAccount.debits_posted_nano_usd,
            LedgerAccount.debits_pending_nano_usd,
        ).where(LedgerAccount.id == ledger_account_id)
    ).one()
    return Balance(posted_nano_usd=row[0] - row[1], pending_debits_nano_usd=row[2])


def _existing_transfer(session: Session, transfer_id: str) -> LedgerTransfer | None:
    return session.get(LedgerTransfer, transfer_id)


def _check_same(existing: LedgerTransfer, debit_id: int, credit_id: int, amount: int, code: str) -> None:
    same = (
        existing.debit_account_id == debit_id
        and existing.credit_account_id == credit_id
        and existing.amount_nano_usd == amount
        and existing.code == code
    )
    if not same:
        raise TransferConflict(f"transfer id {existing.id} already names a different movement")


def _debit(session: Session, account: LedgerAccount, *, posted: int = 0, pending: int = 0) -> None:
    """Add to an account's debits. A constrained account is checked in the same UPDATE statement,
    so two concurrent debits can never both pass a check that only one of them fits."""
    statement = (
        update(LedgerAccount)
        .where(LedgerAccount.id == account.id)
        .values(
            debits_posted_nano_usd=LedgerAccount.debits_posted_nano_usd + posted,
            debits_pending_nano_usd=LedgerAccount.debits_pending_nano_usd + pending,
        )
    )
    if account.debits_must_not_exceed_credits and posted + pending > 0:
        statement = statement.where(
            LedgerAccount.debits_posted_nano_usd + LedgerAccount.debits_pending_nano_usd + (posted + pending)
            <= LedgerAccount.credits_posted_nano_usd
        )
    result = session.execute(statement.execution_options(synchronize_session=False))
    if result.rowcount != 1:
        balance = read_balance(session, account.id)
        raise InsufficientFunds(account.name, balance.available_nano_usd, posted + pending)


def _credit(session: Session, account: LedgerAccount, *, posted: int = 0, pending: int = 0) -> None:
    session.execute(
        update(LedgerAccount)
        .where(LedgerAccount.id == account.id)
        .values(
            credits_posted_nano_usd=LedgerAccount.credits_posted_nano_usd + posted,
            credits_pending_nano_usd=LedgerAccount.credits_pending_nano_usd + pending,
        )
        .execution_options(synchronize_session=False)
    )


def transfer(
    session: Session,
    transfer_id: str,
    debit: LedgerAccount,
    credit: LedgerAccount,
    amount_nano_usd: int,
    code: str,
    *,
    reference: str | None = None,
) -> LedgerTransfer:
    """Move amount_nano_usd from debit to credit at once. Idempotent on transfer_id."""
    if amount_nano_usd < 0:
        raise LedgerError(f"transfer {transfer_id} has negative amount {amount_nano_usd}")
    if debit.id == credit.id:
        raise LedgerError(f"transfer {transfer_id} debits and credits the same account {debit.name}")

    existing = _existing_transfer(session, transfer_id)
    if existing is not None:
        _check_same(existing, debit.id, credit.id, amount_nano_usd, code)
        return existing

    _debit(session, debit, posted=amount_nano_usd)
    _credit(session, credit, posted=amount_nano_usd)
    row = LedgerTransfer(
        id=transfer_id,
        debit_account_id=debit.id,
        credit_account_id=credit.id,
        amount_nano_usd=amount_nano_usd,
        code=code,
        reference=reference,
    )
    session.add(row)
    session.flush()
    return row


def place_hold(
    session: Session,
    transfer_id: str,
    debit: LedgerAccount,
    credit: LedgerAccount,
    amount_nano_usd: int,
    expires_at: dt.datetime,
    *,
    reference: str | None = None,
) -> LedgerTransfer:
    """Reserve amount_nano_usd of the debit account until the hold is posted, voided or expires.

    Raises InsufficientFunds, writing nothing, when a constrained account cannot cover it.
    """
    if amount_nano_usd < 0:
        raise LedgerError(f"hold {transfer_id} has negative amount {amount_nano_usd}")

    existing = _existing_transfer(session, transfer_id)
    if existing is not None:
        _check_same(existing, debit.id, credit.id, amount_nano_usd, "hold")
        return existing

    _debit(session, debit, pending=amount_nano_usd)
    _credit(session, credit, pending=amount_nano_usd)
    row = LedgerTransfer(
        id=transfer_id,
        debit_account_id=debit.id,
        credit_account_id=credit.id,
        amount_nano_usd=amount_nano_usd,
        code="hold",
        is_pending=True,
        expires_at=expires_at,
        reference=reference,
    )
    session.add(row)
    session.flush()
    return row


def _resolve_hold(session: Session, hold_id: str, posted_nano_usd: int, code: str) -> LedgerTransfer:
    hold = session.get(LedgerTransfer, hold_id)
    if hold is None or not hold.is_pending:
        raise LedgerError(f"hold {hold_id} does not exist")
    # A real check, not an assert: it must hold under `python -O` too.
    if not 0 <= posted_nano_usd <= hold.amount_nano_usd:
        raise LedgerError(f"post of {posted_nano_usd} nano-USD is outside hold {hold_id} of {hold.amount_nano_usd} nano-USD")

    resolution_id = f"{hold_id}:{code}"
    already = session.scalar(select(LedgerTransfer).where(LedgerTransfer.pending_id == hold_id))
    if already is not None:
        if already.id == resolution_id and already.amount_nano_usd == posted_nano_usd:
            return already
        raise HoldAlreadyResolved(f"hold {hold_id} was already resolved by {already.code}")

    # The pending_id column is unique: if a concurrent resolution wins the race, this insert
    # fails and the transaction rolls back, so the balances below never move twice.
    row = LedgerTransfer(
        id=resolution_id,
        debit_account_id=hold.debit_account_id,
        credit_account_id=hold.credit_account_id,
        amount_nano_usd=posted_nano_usd,
        code=code,
        pending_id=hold_id,
    )
    session.add(row)
    session.flush()

    held = hold.amount_nano_usd
    session.execute(
        update(LedgerAccount)
        .where(LedgerAccount.id == hold.debit_account_id)
        .values(
            debits_pending_nano_usd=LedgerAccount.debits_pending_nano_usd - held,
            debits_posted_nano_usd=LedgerAccount.debits_posted_nano_usd + posted_nano_usd,
        )
        .execution_options(synchronize_session=False)
    )
    session.execute(
        update(LedgerAccount)
        .where(LedgerAccount.id == hold.credit_account_id)
        .values(
            credits_pending_nano_usd=LedgerAccount.credits_pending_nano_usd - held,
            credits_posted_nano_usd=LedgerAccount.credits_posted_nano_usd + posted_nano_usd,
        )
        .execution_options(synchronize_session=False)
    )
    return row


def post_hold(session: Session, hold_id: str, amount_nano_usd: int) -> LedgerTransfer:
    """Post amount_nano_usd (at most the held amount) of a hold and release the rest."""
    return _resolve_hold(session, hold_id, amount_nano_usd, "post")


@dataclass(frozen=True)
class Split:
    """One onward transfer of a posted hold, from the hold's credit account to `credit`."""

    transfer_id: str
    credit: LedgerAccount
    amount_nano_usd: int
    code: str


def post_hold_and_split(
    session: Session, hold_id: str, posted_nano_usd: int, splits: Sequence[Split], *, reference: str | None = None
) -> Balance:
    """Post a hold and pass the posted amount on from the hold's credit account, in one pass.

    Writes the same transfers, with the same ids and idempotency, as `post_hold` followed by one
    `transfer` per split. It inserts the transfer rows first and then updates each account row
    once, so the accounts that every call shares (the clearing account, a busy buyer) stay
    locked only from those updates to the commit. The rows are updated in a fixed order: the
    hold's debit account, its credit account, then the split accounts. `place_hold` and
    `transfer` lock in that order too, so concurrent calls cannot deadlock on these rows.
    Returns the balance of the hold's debit account afterwards.
    """
    resolution_id = f"{hold_id}:post"
    split_ids = [split.transfer_id for split in splits]
    # The hold, its resolution if any, and any split written before, in one query.
    existing = {
        row.id: row
        for row in session.scalars(
            select(LedgerTransfer).where(
                or_(LedgerTransfer.id.in_([hold_id, *split_ids]), LedgerTransfer.pending_id == hold_id)
            )
        )
    }
    hold = existing.pop(hold_id, None)
    if hold is None or not hold.is_pending:
        raise LedgerError(f"hold {hold_id} does not exist")
    assert 0 <= posted_nano_usd <= hold.amount_nano_usd, (
        f"post of {posted_nano_usd} nano-USD exceeds hold {hold_id} of {hold.amount_nano_usd}"
    )
    assert sum(split.amount_nano_usd for split in splits) == posted_nano_usd, (
        f"splits of hold {hold_id} pass on {sum(split.amount_nano_usd for split in splits)} nano-USD, not the posted {posted_nano_usd}"
    )

    already = next((row for row in existing.values() if row.pending_id == hold_id), None)
    if already is not None and not (already.id == resolution_id and already.amount_nano_usd == posted_nano_usd):
        raise HoldAlreadyResolved(f"hold {hold_id} was already resolved by {already.code}")

    new_rows: list[dict] = []
    # Per account id: [debits_posted, debits_pending, credits_posted, credits_pending] deltas.
    deltas: dict[int, list[int]] = {}

    def add(account_id: int, index: int, amount: int) -> None:
        deltas.setdefault(account_id, [0, 0, 0, 0])[index] += amount

    if already is None:
        # The pending_id column is unique: if a concurrent resolution wins the race, this insert
        # fails and the transaction rolls back, so the balances below never move twice.
        new_rows.append(
            _transfer_row(resolution_id, hold.debit_account_id, hold.credit_account_id, posted_nano_usd, "post", pending_id=hold_id)
        )
        add(hold.debit_account_id, 1, -hold.amount_nano_usd)
        add(hold.debit_account_id, 0, posted_nano_usd)
        add(hold.credit_account_id, 3, -hold.amount_nano_usd)
        add(hold.credit_account_id, 2, posted_nano_usd)
    for split in splits:
        assert split.credit.id != hold.credit_account_id, f"split {split.transfer_id} credits the account it debits"
        found = existing.get(split.transfer_id)
        if found is not None:
            _check_same(found, hold.credit_account_id, split.credit.id, split.amount_nano_usd, split.code)
            continue
        new_rows.append(
            _transfer_row(split.transfer_id, hold.credit_account_id, split.credit.id, split.amount_nano_usd, split.code, reference=reference)
        )
        add(hold.credit_account_id, 0, split.amount_nano_usd)
        add(split.credit.id, 2, split.amount_nano_usd)
    if new_rows:
        session.execute(insert(LedgerTransfer), new_rows)

    balance: Balance | None = None
    constrained = {hold.credit_account_id: _is_constrained(session, hold.credit_account_id)}
    for account_id, (debits_posted, debits_pending, credits_posted, credits_pending) in deltas.items():
        statement = (
            update(LedgerAccount)
            .where(LedgerAccount.id == account_id)
            .values(
                debits_posted_nano_usd=LedgerAccount.debits_posted_nano_usd + debits_posted,
                debits_pending_nano_usd=LedgerAccount.debits_pending_nano_usd + debits_pending,
                credits_posted_nano_usd=LedgerAccount.credits_posted_nano_usd + credits_posted,
                credits_pending_nano_usd=LedgerAccount.credits_pending_nano_usd + credits_pending,
            )
            .returning(
                LedgerAccount.credits_posted_nano_usd, LedgerAccount.debits_posted_nano_usd, LedgerAccount.debits_pending_nano_usd
            )
        )
        if constrained.get(account_id) and debits_posted + debits_pending > 0:
            # Only the hold's credit account pays splits out of its own posted credits.
            statement = statement.where(
                LedgerAccount.debits_posted_nano_usd + LedgerAccount.debits_pending_nano_usd + (debits_posted + debits_pending)
                <= LedgerAccount.credits_posted_nano_usd
            )
        row = session.execute(statement.execution_options(synchronize_session=False)).one_or_none()
        if row is None:
            available = read_balance(session, account_id).available_nano_usd
            raise InsufficientFunds(f"ledger account {account_id}", available, debits_posted + debits_pending)
        if account_id == hold.debit_account_id:
            balance = Balance(posted_nano_usd=row[0] - row[1], pending_debits_nano_usd=row[2])
    return balance if balance is not None else read_balance(session, hold.debit_account_id)


def _transfer_row(
    transfer_id: str, debit_id: int, credit_id: int, amount_nano_usd: int, code: str, *, pending_id: str | None = None, reference: str | None = None
) -> dict:
    """Build the columns of a new posted transfer, for a Core INSERT of several rows at once."""
    return {
        "id": transfer_id,
        "debit_account_id": debit_id,
        "credit_account_id": credit_id,
        "amount_nano_usd": amount_nano_usd,
        "code": code,
        "is_pending": False,
        "pending_id": pending_id,
        "expires_at": None,
        "reference": reference,
        "created_at": utcnow(),
    }


def _is_constrained(session: Session, account_id: int) -> bool:
    account = session.get(LedgerAccount, account_id)
    assert account is not None, f"ledger account {account_id} does not exist"
    return account.debits_must_not_exceed_credits


def void_hold(session: Session, hold_id: str) -> LedgerTransfer:
    """Release a whole hold; nothing moves."""
    return _resolve_hold(session, hold_id, 0, "void")


def expire_hold(session: Session, hold_id: str) -> LedgerTransfer:
    """Release a hold that outlived its call; nothing moves."""
    return _resolve_hold(session, hold_id, 0, "expire")


def find_expired_holds(session: Session, now: dt.datetime | None = None, limit: int = 500) -> list[str]:
    now = now or utcnow()
    resolution = LedgerTransfer.__table__.alias("resolution")
    rows = session.execute(
        select(LedgerTransfer.id)
        .outerjoin(resolution, resolution.c.pending_id == LedgerTransfer.id)
        .where(LedgerTransfer.is_pending.is_(True))
        .where(LedgerTransfer.expires_at < now)
        .where(resolution.c.id.is_(None))
        .order_by(LedgerTransfer.expires_at)
        .limit(limit)
    )
    return [row[0] for row in rows]


@dataclass(frozen=True)
class LedgerTotals:
    debits_posted_nano_usd: int
    credits_posted_nano_usd: int
    debits_pending_nano_usd: int
    credits_pending_nano_usd: int
    negative_constrained_accounts: int

    @property
    def balanced(self) -> bool:
        return (
            self.debits_posted_nano_usd == self.credits_posted_nano_usd
            and self.debits_pending_nano_usd == self.credits_pending_nano_usd
        )


def read_totals(session: Session) -> LedgerTotals:
    row = session.execute(
        select(
            func.coalesce(func.sum(LedgerAccount.debits_posted_nano_usd), 0),
            func.coalesce(func.sum(LedgerAccount.credits_posted_nano_usd), 0),
            func.coalesce(func.sum(LedgerAccount.debits_pending_nano_usd), 0),
            func.coalesce(func.sum(LedgerAccount.credits_pending_nano_usd), 0),
        )
    ).one()
    negative = session.scalar(
        select(func.count())
        .select_from(LedgerAccount)
        .where(LedgerAccount.debits_must_not_exceed_credits.is_(True))
        .where(
            LedgerAccount.debits_posted_nano_usd + LedgerAccount.debits_pending_nano_usd
            > LedgerAccount.credits_posted_nano_usd
        )
    )
    return LedgerTotals(int(row[0]), int(row[1]), int(row[2]), int(row[3]), int(negative or 0))

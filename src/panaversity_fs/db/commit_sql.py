"""The one-statement commit of an update on PostgreSQL: compare-and-swap, audit entry and chain
head move as a single statement, run as a transaction of its own.

The write transaction of an update is five round trips through the driver (BEGIN, the
compare-and-swap, the chain head's lock, the entry and the head move, COMMIT). Every value of the
audit entry is known before the transaction starts except its place in the chain: the head's
`seq` and hash, which only the database knows under the head's lock. So the entry is sent as its
canonical serialisation cut around those two values (`audit.chain.chain_template`), and the
statement hashes it once it holds the lock (`sha256` of the pieces joined around the head's
values): the entry hash is the one `audit.chain.compute_entry_hash` gives for the stored row.

    WITH cas AS (UPDATE file_journal ... WHERE <key> AND sha256 = <expected> RETURNING version),
         head AS (SELECT seq, head_hash FROM audit_chain_head
                  WHERE chain_id = 'global' AND EXISTS (SELECT FROM cas) FOR UPDATE),
         appended AS (INSERT INTO audit_log SELECT <entry>, head.seq + 1, head.head_hash,
                      <hash of the entry> FROM head RETURNING seq, entry_hash),
         moved AS (UPDATE audit_chain_head SET seq = appended.seq, head_hash = appended.entry_hash
                   FROM appended WHERE chain_id = 'global')
    SELECT cas.version, appended.seq FROM cas LEFT OUTER JOIN appended ON true

Locks are taken in the order every write transaction takes them (the journal row, then the
chain head), and nothing happens unless the compare-and-swap does. A refused swap changes
nothing and answers no row: the caller decides the refusal in a write transaction as before.

With the bytes' copy (`copy`: staged without waiting for the disk, on the fs store), a fifth
CTE also stores them in `staged_copy` under the staging key, so the statement's own WAL flush
makes them durable: the write waits for one flush instead of two (the staged file's, then the
commit's). The publish syncs the staged file and removes the copy (`db.publish_sql`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import LargeBinary, Text, bindparam, cast, exists, func, insert, select, true, update

from panaversity_fs.db.driver_writes import built_once
from panaversity_fs.db.engine import Database
from panaversity_fs.db.journal_sql import FileKey, cas_statement
from panaversity_fs.db.schema import GLOBAL_CHAIN, audit_chain_head, audit_log, staged_copy
from panaversity_fs.db.transactions import run_alone
from panaversity_fs.paths import BASE_USER


@dataclass(frozen=True, slots=True)
class SwappedAlone:
    """An update the one-statement commit made: the row's new version, the entry's seq."""

    version: int
    seq: int


def _one_statement(overlay: bool, copy: bool) -> Any:
    cas = cas_statement(overlay).cte("cas")
    head = (
        select(audit_chain_head.c.seq, audit_chain_head.c.head_hash)
        .where(audit_chain_head.c.chain_id == GLOBAL_CHAIN, exists(select(cas.c.version)))
        .with_for_update(of=audit_chain_head)
        .cte("head")
    )
    seq = head.c.seq + 1

    def piece(name: str) -> Any:
        return bindparam(name, type_=LargeBinary)

    canonical = (
        piece("t_before")
        .op("||")(func.convert_to(head.c.head_hash, "UTF8"))
        .op("||")(piece("t_between"))
        .op("||")(func.convert_to(cast(seq, Text), "UTF8"))
        .op("||")(piece("t_after"))
    )
    chained = {
        "seq": seq,
        "chain_prev_hash": head.c.head_hash,
        "entry_hash": func.encode(func.sha256(canonical), "hex"),
    }
    columns = [column.name for column in audit_log.columns]
    values = [
        chained[name] if name in chained else bindparam(f"e_{name}", type_=audit_log.c[name].type)
        for name in columns
    ]
    appended = (
        insert(audit_log)
        .from_select(columns, select(*values).select_from(head))
        .returning(audit_log.c.seq, audit_log.c.entry_hash)
        .cte("appended")
    )
    moved = (
        update(audit_chain_head)
        .where(audit_chain_head.c.chain_id == GLOBAL_CHAIN)
        .values(seq=appended.c.seq, head_hash=appended.c.entry_hash)
        .cte("moved")
    )
    statement = (
        select(cas.c.version, appended.c.seq).select_from(cas.outerjoin(appended, true())).add_cte(moved)
    )
    if not copy:
        return statement
    copied = (
        insert(staged_copy)
        .from_select(
            ["staging_key", "data", "created_at"],
            select(
                bindparam("v_staging_key", type_=staged_copy.c.staging_key.type),
                piece("c_data"),
                bindparam("v_now", type_=staged_copy.c.created_at.type),
            ).where(exists(select(cas.c.version))),
        )
        .cte("copied")
    )
    return statement.add_cte(copied)


_SWAPS = {
    (overlay, copy): built_once(_one_statement(overlay, copy))
    for overlay in (False, True)
    for copy in (False, True)
}


async def swap_alone(
    db: Database,
    key: FileKey,
    swap: dict[str, Any],
    entry: dict[str, Any],
    template: tuple[bytes, bytes, bytes],
    cancel_after: float | None = None,
    copy: bytes | None = None,
) -> SwappedAlone | None:
    """Compare-and-swap `key`'s row and append `entry` to the audit chain in one statement that
    commits on its own (PostgreSQL); None if the swap was refused (nothing changed).

    `swap`: `cas_parameters`; `entry`: the audit entry's columns but its place in the chain
    (`NewAuditEntry.values()`);
    `template`: `chain_template` of the entry; `cancel_after`: seconds before the statement is
    cancelled; `copy`: the staged bytes, when their file is not synced (kept in `staged_copy`).

    Raises:
        sqlalchemy.exc.SQLAlchemyError, OSError: the database failed; the statement has ended
            (`transactions.run_alone`): the data tells whether it committed.
        Unavailable: whether it committed cannot be told (`outcome_unknown`).
    """
    parameters = swap | {f"e_{name}": value for name, value in entry.items()}
    parameters |= {"t_before": template[0], "t_between": template[1], "t_after": template[2]}
    if copy is not None:
        parameters["c_data"] = copy
    statement = _SWAPS[key.user_id != BASE_USER, copy is not None]
    rows = await run_alone(db, statement, parameters, cancel_after)
    if not rows:
        return None
    version, seq = tuple(rows[0])
    if seq is None:  # the swap cannot happen without its entry: the statement would be broken
        raise AssertionError("one-statement commit swapped without appending")
    return SwappedAlone(int(version), int(seq))

"""Tamper-evident audit trail: hash-chained records of every security-relevant event.

Services build an `AuditEvent` and hand it to the process's `AuditLog` (`record` on the mail path,
`record_durable` where a reply must wait for the commit). `verify_chain` checks the chain,
`export_records` writes JSON lines; `record_hash` documents the hash.
"""

from mssante_operator.audit.chain import GENESIS_HASH, canonical_record, format_ts, record_hash
from mssante_operator.audit.events import AuditEvent, AuditEventType, AuditOutcome
from mssante_operator.audit.export import export_records
from mssante_operator.audit.log import AuditLog, AuditStats, AuditWriteError
from mssante_operator.audit.prune import PruneResult, prune_before
from mssante_operator.audit.reader import StoredRecord, UnreadableRecord, last_records
from mssante_operator.audit.verify import VerifyResult, verify_chain

__all__ = [
    "GENESIS_HASH",
    "AuditEvent",
    "AuditEventType",
    "AuditLog",
    "AuditOutcome",
    "AuditStats",
    "AuditWriteError",
    "PruneResult",
    "StoredRecord",
    "UnreadableRecord",
    "VerifyResult",
    "canonical_record",
    "export_records",
    "format_ts",
    "last_records",
    "prune_before",
    "record_hash",
    "verify_chain",
]

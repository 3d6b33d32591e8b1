"""National directory mirror: RPPS/ADELI and MSSanté extractions, LDAP sync, look-ups, decisions.

The mail path uses `DirectoryMirror` (look-ups, `is_known_mailbox`, `practitioner_for`, `decide`)
and the pure `exchange_decision`; operations use `import_files`, `sync_ldap`, `generate_sample`
and `mirror_health`.
"""

from mssante_operator.directory.decision import (
    DecisionCode,
    DirectoryDecision,
    DirectoryPolicy,
    RecipientInfo,
    SenderInfo,
    exchange_decision,
    recipient_decision,
    sender_decision,
)
from mssante_operator.directory.demo import load_demo_directory
from mssante_operator.directory.entries import (
    Activity,
    MailboxEntry,
    MirrorStats,
    PartStats,
    Practitioner,
    StructureView,
)
from mssante_operator.directory.importer import DirectoryImportError, FileReport, ImportReport, import_files
from mssante_operator.directory.mirror import DirectoryMirror, mirror_health
from mssante_operator.directory.sample import SampleMailbox, generate_sample, sample_from_demo

__all__ = [
    "Activity",
    "DecisionCode",
    "DirectoryDecision",
    "DirectoryImportError",
    "DirectoryMirror",
    "DirectoryPolicy",
    "FileReport",
    "ImportReport",
    "MailboxEntry",
    "MirrorStats",
    "PartStats",
    "Practitioner",
    "RecipientInfo",
    "SampleMailbox",
    "SenderInfo",
    "StructureView",
    "exchange_decision",
    "generate_sample",
    "import_files",
    "load_demo_directory",
    "mirror_health",
    "recipient_decision",
    "sample_from_demo",
    "sender_decision",
]

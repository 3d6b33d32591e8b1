"""Store integrity check (`mssante-operator db check`): what a crash or a bad restore could break.

Checks, each problem named with the row it concerns:
- every message: its folder's `uidnext` is above its UID and `highestmodseq` at least its modseq,
  it belongs to the folder's mailbox, its body exists, decrypts with the keys of its mailbox and
  has the recorded size;
- UIDs are unique per folder;
- every queue entry: has recipients, its body exists and decrypts; no recipient without an entry;
- bodies that nothing refers to are counted (harmless, reclaimed by purge), not reported as errors.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import exists, func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from mssante_operator.store.mailstore import MailStore
from mssante_operator.store.models import Folder, Message, MessageBody, QueueEntry, QueueRecipient

_DECRYPT_ERRORS = (Exception,)


@dataclass(frozen=True)
class IntegrityProblem:
    kind: str  # uid_beyond_uidnext, modseq_beyond_highest, wrong_mailbox, duplicate_uid, body_missing,
    # body_unreadable, size_mismatch, queue_entry_empty, queue_recipient_orphan
    detail: str


@dataclass
class IntegrityReport:
    messages: int = 0
    folders: int = 0
    queue_entries: int = 0
    queue_recipients: int = 0
    bodies: int = 0
    unreferenced_bodies: int = 0
    problems: list[IntegrityProblem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def add(self, kind: str, detail: str) -> None:
        self.problems.append(IntegrityProblem(kind, detail))


async def check_store(
    sessions: async_sessionmaker[AsyncSession], mailstore: MailStore, *, decrypt: bool = True
) -> IntegrityReport:
    """Run every check; with `decrypt`, read every body back through `mailstore` (slow on big stores)."""
    report = IntegrityReport()
    async with sessions() as session:
        report.folders = int(await session.scalar(select(func.count(Folder.id))) or 0)
        report.bodies = int(await session.scalar(select(func.count(MessageBody.id))) or 0)
        report.queue_recipients = int(await session.scalar(select(func.count(QueueRecipient.id))) or 0)
        report.unreferenced_bodies = int(
            await session.scalar(
                select(func.count(MessageBody.id)).where(
                    ~exists().where(Message.body_id == MessageBody.id),
                    ~exists().where(QueueEntry.body_id == MessageBody.id),
                )
            )
            or 0
        )
        rows = await session.execute(
            select(
                Message.id,
                Message.uid,
                Message.modseq,
                Message.mailbox_id,
                Message.size,
                Message.body_id,
                Folder.id,
                Folder.uidnext,
                Folder.highestmodseq,
                Folder.mailbox_id,
                MessageBody.id,
                MessageBody.size,
            )
            .join(Folder, Folder.id == Message.folder_id, isouter=True)
            .join(MessageBody, MessageBody.id == Message.body_id, isouter=True)
            .order_by(Message.id)
        )
        messages = rows.all()
        duplicates = await session.execute(
            select(Message.folder_id, Message.uid, func.count(Message.id))
            .group_by(Message.folder_id, Message.uid)
            .having(func.count(Message.id) > 1)
        )
        for folder_id, uid, count in duplicates.all():
            report.add("duplicate_uid", f"folder {folder_id}: UID {uid} used by {count} messages")
        entries = (
            await session.execute(
                select(
                    QueueEntry.id,
                    QueueEntry.queue_id,
                    MessageBody.id,
                    select(func.count(QueueRecipient.id))
                    .where(QueueRecipient.entry_id == QueueEntry.id)
                    .scalar_subquery(),
                )
                .join(MessageBody, MessageBody.id == QueueEntry.body_id, isouter=True)
                .order_by(QueueEntry.id)
            )
        ).all()
        orphans = await session.execute(
            select(QueueRecipient.id, QueueRecipient.entry_id).where(
                ~exists().where(QueueEntry.id == QueueRecipient.entry_id)
            )
        )
        for rid, entry_id in orphans.all():
            report.add("queue_recipient_orphan", f"queue recipient {rid}: entry {entry_id} does not exist")

    report.messages = len(messages)
    for (
        mid,
        uid,
        modseq,
        mailbox_id,
        size,
        _body_ref,
        folder_id,
        uidnext,
        highest,
        folder_mailbox,
        body_id,
        body_size,
    ) in messages:
        where = f"message {mid}"
        if folder_id is None:
            report.add("folder_missing", f"{where}: its folder does not exist")
        else:
            if uid >= uidnext:
                report.add(
                    "uid_beyond_uidnext", f"{where}: UID {uid} >= UIDNEXT {uidnext} of folder {folder_id}"
                )
            if modseq > highest:
                report.add(
                    "modseq_beyond_highest",
                    f"{where}: MODSEQ {modseq} > HIGHESTMODSEQ {highest} of folder {folder_id}",
                )
            if folder_mailbox != mailbox_id:
                report.add(
                    "wrong_mailbox",
                    f"{where}: mailbox {mailbox_id} but folder {folder_id} is of {folder_mailbox}",
                )
        if body_id is None:
            report.add("body_missing", f"{where}: body row missing")
            continue
        if body_size != size:
            report.add("size_mismatch", f"{where}: size {size} but body {body_id} has {body_size}")
        if decrypt:
            try:
                plain = await mailstore.read_message_body(mid)
            except _DECRYPT_ERRORS as exc:
                report.add("body_unreadable", f"{where}: {exc}")
                continue
            if len(plain) != size:
                report.add(
                    "size_mismatch", f"{where}: size {size} but its body decrypts to {len(plain)} octets"
                )

    report.queue_entries = len(entries)
    for entry_id, queue_id, body_id, recipients in entries:
        where = f"queue entry {entry_id} ({queue_id})"
        if not recipients:
            report.add("queue_entry_empty", f"{where}: no recipients")
        if body_id is None:
            report.add("body_missing", f"{where}: body row missing")
            continue
        if decrypt:
            try:
                await mailstore.read_queue_body(entry_id)
            except _DECRYPT_ERRORS as exc:
                report.add("body_unreadable", f"{where}: {exc}")
    return report

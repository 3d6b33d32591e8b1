"""SORT (RFC 5256, with RFC 5957 DISPLAYFROM/DISPLAYTO) and THREAD (ORDEREDSUBJECT, REFERENCES).

Pure functions over message headers; the session fetches the header blocks of the matching
messages in one batch and hands them here.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from mssante_operator.imap import mime
from mssante_operator.imap.search import decode_header_text

__all__ = ["SortMessage", "base_subject", "render_threads", "sort_messages", "thread_messages"]


@dataclass(slots=True)
class SortMessage:
    number: int  # the UID or sequence number reported to the client
    seq: int  # sequence number: the final tie-breaker
    internal_date: dt.datetime
    size: int
    header: bytes = field(repr=False)
    _part: mime.Part | None = field(default=None, repr=False)

    @property
    def part(self) -> mime.Part:
        if self._part is None:
            self._part = mime.parse_message(self.header)
        return self._part

    def sent_date(self) -> dt.datetime:
        value = self.part.header("Date")
        if value is not None:
            try:
                sent = email.utils.parsedate_to_datetime(value.decode("ascii", "replace"))
            except (TypeError, ValueError, IndexError):
                sent = None
            if sent is not None:
                return sent if sent.tzinfo else sent.replace(tzinfo=dt.UTC)
        date = self.internal_date
        return date if date.tzinfo else date.replace(tzinfo=dt.UTC)


_SUBJ_BLOB = r"\[[^\[\]]*\]\s*"
_SUBJ_LEADER = re.compile(rf"^(?:{_SUBJ_BLOB})*(?:re|fwd?)\s*(?:{_SUBJ_BLOB})*:\s*", re.IGNORECASE)
_SUBJ_BLOB_LEAD = re.compile(rf"^{_SUBJ_BLOB}")
_SUBJ_TRAILER = re.compile(r"\s*\(fwd\)\s*$", re.IGNORECASE)
_FWD_WRAP = re.compile(r"^\[fwd:\s*(.*)\]$", re.IGNORECASE)


def base_subject(raw: bytes | None) -> tuple[str, bool]:
    """RFC 5256 base subject, and whether it looked like a reply or forward."""
    text = " ".join(decode_header_text(raw or b"").split())
    reply = False
    while True:
        before = text
        while True:
            trimmed = _SUBJ_TRAILER.sub("", text)
            if trimmed == text:
                break
            reply, text = True, trimmed
        while True:
            m = _SUBJ_LEADER.match(text)
            if m:
                reply, text = True, text[m.end() :]
                continue
            m = _SUBJ_BLOB_LEAD.match(text)
            if m and text[m.end() :]:
                text = text[m.end() :]
                continue
            break
        m = _FWD_WRAP.match(text)
        if m:
            reply, text = True, m.group(1)
        if text == before:
            return text.casefold(), reply


def _first_address(msg: SortMessage, header: str, display: bool) -> str:
    value = msg.part.header(header)
    if value is None:
        return ""
    for addr in mime.parse_addresses(value):
        if not isinstance(addr, tuple) or len(addr) != 4:
            continue
        name, _route, mailbox, host = addr
        if mailbox is None or host is None:
            continue  # group markers
        assert isinstance(mailbox, bytes) and isinstance(host, bytes)
        if display:
            if isinstance(name, bytes) and name:
                return decode_header_text(name).casefold()
            return (mailbox + b"@" + host).decode("utf-8", "replace").casefold()
        return mailbox.decode("utf-8", "replace").casefold()
    return ""


def _key(name: str, msg: SortMessage) -> object:
    if name == "ARRIVAL":
        date = msg.internal_date
        return date if date.tzinfo else date.replace(tzinfo=dt.UTC)
    if name == "DATE":
        return msg.sent_date()
    if name == "SIZE":
        return msg.size
    if name == "SUBJECT":
        return base_subject(msg.part.header("Subject"))[0]
    if name in ("FROM", "TO", "CC"):
        return _first_address(msg, name.capitalize() if name != "CC" else "Cc", False)
    if name == "DISPLAYFROM":
        return _first_address(msg, "From", True)
    if name == "DISPLAYTO":
        return _first_address(msg, "To", True)
    raise ValueError(f"unknown sort key {name}")


def sort_messages(criteria: Sequence[tuple[str, bool]], messages: Sequence[SortMessage]) -> list[int]:
    """Numbers in SORT order; ties fall back to sequence order."""
    ordered = sorted(messages, key=lambda m: m.seq)
    for name, reverse in reversed(criteria):
        keys = {id(m): _key(name, m) for m in ordered}
        ordered.sort(key=lambda m: keys[id(m)], reverse=reverse)  # type: ignore[arg-type,return-value]
    return [m.number for m in ordered]


# ------------------------------------------------------------------------------------------ THREAD

Thread = list["ThreadNode"]


@dataclass(slots=True)
class ThreadNode:
    number: int | None  # None: a message referenced but not present (a dummy)
    children: list[ThreadNode] = field(default_factory=list)
    date: dt.datetime | None = None
    seq: int = 0


def _sort_key(node: ThreadNode) -> tuple[dt.datetime, int]:
    if node.number is None and node.children:
        first = min(node.children, key=_sort_key)
        return _sort_key(first)
    return (node.date or dt.datetime.min.replace(tzinfo=dt.UTC), node.seq)


def _ordered_subject(messages: Sequence[SortMessage]) -> list[ThreadNode]:
    groups: dict[str, list[SortMessage]] = {}
    for msg in sorted(messages, key=lambda m: (m.sent_date(), m.seq)):
        groups.setdefault(base_subject(msg.part.header("Subject"))[0], []).append(msg)
    roots: list[ThreadNode] = []
    for members in groups.values():
        first, rest = members[0], members[1:]
        roots.append(
            ThreadNode(first.number, [ThreadNode(m.number, date=m.sent_date(), seq=m.seq) for m in rest],
                       first.sent_date(), first.seq)
        )  # fmt: skip
    roots.sort(key=_sort_key)
    return roots


_MSGID = re.compile(rb"<[^<>\s]+>")


def _references(messages: Sequence[SortMessage]) -> list[ThreadNode]:
    nodes: dict[bytes, ThreadNode] = {}
    parent: dict[int, ThreadNode | None] = {}

    def node_for(msgid: bytes) -> ThreadNode:
        node = nodes.get(msgid)
        if node is None:
            node = nodes[msgid] = ThreadNode(None)
            parent[id(node)] = None
        return node

    def is_ancestor(candidate: ThreadNode, node: ThreadNode) -> bool:
        cur: ThreadNode | None = candidate
        while cur is not None:
            if cur is node:
                return True
            cur = parent.get(id(cur))
        return False

    def link(child: ThreadNode, new_parent: ThreadNode) -> None:
        if child is new_parent or is_ancestor(new_parent, child):
            return
        old = parent.get(id(child))
        if old is not None:
            old.children.remove(child)
        new_parent.children.append(child)
        parent[id(child)] = new_parent

    for msg in messages:
        part = msg.part
        mid_raw = part.header("Message-ID") or b""
        ids = _MSGID.findall(mid_raw)
        msgid = ids[0] if ids else b"<unique-%d>" % msg.seq
        if msgid in nodes and nodes[msgid].number is not None:
            msgid = b"<duplicate-%d>" % msg.seq
        node = node_for(msgid)
        node.number, node.date, node.seq = msg.number, msg.sent_date(), msg.seq
        refs = _MSGID.findall(part.header("References") or b"")
        if not refs:
            refs = _MSGID.findall(part.header("In-Reply-To") or b"")[:1]
        prev: ThreadNode | None = None
        for ref in refs:
            ref_node = node_for(ref)
            if prev is not None and parent.get(id(ref_node)) is None:
                link(ref_node, prev)
            prev = ref_node
        if prev is not None and prev is not node:
            link(node, prev)
        elif prev is None and parent.get(id(node)) is not None:
            old = parent[id(node)]
            assert old is not None
            old.children.remove(node)
            parent[id(node)] = None

    roots = [n for n in nodes.values() if parent.get(id(n)) is None]
    roots = _prune(roots, at_root=True)
    # Group roots by base subject (RFC 5256 REFERENCES step (v), simplified): a root whose
    # subject is a reply joins the thread of an earlier root with the same base subject.
    by_subject: dict[str, ThreadNode] = {}
    merged: list[ThreadNode] = []
    for root in sorted(roots, key=_sort_key):
        subject, reply = _root_subject(root, messages)
        if subject and subject in by_subject and reply:
            by_subject[subject].children.append(root)
            continue
        if subject and subject not in by_subject:
            by_subject[subject] = root
        merged.append(root)
    _sort_tree(merged)
    return merged


def _root_subject(root: ThreadNode, messages: Sequence[SortMessage]) -> tuple[str, bool]:
    node = root
    while node.number is None and node.children:
        node = min(node.children, key=_sort_key)
    for msg in messages:
        if msg.number == node.number:
            return base_subject(msg.part.header("Subject"))
    return "", False


def _prune(nodes: list[ThreadNode], *, at_root: bool) -> list[ThreadNode]:
    out: list[ThreadNode] = []
    for node in nodes:
        node.children = _prune(node.children, at_root=False)
        if node.number is None:
            if not node.children:
                continue
            if not at_root or len(node.children) == 1:
                out.extend(node.children)
                continue
        out.append(node)
    return out


def _sort_tree(nodes: list[ThreadNode]) -> None:
    nodes.sort(key=_sort_key)
    for node in nodes:
        _sort_tree(node.children)


def thread_messages(algorithm: str, messages: Sequence[SortMessage]) -> list[ThreadNode]:
    if algorithm == "ORDEREDSUBJECT":
        return _ordered_subject(messages)
    if algorithm == "REFERENCES":
        return _references(messages)
    raise ValueError(f"unknown threading algorithm {algorithm}")


def _render_node(node: ThreadNode) -> str:
    parts: list[str] = []
    cur = node
    while True:
        if cur.number is not None:
            parts.append(str(cur.number))
        if len(cur.children) == 1:
            cur = cur.children[0]
            continue
        parts.extend("(" + _render_node(ch) + ")" for ch in cur.children)
        break
    return " ".join(parts).replace(") (", ")(")


def render_threads(roots: Sequence[ThreadNode]) -> bytes:
    """`* THREAD (2)(3 6 (4 23)(44 7 96))`."""
    text = "".join("(" + _render_node(r) + ")" for r in roots)
    return b"* THREAD" + (b" " + text.encode("ascii") if text else b"") + b"\r\n"

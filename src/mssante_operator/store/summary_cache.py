"""A bounded in-process LRU of decrypted summary parts (`message_summaries`), shared by sessions.

Decrypting a summary part costs an AES key unwrap (the message's content key, with the mailbox
data key) and an AES-GCM decryption: ~5 µs of CPU, paid by every candidate of a header SEARCH and
every message of FETCH ENVELOPE/BODYSTRUCTURE. This cache keeps the plaintexts of recently used
parts so that a repeated SEARCH or FETCH over a large folder costs a dictionary look-up instead.

Freshness and isolation: an entry is found by (part, body id) but only served when the caller's
row carries exactly the bytes the entry was decrypted from: the message's wrapped content key and
the ciphertext's GCM tag (which authenticates nonce, associated data and ciphertext). So a body id
reused after a purge, a summary recomputed with a new nonce, or the same body reached from another
mailbox (another wrapped key) is a miss, decrypted and authenticated again. A hit therefore never
returns anything that decrypting the caller's own row would not have returned.

Security: plaintexts are header data (addresses, subjects) already present in the process while a
command runs; the cache keeps them in memory up to `max_bytes` (an estimate of the entries'
footprint, Python object overhead included), never writes or logs them, and is per process.
`max_bytes = 0` disables it. Content keys are not cached.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Literal

__all__ = ["ENTRY_OVERHEAD", "SummaryCache", "tag_of"]

#: Estimated bytes of bookkeeping per entry besides the plaintext: key tuple, value tuple, the
#: wrapped key (40) and tag (16) bytes objects, the OrderedDict node, object headers (measured
#: with tracemalloc: ~380 bytes).
ENTRY_OVERHEAD = 400

Part = Literal["search", "summary"]


def tag_of(ciphertext: bytes) -> bytes:
    """The GCM tag of a `crypto.encrypt_body` ciphertext (its last 16 bytes)."""
    return bytes(ciphertext[-16:])


class SummaryCache:
    """LRU of (part, body id) -> (wrapped content key, ciphertext tag, plaintext), bounded by
    estimated bytes."""

    __slots__ = ("_entries", "_size", "hits", "max_bytes", "misses")

    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 0:
            raise ValueError("max_bytes must be >= 0")
        self.max_bytes = max_bytes
        self._entries: OrderedDict[tuple[str, int], tuple[bytes, bytes, bytes]] = OrderedDict()
        self._size = 0
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:  # never the contents
        return f"SummaryCache(entries={len(self._entries)}, bytes={self._size}, max_bytes={self.max_bytes})"

    @property
    def size(self) -> int:
        """Estimated bytes held now (always <= max_bytes)."""
        return self._size

    @staticmethod
    def _cost(plain: bytes) -> int:
        return len(plain) + ENTRY_OVERHEAD

    def get(self, part: Part, body_id: int, wrapped: bytes, tag: bytes) -> bytes | None:
        """The plaintext decrypted earlier from a row with this wrapped key and ciphertext tag."""
        key = (part, body_id)
        entry = self._entries.get(key)
        if entry is None or entry[1] != tag or entry[0] != wrapped:
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return entry[2]

    def put(self, part: Part, body_id: int, wrapped: bytes, tag: bytes, plain: bytes) -> None:
        """Remember `plain`, just decrypted and authenticated from a row with `wrapped` and `tag`."""
        cost = self._cost(plain)
        if cost > self.max_bytes:
            return
        key = (part, body_id)
        old = self._entries.pop(key, None)
        if old is not None:
            self._size -= self._cost(old[2])
        self._entries[key] = (bytes(wrapped), tag, plain)
        self._size += cost
        while self._size > self.max_bytes:
            _, evicted = self._entries.popitem(last=False)
            self._size -= self._cost(evicted[2])

    def discard_bodies(self, body_ids: set[int]) -> None:
        """Forget the entries of purged bodies (not needed for correctness, frees memory early)."""
        for part in ("search", "summary"):
            for body_id in body_ids:
                old = self._entries.pop((part, body_id), None)
                if old is not None:
                    self._size -= self._cost(old[2])

    def clear(self) -> None:
        self._entries.clear()
        self._size = 0

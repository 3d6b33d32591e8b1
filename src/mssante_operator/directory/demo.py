"""What `mssante-operator init` needs: a small directory whose entries own the demo mailboxes."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncEngine

from mssante_operator.config import Settings
from mssante_operator.directory.importer import ImportReport, import_files
from mssante_operator.directory.sample import generate_sample, sample_from_demo

# A fixed stamp and seed: the same sample every time, so a second `init` is a no-op import.
DEMO_STAMP = "202601010000"


async def load_demo_directory(
    engine: AsyncEngine, settings: Settings, practitioners: int = 200, out_dir: Path | None = None
) -> ImportReport:
    """Write a small sample that includes the `[demo]` mailboxes and import it (idempotent)."""
    out = out_dir or settings.instance.data_dir / "directory-sample"
    activity, mailbox = generate_sample(
        out, practitioners, seed=0, forced=sample_from_demo(settings.demo), stamp=DEMO_STAMP
    )
    return await import_files(
        engine,
        [activity, mailbox],
        max_reject_rate=settings.directory.max_reject_rate,
        batch_size=settings.directory.batch_size,
    )

"""Import and look-ups on both backends: atomic snapshots, refusals, no-op re-imports, ZIP input."""

from __future__ import annotations

import asyncio
import zipfile
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from directory_data import (
    DR_LEFEVRE,
    DR_MARTIN,
    DR_NGUYEN,
    activity_line,
    base_files,
    mailbox_line,
    write_activity,
    write_mailboxes,
)
from mssante_operator.directory import (
    DecisionCode,
    DirectoryImportError,
    DirectoryMirror,
    generate_sample,
    import_files,
    mirror_health,
)
from mssante_operator.directory import store as dstore
from mssante_operator.directory.importer import Outcome
from mssante_operator.directory.models import DirectorySnapshot
from mssante_operator.store import session_factory
from mssante_operator.store.models import utcnow

MirrorFactory = Callable[..., DirectoryMirror]


@pytest.fixture
async def mirrors(engine: AsyncEngine) -> AsyncIterator[MirrorFactory]:
    """DirectoryMirror instances on the test's engine, closed at the end of the test."""
    made: list[DirectoryMirror] = []

    def make(**options: object) -> DirectoryMirror:
        mirror = DirectoryMirror(engine, **options)  # type: ignore[arg-type]
        made.append(mirror)
        return mirror

    yield make
    for mirror in made:
        await mirror.close()


async def stray_tables(engine: AsyncEngine) -> list[str]:
    """Per-snapshot tables that belong to no active snapshot (there should be none)."""
    async with engine.connect() as conn:
        active = await dstore.active_parts(conn)
        expected = {t.name for part, sid in active.items() for t in dstore.snapshot_tables(sid, part)}
        present = await dstore.existing_snapshot_tables(conn)
    assert expected <= set(present)
    return sorted(set(present) - expected)


async def test_import_then_look_up_everything(
    engine: AsyncEngine, tmp_path: Path, mirrors: MirrorFactory
) -> None:
    report = await import_files(engine, list(base_files(tmp_path)))
    assert report.applied and report.ok
    by_kind = {f.kind.value: f for f in report.files}
    assert (by_kind["activity"].rows_read, by_kind["activity"].rows_loaded) == (4, 4)
    assert (by_kind["mailbox"].rows_read, by_kind["mailbox"].rows_loaded, by_kind["mailbox"].duplicates) == (
        5,
        4,
        1,
    )

    mirror = mirrors()
    martin = await mirror.lookup_national_id("8" + DR_MARTIN)
    assert martin is not None and martin.active and martin.rpps == DR_MARTIN
    assert martin.display_name == "Jean MARTIN" and martin.profession_label == "Médecin"
    assert {a.structure_id for a in martin.activities} == {"1750000018", "312345678901234"}
    assert [(m.address, m.type, m.listerouge) for m in martin.mailboxes] == [
        ("jean.martin@hopital-demo.mssante.test", "PER", False)
    ]
    assert (await mirror.lookup_rpps(DR_MARTIN)) == martin
    assert (await mirror.practitioner_for("8" + DR_MARTIN)) == martin
    nguyen = await mirror.lookup_adeli("751234567")
    assert nguyen is not None and nguyen.adeli == "751234567" and nguyen.last_name == "NGUYEN"
    assert await mirror.lookup_national_id("garbage") is None

    retired = await mirror.lookup_national_id("8" + DR_NGUYEN)
    assert retired is not None and not retired.active and retired.activities == ()

    box = await mirror.lookup_mailbox("Jean.Martin@HOPITAL-demo.mssante.test")
    assert box is not None and box.national_id == "8" + DR_MARTIN and box.source == "file"
    assert await mirror.is_known_mailbox("cardiologie@hopital-demo.mssante.test")
    assert not await mirror.is_known_mailbox("nobody@hopital-demo.mssante.test")
    assert not await mirror.is_known_mailbox("not an address")

    assert [p.national_id for p in await mirror.search_name("lefev")] == ["8" + DR_LEFEVRE]
    assert [p.last_name for p in await mirror.search_name("LEFÈVRE  Hél")] == ["LEFÈVRE"]
    found = await mirror.search_name("lefevre")
    assert found[0].mailboxes[0].address == "helene.lefevre@infirmier.mssante.fr"
    assert await mirror.search_name("zz") == [] and await mirror.search_name("  ") == []
    assert [m.address for m in await mirror.search_mailboxes("cardio")] == [
        "cardiologie@hopital-demo.mssante.test"
    ]

    structure = await mirror.by_structure("1750000018")
    assert structure is not None and structure.name == "CENTRE HOSPITALIER DE TEST"
    assert {p.national_id for p in structure.practitioners} == {
        "8" + DR_MARTIN,
        "8" + DR_LEFEVRE,
        "0751234567",
    }
    assert [m.address for m in structure.mailboxes] == ["cardiologie@hopital-demo.mssante.test"]
    assert await mirror.by_structure("1990000000") is None

    result = await mirror.lookup("750000018")  # a valid ADELI shape, but a FINESS here
    assert result.structure is not None and result.structure.structure_id == "1750000018"
    result = await mirror.lookup("jean.martin@hopital-demo.mssante.test")
    assert result.mailboxes and result.practitioners[0].national_id == "8" + DR_MARTIN

    stats = await mirror.stats()
    assert (stats.activities, stats.practitioners, stats.mailboxes) == (4, 3, 4)
    assert stats.mailboxes_by_type == {"PER": 3, "ORG": 1}
    assert {p.part for p in stats.parts} == {"activity", "mailbox"}
    assert stats.parts[0].source.startswith("PS_LibreAcces_Personne_activite_")

    ok, detail = await mirror_health(engine, 8)
    assert ok and "loaded" in detail
    ok, detail = await mirror_health(session_factory(engine), 1e-9)
    assert not ok and "days old" in detail

    decision = await mirror.decide(
        "jean.martin@hopital-demo.mssante.test", "cardiologie@hopital-demo.mssante.test"
    )
    assert decision.allowed
    decision = await mirror.decide(
        "jean.martin@hopital-demo.mssante.test", "ancien.medecin@medecin.mssante.fr"
    )
    assert not decision.allowed and decision.code is DecisionCode.RECIPIENT_INACTIVE
    decision = await mirror.decide(
        "x@a.mssante.fr", "nobody@b.mssante.fr", sender_national_id="8" + DR_NGUYEN
    )
    assert decision.code is DecisionCode.SENDER_INACTIVE


async def test_reimporting_the_same_content_is_a_no_op(engine: AsyncEngine, tmp_path: Path) -> None:
    files = list(base_files(tmp_path))
    first = await import_files(engine, files)
    again = await import_files(engine, files)
    assert not again.applied and [f.outcome for f in again.files] == [Outcome.UNCHANGED] * 2
    assert {f.snapshot_id for f in again.files} == {f.snapshot_id for f in first.files}
    forced = await import_files(engine, files, force=True)
    assert forced.applied and await stray_tables(engine) == []


async def test_zip_input(engine: AsyncEngine, tmp_path: Path) -> None:
    activity, mailboxes = base_files(tmp_path / "raw")
    archive = tmp_path / "ANS_extraction.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
        z.write(activity, activity.name)
        z.write(mailboxes, mailboxes.name)
    report = await import_files(engine, [archive])
    assert report.applied and all(f.source.startswith(str(archive)) for f in report.files)
    # The same content as plain files is the same snapshot.
    assert not (await import_files(engine, [activity, mailboxes])).applied


async def test_a_new_snapshot_replaces_the_old_one_whole(
    engine: AsyncEngine, tmp_path: Path, mirrors: MirrorFactory
) -> None:
    await import_files(engine, list(base_files(tmp_path / "v1")))
    activity = write_activity(
        tmp_path / "PS_LibreAcces_Personne_activite_202611080000.txt",
        [activity_line(DR_LEFEVRE, "LEFÈVRE", "Hélène"), activity_line(DR_NGUYEN, "NOUVEAU", "Paul")],
    )
    report = await import_files(engine, [activity])
    assert report.applied
    mirror = mirrors()
    assert await mirror.lookup_national_id("8" + DR_MARTIN) is not None  # still has a mailbox line
    martin = await mirror.lookup_national_id("8" + DR_MARTIN)
    assert martin is not None and not martin.active
    nouveau = await mirror.lookup_national_id("8" + DR_NGUYEN)
    assert nouveau is not None and nouveau.active
    assert await stray_tables(engine) == []
    async with engine.connect() as conn:
        statuses = (await conn.execute(select(DirectorySnapshot.part, DirectorySnapshot.status))).all()
    assert sorted(statuses) == [("activity", "active"), ("activity", "retired"), ("mailbox", "active")]


async def test_an_import_above_the_rejection_limit_is_refused(
    engine: AsyncEngine, tmp_path: Path, mirrors: MirrorFactory
) -> None:
    await import_files(engine, list(base_files(tmp_path / "v1")))
    bad = write_activity(
        tmp_path / "PS_LibreAcces_Personne_activite_202611080000.txt",
        [activity_line(DR_NGUYEN, "NOUVEAU", "Paul"), activity_line("123", "FAUX", "Numéro")],
    )
    good_mailboxes = write_mailboxes(
        tmp_path / "Extraction_Correspondance_MSSante_202611080000.txt",
        [mailbox_line("PER", "paul.nouveau@medecin.mssante.fr", national_id="8" + DR_NGUYEN)],
    )
    report = await import_files(engine, [bad, good_mailboxes], max_reject_rate=0.01)
    assert not report.applied and not report.ok
    activity_report = next(f for f in report.files if f.kind.value == "activity")
    assert activity_report.outcome is Outcome.REFUSED and "above the limit" in activity_report.message
    assert (
        activity_report.rejections[0].line == 3 and "Identifiant PP" in activity_report.rejections[0].reason
    )
    mirror = mirrors(refresh_seconds=0)
    assert (await mirror.lookup_national_id("8" + DR_MARTIN)) is not None
    assert not await mirror.is_known_mailbox("paul.nouveau@medecin.mssante.fr")
    assert await stray_tables(engine) == []
    # The same file under a laxer limit goes in.
    assert (await import_files(engine, [bad, good_mailboxes], max_reject_rate=0.6)).applied
    assert await mirror.is_known_mailbox("paul.nouveau@medecin.mssante.fr")


async def test_a_file_without_data_is_refused(
    engine: AsyncEngine, tmp_path: Path, mirrors: MirrorFactory
) -> None:
    await import_files(engine, list(base_files(tmp_path / "v1")))
    empty = write_activity(tmp_path / "PS_LibreAcces_Personne_activite_202611080000.txt", [])
    report = await import_files(engine, [empty])
    assert not report.applied and "no usable data line" in report.files[0].message
    assert await mirrors().lookup_national_id("8" + DR_MARTIN) is not None


async def test_a_broken_archive_fails_and_leaves_the_mirror(
    engine: AsyncEngine, tmp_path: Path, mirrors: MirrorFactory
) -> None:
    await import_files(engine, list(base_files(tmp_path / "v1")))
    activity, _ = generate_sample(tmp_path / "v2", 200, stamp="202611080000")
    archive = tmp_path / "broken.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as z:
        z.write(activity, activity.name)
    data = bytearray(archive.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 4] = b"ZZZZ"  # bad CRC, noticed only at the end of the member
    archive.write_bytes(bytes(data))
    with pytest.raises(DirectoryImportError, match="read error"):
        await import_files(engine, [archive])
    assert await mirrors().lookup_national_id("8" + DR_MARTIN) is not None
    assert await stray_tables(engine) == []


async def test_two_files_of_one_kind_and_bad_headers_are_refused_up_front(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    a, _ = base_files(tmp_path / "a", "202611010000")
    b, _ = base_files(tmp_path / "b", "202611020000")
    with pytest.raises(DirectoryImportError, match="two activity files"):
        await import_files(engine, [a, b])
    wrong = tmp_path / "PS_LibreAcces_Personne_activite_202611030000.txt"
    wrong.write_text("Type de BAL|Adresse BAL|\n", encoding="utf-8")
    with pytest.raises(DirectoryImportError, match="header is that of a Extraction_Correspondance_MSSante"):
        await import_files(engine, [wrong])
    async with engine.connect() as conn:
        assert (await conn.execute(select(func.count()).select_from(DirectorySnapshot))).scalar_one() == 0


async def test_readers_see_the_old_or_the_new_mirror_never_half(
    engine: AsyncEngine, tmp_path: Path, mirrors: MirrorFactory
) -> None:
    await import_files(engine, list(base_files(tmp_path / "v1")))
    activity, _ = generate_sample(tmp_path / "v2", 600, stamp="202611080000")
    mirror = mirrors(cache_size=0, refresh_seconds=0)
    seen: set[int] = set()
    task = asyncio.create_task(import_files(engine, [activity], batch_size=50))
    while not task.done():
        stats = await mirror.stats()
        seen.add(stats.activities)
        await asyncio.sleep(0)
    report = task.result()
    new_count = report.files[0].rows_loaded
    assert new_count > 600
    seen.add((await mirror.stats()).activities)
    assert seen <= {4, new_count} and new_count in seen


async def test_the_cache_follows_a_snapshot_switch(
    engine: AsyncEngine, tmp_path: Path, mirrors: MirrorFactory
) -> None:
    await import_files(engine, list(base_files(tmp_path / "v1")))
    fresh = mirrors(refresh_seconds=0)
    lazy = mirrors(refresh_seconds=3600)
    for m in (fresh, lazy):
        assert await m.is_known_mailbox("cardiologie@hopital-demo.mssante.test")
    mailboxes = write_mailboxes(
        tmp_path / "Extraction_Correspondance_MSSante_202611080000.txt",
        [mailbox_line("PER", "paul.nouveau@medecin.mssante.fr", national_id="8" + DR_NGUYEN)],
    )
    assert (await import_files(engine, [mailboxes])).applied
    assert not await fresh.is_known_mailbox("cardiologie@hopital-demo.mssante.test")
    assert await lazy.is_known_mailbox("cardiologie@hopital-demo.mssante.test")  # cached within its window
    lazy.invalidate()
    assert not await lazy.is_known_mailbox("cardiologie@hopital-demo.mssante.test")


async def test_an_empty_mirror(engine: AsyncEngine, mirrors: MirrorFactory) -> None:
    mirror = mirrors()
    assert await mirror.lookup_national_id("8" + DR_MARTIN) is None
    assert await mirror.search_name("martin") == []
    assert (await mirror.stats()).parts == ()
    ok, detail = await mirror_health(engine, 8)
    assert not ok and "empty" in detail
    decision = await mirror.decide("a@x.mssante.fr", "b@y.mssante.fr", sender_national_id="8" + DR_MARTIN)
    assert not decision.allowed and decision.temporary


async def test_rows_left_by_a_crashed_import_are_purged(engine: AsyncEngine, tmp_path: Path) -> None:
    stale = await dstore.create_snapshot(engine, dstore.Part.ACTIVITY, "crashed.txt", None)
    async with engine.connect() as conn:
        loader = await dstore.BulkLoader.open(conn)
        from mssante_operator.directory.formats import PractitionerRow

        empty = dict.fromkeys(PractitionerRow._fields)
        row = PractitionerRow(**{**empty, "national_id": "8" + DR_MARTIN, "id_type": "8", "last_name": "X",
                                 "search_key": "x", "active": True})  # fmt: skip
        await loader.practitioners(stale, [row])
        await loader.close()
    async with engine.begin() as conn:
        await conn.execute(
            update(DirectorySnapshot)
            .where(DirectorySnapshot.id == stale)
            .values(started_at=utcnow() - timedelta(days=1))
        )
    assert await stray_tables(engine) != []
    await import_files(engine, list(base_files(tmp_path)))
    assert await stray_tables(engine) == []


async def test_a_reader_with_stale_pointers_recovers_after_the_old_tables_are_dropped(
    engine: AsyncEngine, tmp_path: Path, mirrors: MirrorFactory
) -> None:
    await import_files(engine, list(base_files(tmp_path / "v1")))
    stale = mirrors(cache_size=0, refresh_seconds=3600)
    assert await stale.is_known_mailbox("cardiologie@hopital-demo.mssante.test")
    mailboxes = write_mailboxes(
        tmp_path / "Extraction_Correspondance_MSSante_202611080000.txt",
        [mailbox_line("PER", "paul.nouveau@medecin.mssante.fr", national_id="8" + DR_NGUYEN)],
    )
    assert (await import_files(engine, [mailboxes])).applied  # drops the tables `stale` points at
    assert await stale.is_known_mailbox("paul.nouveau@medecin.mssante.fr")
    assert (await stale.stats()).mailboxes == 1


async def test_downgrade_drops_the_snapshot_tables(
    engine: AsyncEngine, tmp_path: Path, mirrors: MirrorFactory
) -> None:
    from mssante_operator.store import downgrade, upgrade

    await import_files(engine, list(base_files(tmp_path)))
    await downgrade(engine, "0001")
    async with engine.connect() as conn:
        assert await dstore.existing_snapshot_tables(conn) == []
    await upgrade(engine)
    assert not await mirrors().is_loaded()


async def test_look_ups_use_indexes(engine: AsyncEngine, tmp_path: Path) -> None:
    """Every look-up of the mail path must be an index search, never a scan of two million rows."""
    from mssante_operator.directory.models import mailboxes_table, practitioners_table

    await import_files(engine, list(base_files(tmp_path)))
    async with engine.connect() as conn:
        active = await dstore.active_parts(conn)
        people, boxes = practitioners_table(active["activity"]).name, mailboxes_table(active["mailbox"]).name
        queries = [
            f"SELECT * FROM {boxes} WHERE address = 'a@b.fr'",
            f"SELECT * FROM {boxes} WHERE national_id = '810000000009'",
            f"SELECT * FROM {boxes} WHERE structure_id = '1750000018'",
            f"SELECT * FROM {people} WHERE national_id = '810000000009'",
            f"SELECT * FROM {people} WHERE structure_id = '1750000018'",
        ]
        if engine.dialect.name == "sqlite":
            queries.append(f"SELECT * FROM {people} WHERE search_key >= 'mar' AND search_key < 'mar\x7f'")
            for sql in queries:
                plan = " ".join(
                    str(row[-1]) for row in (await conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}"))
                )
                assert "USING INDEX" in plan, (sql, plan)
        else:
            prefix = "search_key >= 'mar' AND search_key < 'mar\x7f'"
            queries.append(f"SELECT * FROM {people} WHERE {prefix} ORDER BY search_key LIMIT 20")
            await conn.exec_driver_sql("SET enable_seqscan = off")
            for sql in queries:
                plan = " ".join(str(row[0]) for row in (await conn.exec_driver_sql(f"EXPLAIN {sql}")))
                assert "Index" in plan, (sql, plan)
            # The name search's order comes from the index: no sort of every match of a short prefix.
            assert "Sort" not in plan, plan

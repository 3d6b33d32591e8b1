"""LDAP synchronisation against a real OpenLDAP slapd (StartTLS, ldaps, client certificate, incremental)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import ldap3
import pytest
from pydantic import SecretStr
from sqlalchemy.ext.asyncio import AsyncEngine

from directory_data import DR_LEFEVRE, DR_MARTIN, DR_NGUYEN
from mssante_operator.config.models import DirectoryLdapSettings, LdapAttributeMap
from mssante_operator.directory import DirectoryMirror
from mssante_operator.directory.formats import RowError
from mssante_operator.directory.ldap_map import LdapEntry, later_timestamp, map_entry
from mssante_operator.directory.ldap_sync import LdapClient, LdapSyncError, sync_ldap
from slapd_server import ADMIN_DN, ADMIN_PASSWORD, BASE, SYNC_DN, SYNC_PASSWORD, Slapd, running_slapd

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


DOMAIN = "hopital-demo.mssante.test"
MAPPING = LdapAttributeMap(
    national_id="employeeNumber",
    structure_id="departmentNumber",
    mailbox_type="employeeType",
    listerouge="businessCategory",
)


@pytest.fixture(scope="module")
def slapd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Slapd]:
    with running_slapd(tmp_path_factory.mktemp("slapd")) as server:
        with admin(server) as conn:
            conn.add(BASE, ["dcObject", "organization"], {"o": "Hopital Demo", "dc": "hopital"})
            conn.add(f"ou=services,{BASE}", ["organizationalUnit"], {"ou": "services"})
            conn.add(
                SYNC_DN,
                ["inetOrgPerson"],
                {"cn": "mssante-sync", "sn": "sync", "userPassword": SYNC_PASSWORD},
            )
            assert conn.result["result"] == 0, conn.result
        yield server


class admin:
    """A bound admin connection, as a context manager."""

    def __init__(self, server: Slapd) -> None:
        self.conn = ldap3.Connection(ldap3.Server(server.ldap_url), ADMIN_DN, ADMIN_PASSWORD, auto_bind=True)

    def __enter__(self) -> ldap3.Connection:
        return self.conn

    def __exit__(self, *exc: object) -> None:
        self.conn.unbind()


def person(conn: ldap3.Connection, parent: str, uid: str, **attrs: object) -> str:
    dn = f"uid={uid},{parent}"
    values: dict[str, object] = {"cn": uid, "sn": uid.title()}
    values.update(attrs)
    conn.add(dn, ["inetOrgPerson"], values)
    assert conn.result["result"] == 0, conn.result
    return dn


def new_ou(server: Slapd, name: str) -> str:
    """A fresh subtree with three entries; each test (and backend) gets its own."""
    name = f"{name}-{uuid.uuid4().hex[:8]}"
    ou = f"ou={name},{BASE}"
    with admin(server) as conn:
        conn.add(ou, ["organizationalUnit"], {"ou": name})
        assert conn.result["result"] == 0, conn.result
        person(conn, ou, "jmartin", sn="MARTIN", givenName="Jean", employeeNumber="8" + DR_MARTIN,
               mail=[f"jean.martin@{DOMAIN}", "jean.martin@gmail.example"], title="Médecin",
               departmentNumber="1750000018", o="CH Démo")  # fmt: skip
        person(conn, ou, "hlefevre", sn="LEFÈVRE", givenName="Hélène", employeeNumber="8" + DR_LEFEVRE,
               mail=f"helene.lefevre@{DOMAIN}", businessCategory="TRUE")  # fmt: skip
        person(conn, ou, "cardio", sn="Cardiologie", mail=f"cardiologie@{DOMAIN}", employeeType="ORG",
               departmentNumber="1750000018", ou="Cardiologie")  # fmt: skip
    return ou


def settings(server: Slapd, base_dn: str, **overrides: object) -> DirectoryLdapSettings:
    values: dict[str, object] = {
        "url": server.ldap_url,
        "start_tls": True,
        "bind_dn": SYNC_DN,
        "bind_password": SecretStr(SYNC_PASSWORD),
        "ca_file": server.pki.ca_file,
        "base_dn": base_dn,
        "filter": "(objectClass=inetOrgPerson)",
        "page_size": 2,
        "timeout_seconds": 5,
        "mailbox_domains": [DOMAIN],
        "attributes": MAPPING,
    }
    values.update(overrides)
    return DirectoryLdapSettings.model_validate(values)


async def test_full_sync_over_starttls_with_simple_bind(
    engine: AsyncEngine, slapd: Slapd, mirrors: MirrorFactory
) -> None:
    ou = new_ou(slapd, "full")
    report = await sync_ldap(engine, settings(slapd, ou))
    assert report.applied and report.mode == "full" and report.entries == 3 and report.rejected == 0
    assert (report.practitioners, report.mailboxes) == (2, 3)
    assert report.high_water is not None and report.high_water.endswith("Z")
    mirror = mirrors()
    martin = await mirror.lookup_national_id("8" + DR_MARTIN)
    assert martin is not None and martin.active and martin.last_name == "MARTIN"
    assert martin.activities[0].source == "ldap" and martin.activities[0].structure_id == "1750000018"
    assert [m.address for m in martin.mailboxes] == [f"jean.martin@{DOMAIN}"]  # the gmail one is not MSSanté
    lefevre = await mirror.lookup_mailbox(f"helene.lefevre@{DOMAIN}")
    assert lefevre is not None and lefevre.listerouge and lefevre.type == "PER"
    cardio = await mirror.lookup_mailbox(f"cardiologie@{DOMAIN}")
    assert cardio is not None and cardio.type == "ORG" and cardio.structure_id == "1750000018"
    assert [p.national_id for p in await mirror.search_name("lefevre h")] == ["8" + DR_LEFEVRE]
    stats = await mirror.stats()
    assert [p.part for p in stats.parts] == ["ldap"] and stats.parts[0].source.startswith(slapd.ldap_url)


async def test_incremental_sync_fetches_only_changed_entries(
    engine: AsyncEngine, slapd: Slapd, mirrors: MirrorFactory
) -> None:
    ou = new_ou(slapd, "incremental")
    with admin(slapd) as conn:
        gone = person(conn, ou, "parti", sn="PARTI", employeeNumber="8" + DR_NGUYEN, mail=f"parti@{DOMAIN}")
    await asyncio.sleep(1.1)  # modifyTimestamp has a one-second resolution
    with admin(slapd) as conn:
        conn.modify(f"uid=cardio,{ou}", {"description": [(ldap3.MODIFY_REPLACE, ["touched"])]})
    cfg = settings(slapd, ou)
    first = await sync_ldap(engine, cfg)
    assert first.mode == "full" and first.entries == 4
    await asyncio.sleep(1.1)
    with admin(slapd) as conn:
        conn.modify(f"uid=jmartin,{ou}", {"sn": [(ldap3.MODIFY_REPLACE, ["MARTIN-DURAND"])]})
        person(conn, ou, "nouveau", sn="NOUVEAU", givenName="Paul", employeeNumber="0751234567",
               mail=f"paul.nouveau@{DOMAIN}")  # fmt: skip
        conn.delete(gone)
    second = await sync_ldap(engine, cfg)
    assert second.applied and second.mode == "incremental"
    # The entry at the previous high-water mark, the modified one and the new one; not the others.
    assert second.entries == 3, second
    mirror = mirrors(refresh_seconds=0, cache_size=0)
    martin = await mirror.lookup_national_id("8" + DR_MARTIN)
    assert martin is not None and martin.last_name == "MARTIN-DURAND"
    assert await mirror.is_known_mailbox(f"paul.nouveau@{DOMAIN}")
    # The deleted entry is seen by the DN listing of the incremental run itself.
    assert second.deleted == 1, second
    assert not await mirror.is_known_mailbox(f"parti@{DOMAIN}")
    assert await mirror.lookup_national_id("8" + DR_NGUYEN) is None
    assert await mirror.is_known_mailbox(f"helene.lefevre@{DOMAIN}")  # untouched entries stay
    third = await sync_ldap(engine, cfg, full=True)
    assert third.mode == "full" and third.applied
    assert not await mirror.is_known_mailbox(f"parti@{DOMAIN}")
    assert (await mirror.lookup_national_id("8" + DR_MARTIN)) is not None


async def test_incremental_sync_drops_entries_renamed_moved_or_filtered_out(
    engine: AsyncEngine, slapd: Slapd, mirrors: MirrorFactory
) -> None:
    ou = new_ou(slapd, "moves")
    elsewhere = new_ou(slapd, "elsewhere")
    with admin(slapd) as conn:
        person(conn, ou, "parti", sn="PARTI", employeeNumber="8" + DR_NGUYEN, mail=f"parti@{DOMAIN}")
    cfg = settings(slapd, ou, filter="(&(objectClass=inetOrgPerson)(!(businessCategory=ARCHIVE)))")
    first = await sync_ldap(engine, cfg)
    assert first.mode == "full" and first.entries == 4
    mirror = mirrors(refresh_seconds=0, cache_size=0)
    assert await mirror.is_known_mailbox(f"parti@{DOMAIN}")
    await asyncio.sleep(1.1)
    with admin(slapd) as conn:
        # Moved out of the base DN: its modifyTimestamp changes, but under a DN outside the search.
        conn.modify_dn(f"uid=parti,{ou}", "uid=parti", new_superior=elsewhere)
        assert conn.result["result"] == 0, conn.result
        # Renamed inside the base DN: the new DN comes as a change, the old one must go.
        conn.modify_dn(f"uid=cardio,{ou}", "uid=cardiologie")
        assert conn.result["result"] == 0, conn.result
        # No longer matching the filter.
        conn.modify(f"uid=hlefevre,{ou}", {"businessCategory": [(ldap3.MODIFY_REPLACE, ["ARCHIVE"])]})
        assert conn.result["result"] == 0, conn.result
    second = await sync_ldap(engine, cfg)
    assert second.applied and second.mode == "incremental", second
    assert second.deleted == 3, second
    assert not await mirror.is_known_mailbox(f"parti@{DOMAIN}")
    assert not await mirror.is_known_mailbox(f"helene.lefevre@{DOMAIN}")
    cardio = await mirror.lookup_mailbox(f"cardiologie@{DOMAIN}")
    assert cardio is not None and cardio.type == "ORG"
    assert await mirror.lookup_national_id("8" + DR_MARTIN) is not None
    # Nothing changed since: a third run deletes nothing and keeps the rest.
    third = await sync_ldap(engine, cfg)
    assert third.mode == "incremental" and third.applied and third.deleted == 0, third
    assert await mirror.is_known_mailbox(f"cardiologie@{DOMAIN}")
    stats = await mirror.stats()
    assert stats.mailboxes == 2  # jean.martin and cardiologie


async def test_incremental_sync_refuses_when_the_server_lists_nothing(
    engine: AsyncEngine, slapd: Slapd, mirrors: MirrorFactory
) -> None:
    ou = new_ou(slapd, "vanished")
    cfg = settings(slapd, ou)
    assert (await sync_ldap(engine, cfg)).applied
    with admin(slapd) as conn:
        for uid in ("jmartin", "hlefevre", "cardio"):
            conn.delete(f"uid={uid},{ou}")
            assert conn.result["result"] == 0, conn.result
    report = await sync_ldap(engine, cfg)
    assert report.mode == "incremental" and not report.applied and report.refused, report
    assert "lists no entry" in report.message
    mirror = mirrors(refresh_seconds=0, cache_size=0)
    assert await mirror.is_known_mailbox(f"cardiologie@{DOMAIN}")
    assert await mirror.lookup_national_id("8" + DR_MARTIN) is not None


async def test_ldaps_with_a_client_certificate(engine: AsyncEngine, slapd: Slapd) -> None:
    ou = new_ou(slapd, "ldaps")
    cfg = settings(
        slapd,
        ou,
        url=slapd.ldaps_url,
        bind_dn=None,
        bind_password=None,
        client_cert=slapd.pki.client_cert,
        client_key=slapd.pki.client_key,
    )
    client = await asyncio.to_thread(LdapClient(cfg).open)
    try:
        assert (await asyncio.to_thread(client.whoami)).lower() == f"dn:{SYNC_DN}".lower()
    finally:
        client.close()
    report = await sync_ldap(engine, cfg)
    assert report.applied and report.entries == 3


async def test_an_unknown_server_certificate_is_refused(
    engine: AsyncEngine, slapd: Slapd, mirrors: MirrorFactory
) -> None:
    ou = new_ou(slapd, "badca")
    assert (await sync_ldap(engine, settings(slapd, ou))).applied
    for url in (slapd.ldap_url, slapd.ldaps_url):
        with pytest.raises(LdapSyncError, match="cannot connect and bind"):
            await sync_ldap(engine, settings(slapd, ou, url=url, ca_file=slapd.pki.other_ca_file))
    assert await mirrors().is_known_mailbox(f"cardiologie@{DOMAIN}")


async def test_bad_credentials(engine: AsyncEngine, slapd: Slapd) -> None:
    with pytest.raises(LdapSyncError, match="invalidCredentials"):
        await sync_ldap(engine, settings(slapd, BASE, bind_password=SecretStr("wrong")))


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A TCP server that accepts and never answers: an LDAP server that hangs."""
    yield from _tcp_server(b"")


@pytest.fixture
def garbage_server() -> Iterator[int]:
    """A TCP server that answers anything with bytes that are not LDAP."""
    yield from _tcp_server(b"\x30\x05\x02\x01\x01\x61\xff" + b"HTTP/1.1 400 Bad Request\r\n\r\n" * 4)


def _tcp_server(reply: bytes) -> Iterator[int]:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                client = listener.accept()[0]
            except OSError:
                continue
            accepted.append(client)
            if reply:
                with contextlib.suppress(OSError):
                    client.recv(4096)
                    client.sendall(reply)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield int(listener.getsockname()[1])
    finally:
        stop.set()
        thread.join()
        for s in accepted:
            s.close()
        listener.close()


async def test_down_or_hanging_servers_leave_the_mirror(
    engine: AsyncEngine, slapd: Slapd, silent_server: int, mirrors: MirrorFactory
) -> None:
    ou = new_ou(slapd, "down")
    assert (await sync_ldap(engine, settings(slapd, ou))).applied
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    with pytest.raises(LdapSyncError, match="cannot connect"):
        await sync_ldap(engine, settings(slapd, ou, url=f"ldap://127.0.0.1:{closed_port}"))
    started = time.monotonic()
    with pytest.raises(LdapSyncError, match="cannot connect"):
        await sync_ldap(
            engine, settings(slapd, ou, url=f"ldap://127.0.0.1:{silent_server}", timeout_seconds=1)
        )
    assert time.monotonic() - started < 30
    assert await mirrors().is_known_mailbox(f"cardiologie@{DOMAIN}")


async def test_a_server_answering_garbage_is_reported(
    engine: AsyncEngine, garbage_server: int, mirrors: MirrorFactory
) -> None:
    cfg = DirectoryLdapSettings(
        url=f"ldap://127.0.0.1:{garbage_server}", start_tls=False, base_dn=BASE, timeout_seconds=2
    )
    with pytest.raises(LdapSyncError, match=f"127.0.0.1:{garbage_server}"):
        await sync_ldap(engine, cfg)
    assert not await mirrors().is_loaded()


async def test_garbage_entries_are_rejected_and_can_refuse_the_sync(
    engine: AsyncEngine, slapd: Slapd, mirrors: MirrorFactory
) -> None:
    ou = new_ou(slapd, "garbage")
    with admin(slapd) as conn:
        person(conn, ou, "faux", sn="FAUX", employeeNumber="81234", mail=f"faux@{DOMAIN}")
    refused = await sync_ldap(engine, settings(slapd, ou))
    assert refused.refused and not refused.applied and "above the limit" in refused.message
    assert refused.rejections[0].startswith(f"uid=faux,{ou}") and "national id" in refused.rejections[0]
    assert not await mirrors().is_loaded()
    accepted = await sync_ldap(engine, settings(slapd, ou), max_reject_rate=0.5)
    assert accepted.applied and accepted.rejected == 1 and accepted.entries == 4


async def test_an_empty_search_does_not_empty_the_mirror(
    engine: AsyncEngine, slapd: Slapd, mirrors: MirrorFactory
) -> None:
    ou = new_ou(slapd, "empty")
    assert (await sync_ldap(engine, settings(slapd, ou))).applied
    report = await sync_ldap(engine, settings(slapd, ou, filter="(uid=nobody)", incremental=False))
    assert report.refused and "no entry" in report.message
    assert await mirrors().is_known_mailbox(f"cardiologie@{DOMAIN}")


# -- the mapping alone (no server) ---------------------------------------------------------------


def entry(**attrs: list[bytes]) -> LdapEntry:
    return LdapEntry("uid=x,dc=test", {k.lower(): v for k, v in attrs.items()})


def test_mapping_variants() -> None:
    mapping = LdapAttributeMap(
        national_id=None, rpps="rpps", active="userAccountControl", listerouge="hidden"
    )
    mapped = map_entry(
        entry(rpps=[DR_MARTIN.encode()], sn=[b"MARTIN"], mail=[b"JM@X.FR"], userAccountControl=[b"514"]),
        mapping,
    )
    assert mapped.practitioner is not None and mapped.practitioner.national_id == "8" + DR_MARTIN
    assert not mapped.practitioner.active  # 514 = disabled account
    assert [m.address for m in mapped.mailboxes] == ["jm@x.fr"]
    assert map_entry(entry(employeeNumber=[DR_MARTIN.encode()], sn=[b"M"]), LdapAttributeMap()).practitioner
    ad = map_entry(
        entry(employeeNumber=[DR_MARTIN.encode()], sn=[b"M"],
              proxyAddresses=[b"SMTP:jm@chu.mssante.fr", b"smtp:alias@chu.mssante.fr", b"X500:/o=x/cn=y"]),
        LdapAttributeMap(mailbox="proxyAddresses"),
    )  # fmt: skip
    assert [m.address for m in ad.mailboxes] == ["jm@chu.mssante.fr", "alias@chu.mssante.fr"]


@pytest.mark.parametrize(
    ("attrs", "message"),
    [
        ({"sn": [b"X"]}, "neither a national id nor an MSSanté mailbox"),
        ({"employeeNumber": [b"812"], "sn": [b"X"]}, "national id"),
        ({"employeeNumber": [("8" + DR_MARTIN).encode()]}, "last name"),
        ({"employeeNumber": [("8" + DR_MARTIN).encode()], "sn": [b"\xff\xfe"]}, "not UTF-8"),
        ({"mail": [b"a@b.fr"], "sn": [b"X"]}, "without a structure id"),
        ({"mail": [b"not-an-address"], "employeeNumber": [("8" + DR_MARTIN).encode()], "sn": [b"X"]}, "mail"),
        ({"employeeNumber": [("8" + DR_MARTIN).encode()], "sn": [b"X" * 300]}, "longer than 200"),
    ],
)
def test_unusable_entries_are_explained(attrs: dict[str, list[bytes]], message: str) -> None:
    with pytest.raises(RowError, match=message):
        map_entry(entry(**attrs), LdapAttributeMap())


def test_high_water_keeps_the_latest_valid_timestamp() -> None:
    assert later_timestamp(None, "20261122010203Z") == "20261122010203Z"
    assert later_timestamp("20261122010203Z", "20261122010202.0Z") == "20261122010203Z"
    assert later_timestamp("20261122010203Z", "garbage") == "20261122010203Z"
    assert later_timestamp("20261122010203Z", "20261122010204Z") == "20261122010204Z"


def test_ldap_url_is_validated() -> None:
    with pytest.raises(ValueError, match="ldap:// or ldaps://"):
        DirectoryLdapSettings(url="http://x")


def test_paths_are_used_as_given(tmp_path: Path) -> None:
    cfg = DirectoryLdapSettings(url="ldaps://h", ca_file=tmp_path / "ca.pem")
    assert cfg.ca_file == tmp_path / "ca.pem"

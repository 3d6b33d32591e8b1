"""`mssante-operator init`: prepare an instance from its configuration, idempotently.

For the demo (`config/dev.toml`) this makes everything `serve` needs: the data directory, the
master key, the dev PKI and this operator's certificate, the migrated store, the demo domain and
mailboxes. Running it again reuses what exists and creates only what is missing.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from mssante_operator.accounts import hash_password, validate_new_mailbox
from mssante_operator.config import Settings
from mssante_operator.directory.demo import load_demo_directory
from mssante_operator.pki.devpki import DevPki
from mssante_operator.store import create_engine, schema_state, session_factory, upgrade
from mssante_operator.store.crypto import MasterKey
from mssante_operator.store.mailstore import MailStore
from mssante_operator.trust.sample import certificate_subject, install_sample_list


@dataclass
class InitReport:
    """What `init` did, step by step, for the operator to read."""

    steps: list[str] = field(default_factory=list)

    def note(self, text: str) -> None:
        self.steps.append(text)


def prepare_instance(settings: Settings) -> InitReport:
    """Run every step; files first (key, PKI), then the store."""
    report = InitReport()
    master_key = _prepare_files(settings, report)
    asyncio.run(_prepare_store(settings, master_key, report))
    return report


def _prepare_files(settings: Settings, report: InitReport) -> MasterKey:
    data_dir = Path(settings.instance.data_dir)
    if not data_dir.exists():
        data_dir.mkdir(parents=True, mode=0o700)
        report.note(f"created data directory {data_dir}")

    key_path = Path(settings.store.master_key_file)
    existed = key_path.exists()
    master_key = MasterKey.load_or_generate(key_path)
    report.note(
        f"master key {'kept' if existed else 'created'}: {key_path} (fingerprint {master_key.fingerprint})"
    )

    if settings.pki.dev_ca_dir is not None:
        had_cert = settings.pki.server_cert.exists()
        DevPki.init(
            settings.pki.dev_ca_dir,
            server_hostname=settings.instance.hostname,
            server_cert=settings.pki.server_cert,
            server_key=settings.pki.server_key,
        )
        action = "kept or renewed" if had_cert else "issued"
        report.note(
            f"dev PKI ready in {settings.pki.dev_ca_dir}; "
            f"server certificate for {settings.instance.hostname} {action}"
        )
    return master_key


async def _prepare_store(settings: Settings, master_key: MasterKey, report: InitReport) -> None:
    engine = create_engine(settings.store.url.get_secret_value(), pool_size=settings.store.pool_size)
    try:
        before = (await schema_state(engine)).current
        await upgrade(engine)
        state = await schema_state(engine)
        report.note(
            f"store schema at {state.current}"
            + ("" if before == state.current else f" (was {before or 'empty'})")
        )
        sessions = session_factory(engine)
        store = MailStore(sessions, master_key)
        await _demo_accounts(settings, store, report)
        await _demo_trust_list(settings, sessions, report)
        if settings.demo.domain is not None:
            directory = await load_demo_directory(engine, settings)
            if not directory.ok:
                raise ValueError(f"demo directory import refused: {directory.message}")
            if directory.applied:
                report.note("sample national directory loaded (the demo mailboxes belong to its entries)")
    finally:
        await engine.dispose()


async def _demo_trust_list(
    settings: Settings, sessions: async_sessionmaker[AsyncSession], report: InitReport
) -> None:
    """The demo's trust list: its own domain bound to its server certificate, and the peers."""
    demo = settings.demo
    if demo.domain is None:
        return
    own = certificate_subject(settings.pki.server_cert)
    entries = [(demo.domain, own), *((p.domain, p.dn) for p in demo.peer_operators)]
    result = await install_sample_list(sessions, entries)
    if result.changed:
        report.note(f"sample trust list installed ({len(entries)} entries)")


async def _demo_accounts(settings: Settings, store: MailStore, report: InitReport) -> None:
    demo = settings.demo
    if demo.domain is None:
        return
    if await store.get_domain(demo.domain) is None:
        await store.add_domain(demo.domain)
        report.note(f"domain {demo.domain} added")
    for spec in demo.mailboxes:
        new = validate_new_mailbox(
            spec.address, spec.type, owner_national_id=spec.owner, structure_id=spec.structure_id
        )
        if await store.get_mailbox(new.address) is not None:
            continue
        password = spec.password.get_secret_value() if spec.password is not None else None
        password_hash = None
        if password and spec.type in settings.policy.auth.password_allowed_types:
            password_hash = hash_password(password)
        await store.add_mailbox(
            new.address,
            new.type,
            owner_national_id=new.owner_national_id,
            structure_id=new.structure_id,
            display_name=new.display_name,
            password_hash=password_hash,
        )
        report.note(
            f"mailbox {new.address} ({new.type.value}) created" + (" with password" if password_hash else "")
        )

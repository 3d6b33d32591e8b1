"""Latency and throughput of Authenticator.authenticate per mechanism (SQLite store, one process).

Run: .venv/bin/python bench/auth.py [N]. Measures EXTERNAL (personal certificate already
validated), OAUTHBEARER (JWT from a local HTTPS issuer, JWKS cached) and PLAIN (argon2id), each
sequentially (latency) and with 20 concurrent callers (throughput). Targets: EXTERNAL and bearer
well under 5 ms each, so authentication adds little to a submission; PLAIN is bounded by argon2
by design (tens of ms of CPU and 64 MiB per check).
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from mssante_operator.accounts import hash_password
from mssante_operator.auth import (
    Authenticator,
    BearerCredentials,
    ClientContext,
    ExternalCredentials,
    Mechanism,
    PasswordCredentials,
)
from mssante_operator.config.models import (
    AuthPolicySettings,
    AuthSettings,
    MailboxType,
    PolicySettings,
    RateLimitPolicy,
    RateLimitSettings,
)
from mssante_operator.pki.devpki import DevPki
from mssante_operator.pki.loading import load_certificates
from mssante_operator.pki.validation import CertificateValidator, Usage
from mssante_operator.store import create_engine, session_factory, upgrade
from mssante_operator.store.crypto import MasterKey
from mssante_operator.store.mailstore import MailStore

TESTS_DIR = str(Path(__file__).resolve().parent.parent / "tests")
PERSON = "810000000009"
ADDRESS = "jean.martin@bench.mssante.test"
PASSWORD = "bench password 1234"


async def measure(label: str, count: int, call: Callable[[], Awaitable[bool]]) -> None:
    latencies = []
    for _ in range(count):
        start = time.perf_counter()
        assert await call()
        latencies.append((time.perf_counter() - start) * 1e3)
    concurrent = 20
    per_task = max(1, count // concurrent)

    async def worker() -> None:
        for _ in range(per_task):
            assert await call()

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrent)))
    rate = concurrent * per_task / (time.perf_counter() - start)
    p50 = statistics.median(latencies)
    p99 = sorted(latencies)[int(len(latencies) * 0.99) - 1]
    print(f"{label:12} p50 {p50:7.2f} ms  p99 {p99:7.2f} ms  {rate:8.0f}/s with {concurrent} concurrent")


async def main(count: int) -> None:
    sys.path.insert(0, TESTS_DIR)  # the local HTTPS issuer of the tests
    from oidc_fixtures import LocalIssuer

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        engine = create_engine(f"sqlite+aiosqlite:///{tmp / 'store.db'}")
        await upgrade(engine)
        store = MailStore(session_factory(engine), MasterKey(os.urandom(32)))
        await store.add_domain("bench.mssante.test")
        await store.add_mailbox(
            ADDRESS, MailboxType.PER, owner_national_id=PERSON, password_hash=hash_password(PASSWORD)
        )
        pki = DevPki.init(tmp / "pki", server_hostname="mail.bench.test")
        crt, _ = pki.issue_person(PERSON, "Jean", "Martin", tmp)
        result = CertificateValidator.from_settings(pki.pki_settings()).validate(
            load_certificates(crt)[0], usage=Usage.TLS_CLIENT
        )
        assert result.identity is not None
        (tmp / "oidc").mkdir()
        issuer = await LocalIssuer.start(tmp / "oidc")
        unlimited = RateLimitPolicy(max_failures=10**9, free_failures=10**9)
        auth = Authenticator(
            store,
            policy=PolicySettings(auth=AuthPolicySettings(password_allowed_types=[MailboxType.PER])),
            settings=AuthSettings(
                oidc=issuer.settings(), ratelimit=RateLimitSettings(account=unlimited, ip=unlimited)
            ),
        )
        cert_client = ClientContext("192.0.2.1", True, result.identity, "submission")
        client = ClientContext("192.0.2.1", True, None, "submission")
        token = issuer.token(preferred_username=PERSON)

        async def external() -> bool:
            return (await auth.authenticate(ExternalCredentials(None), client=cert_client)).ok

        async def bearer() -> bool:
            creds = BearerCredentials(Mechanism.OAUTHBEARER, token)
            return (await auth.authenticate(creds, client=client)).ok

        async def password() -> bool:
            creds = PasswordCredentials(Mechanism.PLAIN, ADDRESS, PASSWORD)
            return (await auth.authenticate(creds, client=client)).ok

        try:
            await measure("EXTERNAL", count, external)
            await measure("OAUTHBEARER", count, bearer)
            await measure("PLAIN", max(20, count // 20), password)
        finally:
            await issuer.stop()
            await engine.dispose()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 400))

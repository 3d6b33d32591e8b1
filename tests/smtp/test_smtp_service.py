"""InboundSmtpService: TLS context checks, start/reload/stop."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from smtp_support import PkiSet, make_settings, start_inbound

from mssante_operator.smtp.service import InboundSmtpService, check_tls_context


def test_tls_context_must_ask_for_client_certificates(test_pki: PkiSet) -> None:
    context = test_pki.server_context()
    context.verify_mode = ssl.CERT_NONE
    with pytest.raises(ValueError, match="does not request client certificates"):
        check_tls_context(context)


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated:DeprecationWarning")
def test_tls_context_must_not_allow_old_tls(test_pki: PkiSet) -> None:
    context = test_pki.server_context()
    context.minimum_version = ssl.TLSVersion.TLSv1_1
    with pytest.raises(ValueError, match=r"below 1\.2"):
        check_tls_context(context)
    context.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
    check_tls_context(context)
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2


async def test_reload_with_a_broken_tls_context_keeps_the_old_one(tmp_path: Path, test_pki: PkiSet) -> None:
    running = await start_inbound(tmp_path, test_pki)
    service = running.service
    calls = {"n": 0}

    def factory(_settings: object) -> ssl.SSLContext:
        calls["n"] += 1
        if calls["n"] > 1:
            raise FileNotFoundError("certs/dev/server.crt: no such file")
        return test_pki.server_context()

    broken = InboundSmtpService(running.settings, service._ports, factory)
    await broken.start()
    try:
        with pytest.raises(FileNotFoundError):
            await broken.reload(make_settings(test_pki, max_message_size=4096))
        assert broken._config.max_message_size == running.settings.smtp_inbound.max_message_size
        assert broken.port > 0
    finally:
        await broken.stop(grace=1)
        await service.stop(grace=1)
    with pytest.raises(RuntimeError, match="not started"):
        _ = broken.port

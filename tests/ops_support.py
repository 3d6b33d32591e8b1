"""Helpers for the serve-process tests: certificates, a config file, a running `serve` subprocess."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

EXE = Path(sys.executable).parent / "mssante-operator"


def write_self_signed(
    directory: Path,
    name: str,
    *,
    cn: str = "mail.test.mssante.test",
    days: float = 365,
    not_before: datetime | None = None,
    ca: bool = False,
) -> tuple[Path, Path]:
    """A self-signed certificate valid for `days` from `not_before` (default: an hour ago)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "FR"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Hopital Test"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )
    start = not_before or datetime.now(UTC) - timedelta(hours=1)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + timedelta(hours=1) + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path = directory / f"{name}.crt"
    key_path = directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return cert_path, key_path


def free_port() -> int:
    # The config's ops.port must be 1..65535, so take a free ephemeral port and release it.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def config_text(
    *,
    store_url: str,
    server_cert: Path,
    server_key: Path,
    ca_files: list[Path],
    port: int,
    level: str = "info",
    grace: float = 5.0,
    extra: str = "",
) -> str:
    cas = ", ".join(json.dumps(str(p)) for p in ca_files)
    return f"""
[instance]
name = "serve-test"
hostname = "mail.test.mssante.test"
data_dir = "var"

[store]
url = {json.dumps(store_url)}

[pki]
ca_files = [{cas}]
require_crl = false
server_cert = {json.dumps(str(server_cert))}
server_key = {json.dumps(str(server_key))}
expiry_warning_days = 30

[smtp_inbound]
enabled = false

[smtp_submission]
enabled = false

[imap]
enabled = false

[ops]
host = "127.0.0.1"
port = {port}
shutdown_grace_seconds = {grace}

[logging]
format = "json"
level = "{level}"
{extra}
"""


@dataclass
class ServeProcess:
    """`mssante-operator --config CONFIG serve` with its stderr (JSON log lines) collected."""

    config: Path
    port: int
    cwd: Path
    proc: subprocess.Popen[bytes] | None = None
    lines: list[str] = field(default_factory=list)
    _reader: threading.Thread | None = None
    _cond: threading.Condition = field(default_factory=threading.Condition)

    def start(self) -> ServeProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MSSANTE_")}
        self.proc = subprocess.Popen(
            [str(EXE), "--config", str(self.config), "serve"],
            cwd=self.cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        return self

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for raw in self.proc.stdout:
            with self._cond:
                self.lines.append(raw.decode("utf-8", "replace").rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def events(self) -> list[dict[str, Any]]:
        out = []
        with self._cond:
            lines = list(self.lines)
        for line in lines:
            try:
                item = json.loads(line)
            except ValueError:
                continue
            if isinstance(item, dict):
                out.append(item)
        return out

    def wait_for(self, predicate: Any, timeout: float = 120.0, start: int = 0) -> dict[str, Any]:
        """The first JSON log event (from index `start`) matching `predicate`."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.lines[start:]:
                    try:
                        item = json.loads(line)
                    except ValueError:
                        continue
                    if isinstance(item, dict) and predicate(item):
                        return item
                left = deadline - time.monotonic()
                assert self.proc is not None
                if left <= 0 or (self.proc.poll() is not None and not self._reader_alive()):
                    raise AssertionError("log event not seen; output was:\n" + "\n".join(self.lines))
                self._cond.wait(min(left, 0.2))

    def _reader_alive(self) -> bool:
        return self._reader is not None and self._reader.is_alive()

    def mark(self) -> int:
        with self._cond:
            return len(self.lines)

    def wait_listening(self) -> dict[str, Any]:
        return self.wait_for(lambda e: e.get("event") == "listening" and e.get("service") == "ops-http")

    def get(self, path: str) -> tuple[int, bytes, str]:
        url = f"http://127.0.0.1:{self.port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=60) as resp:
                return resp.status, resp.read(), resp.headers.get("Content-Type", "")
        except urllib.error.HTTPError as err:
            return err.code, err.read(), err.headers.get("Content-Type", "")

    def healthz(self) -> tuple[int, dict[str, Any]]:
        status, body, ctype = self.get("/healthz")
        assert ctype.startswith("application/json"), ctype
        data: dict[str, Any] = json.loads(body)
        return status, data

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait_exit(self, timeout: float) -> int:
        assert self.proc is not None
        code = self.proc.wait(timeout=timeout)
        if self._reader is not None:
            self._reader.join(timeout=5)
        return code

    def output(self) -> str:
        with self._cond:
            return "\n".join(self.lines)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

"""How many client certificates per second CertificateValidator.validate checks (one core).

Run: .venv/bin/python bench/pki_validate.py [N]. Target: well above the rate of new TLS connections
an operator sees (hundreds per second), so that validation is never the bottleneck of a handshake.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from mssante_operator.pki.devpki import DevPki
from mssante_operator.pki.loading import load_certificates
from mssante_operator.pki.validation import CertificateValidator, Usage


def main(count: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        pki = DevPki.init(Path(tmp) / "pki", server_hostname="mail.bench.test")
        person, _ = pki.issue_person("810000000009", "Jean", "Martin", Path(tmp))
        leaf = load_certificates(person)[0]
        validator = CertificateValidator.from_settings(pki.pki_settings())
        assert validator.validate(leaf, usage=Usage.TLS_CLIENT).ok
        start = time.perf_counter()
        for _ in range(count):
            validator.validate(leaf, usage=Usage.TLS_CLIENT)
        elapsed = time.perf_counter() - start
    rate, each_ms = count / elapsed, elapsed / count * 1e3
    print(f"{count} validations in {elapsed:.2f}s: {rate:.0f}/s, {each_ms:.2f} ms each")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 2000)

"""Log lines never carry secrets: redacted key names, tracebacks without local variables."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

SCRIPT = """
import sys
from mssante_operator.ops.logging import configure_logging, get_logger
configure_logging(sys.argv[1], "info")
log = get_logger("t")
log.info("login", user="jean", password="hunter2-pw", token="tok-secret")
def f():
    body = "SECRET-BODY-LINE"
    raise ValueError("boom")
try:
    f()
except ValueError:
    log.exception("failed")
"""


@pytest.mark.parametrize("fmt", ["console", "json"])
def test_no_secret_or_local_variable_in_logs(fmt: str) -> None:
    result = subprocess.run([sys.executable, "-c", SCRIPT, fmt], capture_output=True, text=True, check=True)
    out = result.stderr
    assert "hunter2-pw" not in out and "tok-secret" not in out and "SECRET-BODY-LINE" not in out
    assert "jean" in out and "ValueError" in out
    if fmt == "json":
        first = json.loads(out.splitlines()[0])
        assert first["password"] == "**********" and first["event"] == "login"

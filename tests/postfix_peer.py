"""A real Postfix (the Debian package) run as a peer MSSanté operator, for tests and benchmarks.

Each `start_postfix_peer(...)` runs a separate Postfix instance with its own configuration, queue,
data and Maildir directories, listening on 127.0.0.1:<port> only; the system instance (/etc/postfix)
is never read or touched. The peer behaves like an operator of the trust space:

- inbound: STARTTLS mandatory (530 5.7.0 before it), TLS 1.2+, a client certificate that chains to
  `ca_bundle` required (`require_client_cert`), delivery to Maildir for its `mailboxes`
  (`<maildir_root>/<domain>/<localpart>/new/`); relaying only for clients with a verified certificate;
- outbound: mail for a domain of `relay_routes` goes to that `[host]:port` over mandatory TLS
  (level `secure`: the server certificate must chain to `ca_bundle` and name the recipient domain or
  one of its subdomains), presenting the peer's own server certificate as client certificate.

Postfix needs root (its master runs as root and drops to the `postfix` user); tests run as root in
CI. Use the `postfix_peers` fixture (`from postfix_peer import postfix_peers`) or, outside pytest,
`with start_postfix_peer(...) as peer:`.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import grp
import json
import os
import pwd
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest

__all__ = [
    "PostfixPeer",
    "PostfixPeerError",
    "postfix_available",
    "postfix_peers",
    "start_postfix_peer",
]

POSTFIX = shutil.which("postfix", path="/usr/sbin:/usr/bin:/sbin:/bin") or "/usr/sbin/postfix"
POSTQUEUE = shutil.which("postqueue", path="/usr/sbin:/usr/bin:/sbin:/bin") or "/usr/sbin/postqueue"
POSTFIX_META_DIRECTORY = "/etc/postfix"  # postfix-files, the package's own list (read only)
MAIL_OWNER = "postfix"
SETGID_GROUP = "postdrop"

_LOCAL_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}")
_DOMAIN = re.compile(r"(?=.{1,253}$)([a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z0-9-]{2,63}")
_ROUTE = re.compile(r"\[(?P<host>[^\]\s]+)\]:(?P<port>\d{1,5})")
_START_ATTEMPTS = 5

_running: dict[int, PostfixPeer] = {}


class PostfixPeerError(RuntimeError):
    """The Postfix peer could not be configured, started or queried; the message says why."""


def postfix_available() -> str | None:
    """None when a peer can run here, else the reason (for a clear failure, never a silent skip)."""
    if not Path(POSTFIX).is_file():
        return f"{POSTFIX} not found: install the Debian package `postfix` (see .ci/run)"
    if os.geteuid() != 0:
        return "a Postfix instance must be started as root (its master drops privileges itself)"
    try:
        pwd.getpwnam(MAIL_OWNER)
        grp.getgrnam(SETGID_GROUP)
    except KeyError as exc:
        return f"user/group {exc} missing: the postfix package is not installed properly"
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _traversable(path: Path, uid: int, gids: set[int]) -> bool:
    """Whether `uid` can reach `path` (execute permission on it and on every ancestor)."""
    for directory in [path, *path.parents]:
        st = directory.stat()
        if st.st_mode & stat.S_IXOTH:
            continue
        if st.st_uid == uid and st.st_mode & stat.S_IXUSR:
            continue
        if st.st_gid in gids and st.st_mode & stat.S_IXGRP:
            continue
        return False
    return True


def _check_domain(value: str, what: str) -> str:
    domain = value.strip().lower().rstrip(".")
    if not _DOMAIN.fullmatch(domain):
        raise PostfixPeerError(f"{what}: not a valid domain name: {value!r}")
    return domain


def _check_route(domain: str, value: str) -> str:
    match = _ROUTE.fullmatch(value.strip())
    if not match or not 0 < int(match["port"]) < 65536:
        raise PostfixPeerError(
            f"relay_routes[{domain!r}] = {value!r}: expected '[host]:port', e.g. '[127.0.0.1]:2525'"
        )
    return value.strip()


@dataclass
class PostfixPeer:
    """A running Postfix instance; `stop()` (or leaving a `with` block) stops it for good."""

    directory: Path
    smtp_port: int
    maildir_root: Path
    queue_directory: Path
    config_directory: Path = field(repr=False)
    hostname: str = ""
    domain: str = ""
    log_file: Path = field(default=Path(), repr=False)
    master_pid: int = 0
    base: Path = field(default=Path(), repr=False)
    _watchdog: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _stopped: bool = field(default=False, repr=False)

    # -- lifecycle -------------------------------------------------------------------------------

    def __enter__(self) -> PostfixPeer:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def running(self) -> bool:
        return not self._stopped and _alive(self.master_pid)

    def stop(self) -> None:
        """Stop the master and all its children (SIGTERM, then SIGKILL after 5 s); idempotent."""
        if self._stopped:
            return
        self._stopped = True
        _running.pop(id(self), None)
        try:
            _terminate_master(self.master_pid)
        finally:
            if self._watchdog is not None:
                with contextlib.suppress(ProcessLookupError):
                    self._watchdog.kill()
                self._watchdog.wait()
            _release_directory(self.directory, self.base)

    # -- mail --------------------------------------------------------------------------------------

    def mailbox(self, address_or_localpart: str) -> Path:
        """The Maildir of a mailbox of this peer (`alice` or `alice@<domain>`)."""
        local, _, domain = address_or_localpart.partition("@")
        domain = domain.lower() or self.domain
        if domain != self.domain:
            raise PostfixPeerError(f"{address_or_localpart!r} is not a mailbox of {self.domain}")
        if not _LOCAL_PART.fullmatch(local):
            raise PostfixPeerError(f"invalid local part {local!r}")
        return self.maildir_root / domain / local

    def messages(self, address_or_localpart: str) -> list[bytes]:
        """The messages delivered so far to the mailbox's Maildir `new/`, oldest first, as stored:
        LF line endings, Postfix's Return-Path, Delivered-To and Received headers first."""
        new = self.mailbox(address_or_localpart) / "new"
        if not new.is_dir():
            return []
        files = sorted(new.iterdir(), key=lambda path: (path.stat().st_mtime_ns, path.name))
        return [path.read_bytes() for path in files]

    def wait_for_mail(self, address_or_localpart: str, timeout: float = 10, *, count: int = 1) -> list[bytes]:
        """Block until the mailbox holds at least `count` messages; return them all (oldest first)."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.messages(address_or_localpart)
            if len(found) >= count:
                return found
            if time.monotonic() >= deadline:
                raise TimeoutError(self._not_delivered(address_or_localpart, len(found), count, timeout))
            time.sleep(0.02)

    async def wait_for_mail_async(
        self,
        address_or_localpart: str,
        timeout: float = 10,  # noqa: ASYNC109 - the same signature as wait_for_mail
        *,
        count: int = 1,
    ) -> list[bytes]:
        """`wait_for_mail` for a test whose event loop must keep running meanwhile."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.messages(address_or_localpart)
            if len(found) >= count:
                return found
            if time.monotonic() >= deadline:
                raise TimeoutError(self._not_delivered(address_or_localpart, len(found), count, timeout))
            await asyncio.sleep(0.02)

    def _not_delivered(self, mailbox: str, found: int, count: int, timeout: float) -> str:
        try:
            queue = ", ".join(self.queue_ids()) or "empty"
        except PostfixPeerError as exc:
            queue = f"unknown ({exc})"
        return (
            f"{found} of {count} message(s) in {self.mailbox(mailbox)}/new after {timeout}s; "
            f"queue: {queue}; log tail:\n{self.log_tail()}"
        )

    # -- queue and logs ------------------------------------------------------------------------------

    def _postqueue(self, *args: str) -> str:
        result = subprocess.run(
            [POSTQUEUE, "-c", str(self.config_directory), *args],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if result.returncode != 0:
            raise PostfixPeerError(f"postqueue {' '.join(args)} failed: {result.stderr.strip()}")
        return result.stdout

    def flush(self) -> None:
        """Attempt delivery of every queued message now (`postqueue -f`)."""
        self._postqueue("-f")

    def queue(self) -> list[dict[str, Any]]:
        """The queued messages as `postqueue -j` describes them (queue_id, queue_name, recipients...)."""
        return [json.loads(line) for line in self._postqueue("-j").splitlines() if line.strip()]

    def queue_ids(self) -> list[str]:
        return [str(entry["queue_id"]) for entry in self.queue()]

    def logs(self) -> str:
        """The instance's whole mail log (Postfix `maillog_file`), as written so far: postlogd writes
        asynchronously, so poll for an expected line rather than reading once."""
        try:
            return self.log_file.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.logs().splitlines()[-lines:])


def _release_directory(directory: Path, base: Path) -> None:
    """Remove an instance created outside `base` (base not reachable by the postfix user), keeping
    its log next to the caller's files; an instance inside `base` stays for inspection."""
    if directory.is_relative_to(base):
        return
    with contextlib.suppress(OSError):
        shutil.copyfile(directory / "maillog", base / "postfix-maillog.log")
    link = base / "postfix"
    if link.is_symlink():
        link.unlink()
    shutil.rmtree(directory, ignore_errors=True)


def _alive(pid: int) -> bool:
    """True while `pid` runs (a zombie counts as gone: PID 1 here may not reap orphans)."""
    if pid <= 0:
        return False
    try:
        status = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return status.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def _terminate_master(pid: int) -> None:
    if not _alive(pid):
        return
    # The master is a process-group leader and forwards SIGTERM to its children itself.
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 5
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


@atexit.register
def _stop_all() -> None:
    for peer in list(_running.values()):
        with contextlib.suppress(Exception):
            peer.stop()


# -- configuration -------------------------------------------------------------------------------------


def _main_cf(
    *,
    directory: Path,
    config: Path,
    hostname: str,
    domain: str,
    require_client_cert: bool,
    relay_routes: Mapping[str, str],
    uid: int,
    gid: int,
    message_size_limit: int,
    extra: Mapping[str, str],
) -> str:
    tls = config / "tls"
    settings: dict[str, str] = {
        "compatibility_level": "3.6",
        "queue_directory": str(directory / "queue"),
        "data_directory": str(directory / "data"),
        "mail_owner": MAIL_OWNER,
        "setgid_group": SETGID_GROUP,
        "syslog_name": f"postfix-peer/{domain}",
        "maillog_file": str(directory / "maillog"),
        "maillog_file_prefixes": str(directory),
        "myhostname": hostname,
        "mydomain": domain,
        "myorigin": "$mydomain",
        "mydestination": "",
        "mynetworks": "127.0.0.1/32",
        "inet_interfaces": "127.0.0.1",
        "inet_protocols": "ipv4",
        "smtpd_banner": "$myhostname ESMTP MSSante peer operator (Postfix)",
        "biff": "no",
        "append_dot_mydomain": "no",
        "alias_maps": "",
        "alias_database": "",
        "local_recipient_maps": "",
        "local_transport": "error:5.1.1 local delivery is disabled",
        # All clients come from 127.0.0.1; treat them as remote (no header rewriting), like a peer.
        "local_header_rewrite_clients": "",
        "smtpd_peername_lookup": "no",
        "smtp_dns_support_level": "disabled",
        "message_size_limit": str(message_size_limit),
        "mailbox_size_limit": "0",
        "virtual_mailbox_limit": "0",
        # Delivery to Maildir for the peer's own mailboxes.
        "virtual_mailbox_domains": domain,
        "virtual_mailbox_base": str(directory / "maildirs"),
        "virtual_mailbox_maps": f"texthash:{config / 'virtual_mailboxes'}",
        "virtual_uid_maps": f"static:{uid}",
        "virtual_gid_maps": f"static:{gid}",
        "virtual_minimum_uid": str(min(uid, 100)),
        # Inbound: mutual TLS, mandatory before MAIL.
        "smtpd_tls_security_level": "encrypt",
        "smtpd_tls_ask_ccert": "yes",
        "smtpd_tls_req_ccert": "yes" if require_client_cert else "no",
        "smtpd_tls_CAfile": str(tls / "ca-bundle.pem"),
        "smtpd_tls_cert_file": str(tls / "server.crt"),
        "smtpd_tls_key_file": str(tls / "server.key"),
        "smtpd_tls_protocols": ">=TLSv1.2",
        "smtpd_tls_mandatory_protocols": ">=TLSv1.2",
        "smtpd_tls_mandatory_ciphers": "high",
        "smtpd_tls_ccert_verifydepth": "5",
        "smtpd_tls_received_header": "yes",
        "smtpd_tls_loglevel": "1",
        "smtpd_client_restrictions": "",
        "smtpd_recipient_restrictions": "",
        # Relaying: only to routed domains, and only for a client whose certificate verified.
        "relay_domains": ", ".join(relay_routes),
        "smtpd_relay_restrictions": (
            f"reject_unauth_destination, check_recipient_access texthash:{config / 'relay_access'}"
        ),
        # Outbound: our routes, mandatory verified TLS, our certificate as client certificate.
        "transport_maps": f"texthash:{config / 'transport'}",
        "smtp_tls_policy_maps": f"texthash:{config / 'tls_policy'}",
        "smtp_tls_security_level": "secure",
        "smtp_tls_secure_cert_match": "nexthop, dot-nexthop",
        "smtp_tls_CAfile": str(tls / "ca-bundle.pem"),
        "smtp_tls_cert_file": str(tls / "server.crt"),
        "smtp_tls_key_file": str(tls / "server.key"),
        "smtp_tls_protocols": ">=TLSv1.2",
        "smtp_tls_mandatory_protocols": ">=TLSv1.2",
        "smtp_tls_mandatory_ciphers": "high",
        "smtp_tls_loglevel": "1",
        "smtp_connect_timeout": "5s",
        # Fast retries so a test that restarts its side sees delivery within seconds.
        "queue_run_delay": "1s",
        "minimal_backoff_time": "1s",
        "maximal_backoff_time": "2s",
        "delay_warning_time": "0h",
        "maximal_queue_lifetime": "1h",
        "bounce_queue_lifetime": "1h",
    }
    for key, value in extra.items():
        if "\n" in key or "\n" in value:
            raise PostfixPeerError(f"main.cf setting {key!r} contains a line break")
        settings[key] = value
    return "".join(f"{key} = {value}\n" for key, value in settings.items())


def _master_cf(port: int) -> str:
    # Chroot column `n` everywhere: the instance reads files under its own directory.
    services = [
        f"127.0.0.1:{port} inet n - n - - smtpd",
        "pickup unix n - n 60 1 pickup",
        "cleanup unix n - n - 0 cleanup",
        "qmgr unix n - n 300 1 qmgr",
        "tlsmgr unix - - n 1000? 1 tlsmgr",
        "rewrite unix - - n - - trivial-rewrite",
        "bounce unix - - n - 0 bounce",
        "defer unix - - n - 0 bounce",
        "trace unix - - n - 0 bounce",
        "verify unix - - n - 1 verify",
        "flush unix n - n 1000? 0 flush",
        "proxymap unix - - n - - proxymap",
        "proxywrite unix - - n - 1 proxymap",
        "smtp unix - - n - - smtp",
        "relay unix - - n - - smtp",
        "showq unix n - n - - showq",
        "error unix - - n - - error",
        "retry unix - - n - - error",
        "discard unix - - n - - discard",
        "virtual unix - n n - - virtual",
        "anvil unix - - n - 1 anvil",
        "scache unix - - n - 1 scache",
        "postlog unix-dgram n - n - 1 postlogd",
    ]
    return "\n".join(services) + "\n"


def _instance_directory(base: Path, uid: int, gid: int) -> Path:
    """`base/postfix`, or a directory under /tmp linked from there when the postfix user cannot
    reach `base` (pytest's tmp_path lives under a 0700 directory)."""
    base.mkdir(parents=True, exist_ok=True)
    link = base / "postfix"
    if _traversable(base, uid, {gid}):
        link.mkdir()
        directory = link
    else:
        roots = [Path(tempfile.gettempdir()), Path("/tmp"), Path("/var/tmp")]
        root = next((r for r in roots if r.is_dir() and _traversable(r, uid, {gid})), None)
        if root is None:
            raise PostfixPeerError(f"no directory reachable by the {MAIL_OWNER} user among {roots}")
        directory = Path(tempfile.mkdtemp(prefix="postfix-peer-", dir=root))
        link.symlink_to(directory)
    directory.chmod(0o755)
    return directory


def _create_queue_directories(directory: Path, uid: int, gid: int) -> None:
    """The queue and data directories as Postfix's own `postfix-files` lists them.

    Creating them here and starting with `quick-start` skips `postfix check`'s scan of the whole
    installation, which takes seconds; a fresh instance has nothing else for it to repair.
    """
    owners = {"root": 0, MAIL_OWNER: uid, SETGID_GROUP: grp.getgrnam(SETGID_GROUP).gr_gid}
    places = {"$queue_directory": directory / "queue", "$data_directory": directory / "data"}
    listing = Path(POSTFIX_META_DIRECTORY) / "postfix-files"
    entries = 0
    for line in listing.read_text().splitlines():
        fields = line.split(":")
        if len(fields) < 5 or fields[1] != "d":
            continue
        top, _, rest = fields[0].partition("/")
        if top not in places:
            continue
        path = places[top] / rest if rest else places[top]
        user = fields[2].replace("$mail_owner", MAIL_OWNER)
        group = fields[3].replace("$setgid_group", SETGID_GROUP)
        path.mkdir(exist_ok=True)
        os.chown(path, owners[user], 0 if group == "-" else owners[group])
        path.chmod(int(fields[4], 8))
        entries += 1
    if entries < 10:
        raise PostfixPeerError(f"{listing}: found only {entries} queue directories; is Postfix installed?")


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    path.write_text(text)
    path.chmod(mode)
    # Postfix re-reads (sleeping 300 ms each time, up to 2 s) a table or main.cf modified within the
    # current second, in case an editor is still writing it: backdate what we just wrote.
    past = time.time() - 2
    os.utime(path, (past, past))


def start_postfix_peer(
    base: Path,
    *,
    hostname: str,
    domain: str,
    server_cert: Path,
    server_key: Path,
    ca_bundle: Path,
    require_client_cert: bool = True,
    relay_routes: Mapping[str, str] | None = None,
    relay_tls_match: Mapping[str, str] | None = None,
    mailboxes: Sequence[str] = (),
    smtp_port: int | None = None,
    message_size_limit: int = 25 * 1024 * 1024,
    main_cf_overrides: Mapping[str, str] | None = None,
    start_timeout: float = 30,
) -> PostfixPeer:
    """Configure and start a Postfix peer operator; see the module docstring.

    `server_cert` (leaf then issuing CA, PEM) and `server_key` serve both as the listener's certificate
    and as the client certificate presented to `relay_routes` (domain -> "[host]:port"). Relayed mail
    must reach a server whose certificate names the recipient domain or a subdomain of it, unless
    `relay_tls_match` gives other names for that domain (Postfix `match=` syntax, colon-separated).
    """
    reason = postfix_available()
    if reason:
        raise PostfixPeerError(reason)
    hostname = _check_domain(hostname, "hostname")
    domain = _check_domain(domain, "domain")
    for local in mailboxes:
        if not _LOCAL_PART.fullmatch(local):
            raise PostfixPeerError(f"mailboxes: invalid local part {local!r} (letters, digits, . _ + -)")
    routes = {
        _check_domain(dest, "relay_routes"): _check_route(dest, hop)
        for dest, hop in (relay_routes or {}).items()
    }
    matches = {
        _check_domain(dest, "relay_tls_match"): names for dest, names in (relay_tls_match or {}).items()
    }
    if unknown := set(matches) - set(routes):
        raise PostfixPeerError(f"relay_tls_match names domains without a route: {sorted(unknown)}")
    for path, what in ((server_cert, "server_cert"), (server_key, "server_key"), (ca_bundle, "ca_bundle")):
        if not Path(path).is_file():
            raise PostfixPeerError(f"{what}: {path} is not a file")

    owner = pwd.getpwnam(MAIL_OWNER)
    uid, gid = owner.pw_uid, owner.pw_gid
    directory = _instance_directory(Path(base), uid, gid)
    try:
        config = directory / "etc"
        tls = config / "tls"
        tls.mkdir(parents=True)
        config.chmod(0o755)
        shutil.copyfile(server_cert, tls / "server.crt")
        shutil.copyfile(server_key, tls / "server.key")
        (tls / "server.key").chmod(0o600)
        shutil.copyfile(ca_bundle, tls / "ca-bundle.pem")

        _create_queue_directories(directory, uid, gid)
        maildir_root = directory / "maildirs"
        for path in (maildir_root, maildir_root / domain):
            path.mkdir()
            os.chown(path, uid, gid)
        for local in mailboxes:
            # Created empty now so a test can tell "nothing delivered" from "no such mailbox".
            box = maildir_root / domain / local
            for sub in ("", "tmp", "new", "cur"):
                (box / sub).mkdir(mode=0o700, exist_ok=True)
                os.chown(box / sub, uid, gid)

        _write(config / "virtual_mailboxes", "".join(f"{m}@{domain} {domain}/{m}/\n" for m in mailboxes))
        _write(
            config / "relay_access",
            "".join(f"{dest} permit_tls_all_clientcerts, reject\n" for dest in routes),
        )
        _write(config / "transport", "".join(f"{dest} smtp:{hop}\n" for dest, hop in routes.items()))
        policies: dict[str, list[str]] = {}
        for dest, hop in routes.items():
            policies.setdefault(hop, []).extend(matches.get(dest, f"{dest}:.{dest}").split(":"))
        _write(
            config / "tls_policy",
            "".join(f"{hop} secure match={':'.join(n)}\n" for hop, n in policies.items()),
        )
        main_cf = _main_cf(
            directory=directory,
            config=config,
            hostname=hostname,
            domain=domain,
            require_client_cert=require_client_cert,
            relay_routes=routes,
            uid=uid,
            gid=gid,
            message_size_limit=message_size_limit,
            extra=main_cf_overrides or {},
        )
        _write(config / "main.cf", main_cf)

        attempts = 1 if smtp_port is not None else _START_ATTEMPTS
        failure = ""
        for _ in range(attempts):
            port = smtp_port if smtp_port is not None else _free_port()
            _write(config / "master.cf", _master_cf(port))
            (directory / "queue" / "quick-start").touch()  # see _create_queue_directories
            peer = PostfixPeer(
                directory=directory,
                smtp_port=port,
                maildir_root=maildir_root,
                queue_directory=directory / "queue",
                config_directory=config,
                hostname=hostname,
                domain=domain,
                log_file=directory / "maillog",
                base=Path(base),
            )
            failure = _start(peer, start_timeout)
            if not failure:
                return peer
            if "Address already in use" not in failure:
                break
        raise PostfixPeerError(f"Postfix peer for {domain} did not start: {failure}")
    except BaseException:
        for started in [p for p in _running.values() if p.directory == directory]:
            started.stop()
        _release_directory(directory, Path(base))
        raise


def _start(peer: PostfixPeer, timeout: float) -> str:
    """Start the instance and wait for its SMTP banner; '' on success, else what went wrong."""
    # Output to a file, not a pipe: the daemonized master keeps inherited descriptors open for
    # seconds, and reading a pipe to its end would wait for that.
    output = peer.directory / "postfix-start.out"
    with output.open("wb") as sink:
        result = subprocess.run(
            [POSTFIX, "-c", str(peer.config_directory), "start"],
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            timeout=timeout,
            check=False,
        )
    pid_file = peer.queue_directory / "pid" / "master.pid"
    if result.returncode != 0:
        said = output.read_text(errors="replace").strip()
        return f"postfix start exited with {result.returncode}: {said}\n{peer.log_tail()}"
    try:
        peer.master_pid = int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError) as exc:
        return f"no master pid in {pid_file}: {exc}"
    _running[id(peer)] = peer
    peer._watchdog = _watchdog(peer.master_pid)
    deadline = time.monotonic() + timeout
    error = ""
    while time.monotonic() < deadline:
        if not _alive(peer.master_pid):
            error = "the master process exited"
            break
        try:
            with socket.create_connection(("127.0.0.1", peer.smtp_port), timeout=2) as sock:
                banner = sock.recv(512)
                with contextlib.suppress(OSError):
                    sock.sendall(b"QUIT\r\n")
                    sock.recv(512)
            if banner.startswith(b"220 "):
                return ""
            error = f"unexpected banner {banner!r}"
        except OSError as exc:
            error = str(exc)
        time.sleep(0.05)
    peer.stop()
    return f"{error}\n{peer.log_tail()}"


def _watchdog(master_pid: int) -> subprocess.Popen[bytes]:
    """A small process that kills the instance if this Python process dies without cleaning up
    (a killed xdist worker would otherwise leave a Postfix master running forever)."""
    script = (
        "import os, signal, sys, time\n"
        "parent, master = int(sys.argv[1]), int(sys.argv[2])\n"
        "while os.getppid() == parent:\n"
        "    time.sleep(0.5)\n"
        "try:\n"
        "    os.killpg(master, signal.SIGKILL)\n"
        "except OSError:\n"
        "    pass\n"
    )
    return subprocess.Popen(
        [sys.executable, "-c", script, str(os.getpid()), str(master_pid)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


@pytest.fixture
def postfix_peers(tmp_path: Path) -> Iterator[Callable[..., PostfixPeer]]:
    """A factory: `postfix_peers(hostname=..., domain=..., ...)` takes `start_postfix_peer`'s keyword
    arguments (base defaults to a fresh directory under tmp_path); every peer is stopped at teardown."""
    reason = postfix_available()
    if reason:
        pytest.fail(reason)
    started: list[PostfixPeer] = []

    def start(**kwargs: Any) -> PostfixPeer:
        base = kwargs.pop("base", None) or tmp_path / f"postfix-peer-{len(started)}"
        peer = start_postfix_peer(base, **kwargs)
        started.append(peer)
        return peer

    try:
        yield start
    finally:
        for peer in reversed(started):
            peer.stop()

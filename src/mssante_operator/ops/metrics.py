"""Prometheus metrics of one serve process, in a registry of its own (not the global one).

Every metric the server exports is declared here, by name, so that dashboards have one place to
look. Front ends receive the `Metrics` object (`app.metrics` / `components.metrics`) and increment:

    metrics.messages_received.labels(listener="smtp-inbound", outcome="accepted").inc()
    metrics.smtp_sessions_active.labels(listener="submission").inc()   # .dec() when it ends
    metrics.auth_attempts.labels(mechanism="EXTERNAL", outcome="success").inc()
    metrics.tls_handshake_failures.labels(listener="imap", reason="unknown_ca").inc()
    with metrics.smtp_transaction_seconds.labels(listener="smtp-inbound").time(): ...

Label values must come from small fixed sets (listener names, outcomes, reasons), never from
addresses, host names or anything a peer controls: each distinct value is a new time series.
"""

from __future__ import annotations

import platform

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    generate_latest,
)
from prometheus_client import (
    GCCollector as _GCCollector,
)
from prometheus_client import (
    PlatformCollector as _PlatformCollector,
)
from prometheus_client import (
    ProcessCollector as _ProcessCollector,
)

from mssante_operator import __version__

NAMESPACE = "mssante"

# Outcomes used across listeners, so that queries can aggregate over them.
OUTCOMES_RECEIVED = ("accepted", "refused", "deferred", "error")
OUTCOMES_RELAYED = ("delivered", "deferred", "bounced", "error")
OUTCOMES_AUTH = ("success", "failure")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Metrics:
    """All metrics of one Application, registered in `self.registry`."""

    def __init__(self, registry: CollectorRegistry | None = None, *, process: bool = True) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        reg = self.registry
        if process:
            # process_* (CPU, memory, open fds), python_info and python_gc_*.
            _ProcessCollector(registry=reg)
            _PlatformCollector(registry=reg)
            _GCCollector(registry=reg)

        self.build_info = Info("build", "Version of this server.", namespace=NAMESPACE, registry=reg)
        self.build_info.info({"version": __version__, "python": platform.python_version()})
        self.up = Gauge("up", "1 while the serve process runs.", namespace=NAMESPACE, registry=reg)
        self.up.set(1)
        self.start_time = Gauge(
            "start_time_seconds",
            "When the serve process started (Unix time).",
            namespace=NAMESPACE,
            registry=reg,
        )
        self.start_time.set_to_current_time()
        self.health_status = Gauge(
            "health_status",
            "Last /healthz result per check: 0 ok, 1 degraded, 2 failing.",
            ["check"],
            namespace=NAMESPACE,
            registry=reg,
        )
        self.config_reloads = Counter(
            "config_reloads",
            "SIGHUP configuration reloads by outcome (applied, invalid).",
            ["outcome"],
            namespace=NAMESPACE,
            registry=reg,
        )

        # --- SMTP (inbound inter-operator and submission) ---
        self.messages_received = Counter(
            "messages_received",
            "Messages whose DATA phase ended, by listener and outcome (accepted, refused, deferred, error).",
            ["listener", "outcome"],
            namespace=NAMESPACE,
            registry=reg,
        )
        self.smtp_sessions_active = Gauge(
            "smtp_sessions_active",
            "Open SMTP sessions by listener.",
            ["listener"],
            namespace=NAMESPACE,
            registry=reg,
        )
        self.smtp_transaction_seconds = Histogram(
            "smtp_transaction_seconds",
            "Duration from MAIL FROM to the final reply of DATA, by listener.",
            ["listener"],
            namespace=NAMESPACE,
            registry=reg,
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
        )
        self.message_size_bytes = Histogram(
            "message_size_bytes",
            "Size of accepted messages, by listener.",
            ["listener"],
            namespace=NAMESPACE,
            registry=reg,
            buckets=(4096, 16384, 65536, 262144, 1048576, 4194304, 10485760, 26214400),
        )

        # --- relay (outbound to other operators) ---
        self.messages_relayed = Counter(
            "messages_relayed",
            "Relay attempts to other operators by outcome (delivered, deferred, bounced, error).",
            ["outcome"],
            namespace=NAMESPACE,
            registry=reg,
        )
        self.queue_depth = Gauge(
            "queue_depth", "Messages waiting in the outbound queue.", namespace=NAMESPACE, registry=reg
        )

        # --- IMAP ---
        self.imap_sessions_active = Gauge(
            "imap_sessions_active", "Open IMAP sessions.", namespace=NAMESPACE, registry=reg
        )

        # --- authentication, TLS, audit ---
        self.auth_attempts = Counter(
            "auth_attempts",
            "Authentication attempts by SASL mechanism (EXTERNAL, OAUTHBEARER, PLAIN, ...) and outcome.",
            ["mechanism", "outcome"],
            namespace=NAMESPACE,
            registry=reg,
        )
        self.tls_handshake_failures = Counter(
            "tls_handshake_failures",
            "Failed TLS handshakes by listener and reason (e.g. no_certificate, unknown_ca, expired).",
            ["listener", "reason"],
            namespace=NAMESPACE,
            registry=reg,
        )
        self.audit_records = Counter(
            "audit_records", "Audit records written.", namespace=NAMESPACE, registry=reg
        )

    def render(self) -> bytes:
        """The registry in Prometheus text exposition format."""
        return generate_latest(self.registry)

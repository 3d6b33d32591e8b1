"""The operations HTTP endpoint: `/healthz` (JSON) and `/metrics` (Prometheus text).

Plain HTTP without authentication: bind it to loopback or a management network only
(`[ops] host`). It reveals certificate subjects and expiry dates, store reachability and
counters, never a message, an address or a secret.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from mssante_operator import __version__
from mssante_operator.ops.health import HealthRegistry, HealthStatus
from mssante_operator.ops.listener import format_address
from mssante_operator.ops.logging import get_logger
from mssante_operator.ops.metrics import CONTENT_TYPE, Metrics
from mssante_operator.ops.service import ServiceBase

log = get_logger(__name__)


class OpsHttpService(ServiceBase):
    """`/healthz`: 200 when ok or degraded, 503 when failing. `/metrics`: the app's registry."""

    def __init__(
        self,
        host: str,
        port: int,
        health: HealthRegistry,
        metrics: Metrics,
        *,
        instance: Callable[[], str],
        shutdown_timeout: float = 5.0,
        name: str = "ops-http",
    ) -> None:
        self.name = name
        self.host = host
        self.port = port
        self.health = health
        self.metrics = metrics
        self._instance = instance
        self._shutdown_timeout = shutdown_timeout
        self._started = time.monotonic()
        self._runner: web.AppRunner | None = None
        self.addresses: list[str] = []

    def make_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/metrics", self.metrics_endpoint)
        app.router.add_get("/", self.index)
        return app

    async def start(self) -> None:
        # access_log=None: a scraper hitting /metrics every 15 s must not flood the logs.
        runner = web.AppRunner(
            self.make_app(), access_log=None, handle_signals=False, shutdown_timeout=self._shutdown_timeout
        )
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.host, self.port, reuse_address=True)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._started = time.monotonic()
        self.addresses = [format_address(a) for a in runner.addresses]
        for address in self.addresses:
            log.info("listening", service=self.name, address=address, tls="none", paths="/healthz /metrics")

    async def stop(self, grace: float) -> None:
        runner, self._runner = self._runner, None
        if runner is None:
            return
        # cleanup() closes the socket, lets running handlers finish (up to shutdown_timeout), then
        # cancels them.
        await runner.cleanup()
        log.info("stopped", service=self.name)

    async def healthz(self, _request: web.Request) -> web.Response:
        report = await self.health.run()
        for check in report.checks:
            self.metrics.health_status.labels(check=check.name).set(check.status.rank)
        body: dict[str, Any] = report.as_json()
        body.update(
            {
                "instance": self._instance(),
                "version": __version__,
                "uptime_seconds": int(time.monotonic() - self._started),
            }
        )
        log.debug("health checked", status=report.status.value)
        status = 503 if report.status is HealthStatus.FAILING else 200
        return web.json_response(body, status=status, headers={"Cache-Control": "no-store"})

    async def metrics_endpoint(self, _request: web.Request) -> web.Response:
        return web.Response(
            body=self.metrics.render(), headers={"Content-Type": CONTENT_TYPE, "Cache-Control": "no-store"}
        )

    async def index(self, _request: web.Request) -> web.Response:
        return web.Response(text="mssante-operator operations endpoint: /healthz /metrics\n")

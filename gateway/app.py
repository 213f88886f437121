"""The daemon: wires config, buffer, pipeline, bus runners, uplinks and the local API,
and handles SIGTERM (clean stop, in-flight records committed) and SIGHUP (reload)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import math
import signal
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gateway
from gateway import metrics
from gateway.commands import CommandService
from gateway.config import Config, ConfigError, load_config
from gateway.pipeline import DeviceTracker, Pipeline, remember_latest
from gateway.plugin import Bus, return_free_memory
from gateway.record import Record
from gateway.record import now as ts_now
from gateway.supervisor import (
    BusRunner,
    PointErrors,
    StartupError,
    cancel_and_wait,
    group_by_bus,
    make_trackers,
    spawn_factory,
    summarize,
)

log = logging.getLogger(__name__)

STOP_FLUSH_SECONDS = 2.0  # on SIGTERM, how long connected uplinks may finish delivering


class GatewayApp:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.buffer: Any = None
        self.pipeline: Pipeline | None = None
        self.trackers: dict[str, DeviceTracker] = {}
        self.runners: dict[str, BusRunner] = {}
        self.uplinks: list[Any] = []
        self.commands: CommandService | None = None
        self.api: Any = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._spawn = spawn_factory(self._tasks)
        self._uplink_tasks: list[asyncio.Task[Any]] = []
        self._stop = asyncio.Event()
        self.ready = False
        self.not_ready_reasons: list[str] = ["starting"]
        self.watchdog: Any = None
        self._status_text = ""
        self._loop_error_kinds: set[str] = set()
        self.started_at = ts_now()

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        from buffer import Buffer

        cfg = self.config
        privacy = self._privacy_policy()  # first: nothing is opened without it
        bcfg = cfg.model.buffer
        path = cfg.resolve_path(bcfg.path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.buffer = Buffer(
            path,
            gw=cfg.gw_id,
            # with no uplink configured records are kept (for the local API) until the budget
            # evicts them; "local" stands in as their only consumer
            uplinks=[u.name for u in cfg.uplinks] or ["local"],
            budget_bytes=bcfg.budget,
            max_age={str(k): v for k, v in bcfg.max_age.items()} or None,
            queue_size=bcfg.queue_size,
            commit_max_records=bcfg.commit_max_records,
            commit_max_delay=bcfg.commit_max_delay,
            **self._downsample_kwargs(),
        )
        await self.buffer.start()
        self._init_metric_series(cfg)
        self.pipeline = Pipeline(self._sink, privacy, observe=self._observe)
        await self.pipeline.submit([self._gw_record("status", "started")])
        self.commands = CommandService(
            cfg.devices, self._bus_of, self.buffer, self._emit, cfg.gw_id, self._written
        )
        await self._start_buses(cfg)
        if cfg.model.api.enabled:
            from gateway.api import ApiServer

            self.api = ApiServer(self)
            await self.api.start()
        self._start_uplinks()
        self._update_device_gauges()
        self.ready = True
        self.not_ready_reasons = []
        return_free_memory()  # configuration and profile parsing left freed heap behind
        for w in cfg.warnings:
            log.warning("%s", w)
        log.info(
            "gateway %s started: %d devices on %d buses, %d uplinks",
            cfg.gw_id, len(cfg.devices), len(self.runners), len(self.uplinks),
        )

    def _init_metric_series(self, cfg: Config) -> None:
        from gateway.record import LANES

        metrics.init_series(
            devices=[
                (d.spec.id, d.spec.cls, cfg.buses[d.bus].driver)
                for d in cfg.devices.values()
                if d.section.enabled and d.bus in cfg.buses
            ],
            drivers={b.driver for b in cfg.buses.values()},
            lanes=LANES,
            uplinks=[u.name for u in cfg.uplinks],
        )

    def _downsample_kwargs(self) -> dict[str, Any]:
        ds = self.config.model.buffer.downsample
        if not ds:
            return {}
        try:
            from buffer import DownsampleConfig
        except ImportError:
            return {}
        return {"downsample": DownsampleConfig(**ds)}

    def _privacy_policy(self) -> Any:
        """The privacy policy, or a refusal to start: no record is kept or sent without one
        (fail closed; the default policy applies when the config has no [privacy])."""
        try:
            from gateway.privacy import PrivacyConfig, PrivacyPolicy

            pcfg = self.config.privacy if self.config.privacy is not None else PrivacyConfig()
            return PrivacyPolicy(pcfg, community=self.config.model.gateway.community)
        except Exception as exc:
            raise StartupError(f"the privacy policy cannot be built, refusing to start: {exc}") from exc

    async def _start_buses(self, cfg: Config) -> None:
        assert self.pipeline is not None
        self.trackers = make_trackers(cfg)
        for bus_name, devs in group_by_bus(cfg).items():
            spec = cfg.buses[bus_name]
            runner = BusRunner(
                spec, cfg.registry.drivers[spec.driver], devs, self.pipeline, self.trackers
            )
            self.runners[bus_name] = runner
        # open all buses concurrently; a policy-"error" failure aborts the start
        results = await asyncio.gather(
            *(r.open() for r in self.runners.values()), return_exceptions=True
        )
        for runner, res in zip(list(self.runners.values()), results, strict=True):
            if isinstance(res, StartupError):
                raise res
            if isinstance(res, BaseException):
                raise StartupError(
                    f"bus {runner.spec.name} could not be opened and a device on it has "
                    f"startup = \"error\": {res}"
                ) from res
        for runner in self.runners.values():
            runner.start(self._spawn)

    def _start_uplinks(self) -> None:
        if not self.config.uplinks:
            return
        import sync

        for ucfg in self.config.uplinks:
            up = sync.create_uplink(
                ucfg,
                gw_id=self.config.gw_id,
                buffer=self.buffer,
                commands=self._command_handler,
                status=self.status_message,
            )
            self.uplinks.append(up)
            self._uplink_tasks.append(self._spawn(up.run(), f"uplink:{up.name}"))

    async def _command_handler(self, cmd: dict[str, Any]) -> dict[str, Any]:
        assert self.commands is not None
        # the uplink names itself (e.g. "mqtt:city") so the audit says where a command came from
        return await self.commands.execute(cmd, source=str(cmd.get("source") or "uplink"))

    def status_message(self) -> dict[str, Any]:
        return {
            "state": "online",
            "version": gateway.__version__,
            "gw": self.config.gw_id,
            "district": self.config.model.gateway.district,
            "community": self.config.model.gateway.community,
            "devices": len(self.config.devices),
            "started": self.started_at,
        }

    async def _sink(self, records: Sequence[Record]) -> None:
        from buffer import BufferRefused

        try:
            await self.buffer.append(records)
        except BufferRefused as exc:
            metrics.INGEST_REFUSED.labels(exc.reason).inc(len(records))
            log.warning("buffer refused %d records: %s", len(records), exc.reason)

    def _observe(self, records: Sequence[Record]) -> None:
        remember_latest(self.trackers, records)

    def _written(self, dev_id: str, point: str, value: Any, ts: float) -> None:
        tracker = self.trackers.get(dev_id)
        if tracker is not None:
            tracker.note_written(point, value, ts)

    async def _emit(self, records: list[Record]) -> None:
        assert self.pipeline is not None
        await self.pipeline.submit(records)

    def _bus_of(self, name: str) -> Bus | None:
        runner = self.runners.get(name)
        return runner.bus if runner is not None and runner.is_open else None

    def _gw_record(self, pt: str, v: Any, attrs: dict[str, Any] | None = None) -> Record:
        return Record(
            gw=self.config.gw_id, dev=self.config.gw_id, cls="gateway", pt=pt,
            kind="lifecycle", v=v, ts=ts_now(), attrs=attrs,
        )

    def point_errors(self) -> dict[str, PointErrors]:
        """Each polled device's current point errors, by device id."""
        return {
            dev_id: dr.point_errors
            for runner in self.runners.values()
            for dev_id, dr in runner.runners.items()
        }

    def _update_device_gauges(self) -> None:
        metrics.DEVICES.clear()
        errors = self.point_errors()
        for cls in {d.spec.cls for d in self.config.devices.values()}:
            trs = [t for t in self.trackers.values() if t.cls == cls]
            for state, n in summarize(trs, errors).items():
                metrics.DEVICES.labels(cls, state).set(n)

    async def run_forever(self) -> None:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(self._loop_error)
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signal.SIGTERM, self._stop.set)
            loop.add_signal_handler(signal.SIGINT, self._stop.set)
            loop.add_signal_handler(signal.SIGHUP, self._reload_in_background)
        # a SIGTERM while starting (e.g. a bus that takes long to open) stops the start
        starting = asyncio.ensure_future(self.start())
        stopping = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if not starting.done():
                log.info("stop requested while starting")
                starting.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await starting
            else:
                starting.result()  # raise what start() raised
        except BaseException:
            await self.stop()
            raise
        finally:
            stopping.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await stopping
        if self._stop.is_set():
            await self.stop()
            return
        settle_heap()
        await self._notify_status(send=False)  # sent with READY=1
        self._notify_ready()
        try:
            while not self._stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), timeout=5.0)
                self._update_device_gauges()
                await self._notify_status()
                await self._flush_aggregates(time.time())
        finally:
            await self.stop()

    async def _flush_uplinks(self, timeout: float) -> None:
        """Give connected uplinks a short, bounded time to deliver what is pending (the
        final ``stopping`` record included). Whatever is left stays in the buffer and is
        sent after the next start."""
        if not self.uplinks or self.buffer is None:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            busy = False
            for up in self.uplinks:
                try:
                    st = up.state()
                    connected = bool(st.get("connected"))
                    pending = (
                        self.buffer.pending_count(up.name)
                        + int(st.get("inflight_batches", 0) or 0)
                        + int(st.get("retry_batches", 0) or 0)
                    )
                except Exception:
                    continue
                if connected and pending > 0:
                    busy = True
            if not busy:
                return
            await asyncio.sleep(0.05)

    async def _flush_aggregates(self, now: float) -> None:
        """Privacy aggregate windows that closed become records (already privacy-safe,
        so they go straight to the buffer)."""
        policy = self.pipeline.privacy if self.pipeline is not None else None
        flush = getattr(policy, "flush_aggregates", None)
        if flush is None or self.buffer is None:
            return
        records = flush(now)
        if records:
            await self._sink(records)

    def _healthy(self) -> bool:
        """Watchdog health (beside event-loop lag, which the watchdog measures itself):
        the buffer is open. A full disk is a degradation, not a reason to be restarted."""
        return self.buffer is not None

    def _loop_error(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        """Errors nothing awaited (e.g. a library raising inside a transport callback):
        counted by type, logged with the traceback once per type, the daemon goes on."""
        exc = context.get("exception")
        kind = type(exc).__name__ if exc is not None else "error"
        metrics.LOOP_ERRORS.labels(kind).inc()
        if kind in self._loop_error_kinds:
            log.debug("event loop error (%s): %s", kind, context.get("message"))
            return
        self._loop_error_kinds.add(kind)
        log.error(
            "unhandled %s in the event loop: %s (counted in edge_gw_loop_errors_total; further "
            "ones of this type are logged at debug level)", kind, context.get("message"),
            exc_info=exc,
        )

    def _reload_in_background(self) -> None:
        async def job() -> None:
            await self.reload()

        self._spawn(job(), "reload")

    def request_stop(self) -> None:
        self._stop.set()

    def _notify_ready(self) -> None:
        """READY=1 and STATUS= to systemd (no-ops outside it), and start the event-loop
        monitor. The monitor always runs: it exports ``edge_gw_event_loop_lag_seconds`` with
        or without systemd, and pings the systemd watchdog only when one is configured."""
        from gateway import sdnotify

        sdnotify.ready(self._status_text or None)
        if self.watchdog is None:
            try:
                self.watchdog = sdnotify.Watchdog(health=self._healthy)
            except ValueError as exc:  # a malformed WATCHDOG_USEC must not stop the daemon
                log.error("systemd watchdog settings ignored: %s", exc)
                self.watchdog = sdnotify.Watchdog(health=self._healthy, environ={})
            self.watchdog.start()

    async def health(self) -> dict[str, Any]:
        """The verdict ``GET /api/v1/health`` returns (see :mod:`gateway.health`)."""
        from gateway import health

        snap = await health.snapshot(self)
        ready, not_ready = health.readiness(snap)
        status, reasons = health.evaluate(snap)
        wd = self.watchdog
        lag = float(wd.last_lag) if wd is not None else 0.0
        live = wd is None or lag <= wd.lag_threshold
        return {
            "live": live,
            "ready": ready,
            "reasons": not_ready,
            "status": status,
            "status_reasons": [r.to_dict() for r in reasons],
            "buses_down": list(snap.buses_down),
            "devices": summarize(list(self.trackers.values()), self.point_errors()),
            "uplinks": {u["name"]: bool(u.get("connected")) for u in snap.uplinks},
            "clock_synchronised": snap.clock_synchronised,
            "loop_lag_seconds": round(lag, 4),
        }

    async def _notify_status(self, *, send: bool = True) -> None:
        """STATUS= for systemd: the same status and reasons as /api/v1/health."""
        try:
            from gateway import health, sdnotify
        except ImportError:
            return
        try:
            snap = await health.snapshot(self)
            status, reasons = health.evaluate(snap)
            pending = ""
            if self.buffer is not None and self.uplinks:
                pending = "; " + ", ".join(
                    f"{u.name} pending {self.buffer.pending_count(u.name)}" for u in self.uplinks
                )
            text = health.status_line(
                status, reasons, summarize(list(self.trackers.values()), self.point_errors()), pending
            )
        except Exception:
            log.exception("building the status line failed")
            return
        self._status_text = text
        if send:
            with contextlib.suppress(Exception):
                sdnotify.status(text)

    async def stop(self) -> None:
        """Stop polling, commit what is in flight, stop uplinks and the API, close the buffer."""
        self.ready = False
        self.not_ready_reasons = ["stopping"]
        with contextlib.suppress(Exception):
            from gateway import sdnotify

            sdnotify.stopping()
        if self.watchdog is not None:
            with contextlib.suppress(Exception):
                await self.watchdog.stop()
            self.watchdog = None
        for runner in list(self.runners.values()):
            await runner.close()
        self.runners.clear()
        if self.pipeline is not None and self.buffer is not None:
            with contextlib.suppress(Exception):
                await self._flush_aggregates(math.inf)
            with contextlib.suppress(Exception):
                await self.pipeline.submit([self._gw_record("status", "stopping")])
            await self._flush_uplinks(STOP_FLUSH_SECONDS)
        await cancel_and_wait(self._uplink_tasks)
        self._uplink_tasks.clear()
        for up in self.uplinks:
            close = getattr(up, "close", None)
            if close is not None:
                with contextlib.suppress(Exception):
                    await close()
        self.uplinks.clear()
        if self.api is not None:
            await self.api.stop()
            self.api = None
        await cancel_and_wait(list(self._tasks))
        if self.buffer is not None:
            await self.buffer.close()
            self.buffer = None

    # ------------------------------------------------------------------ reload
    async def reload(self) -> dict[str, Any]:
        """Re-read the config file. Devices, buses, profiles and uplinks are applied in place
        (changed buses restarted; untouched buses keep running); settings that need a restart
        are reported and left as they were. No accepted record is lost: the buffer stays open."""
        try:
            new = load_config(self.config.file, registry=self.config.registry)
        except ConfigError as exc:
            metrics.CONFIG_RELOADS.labels("invalid").inc()
            log.error("reload refused, the running configuration is kept:\n%s", exc)
            return {"outcome": "invalid", "errors": [str(i) for i in exc.issues]}
        old = self.config
        needs_restart = [
            key
            for key, a, b in (
                ("gateway.id", old.gw_id, new.gw_id),
                ("buffer", old.model.buffer, new.model.buffer),
                ("api", old.model.api, new.model.api),
            )
            if a != b
        ]
        if needs_restart:
            log.warning("reload: %s changed and needs a restart; kept as before", ", ".join(needs_restart))
        assert self.pipeline is not None
        old_groups = group_by_bus(old)
        new_groups = group_by_bus(new)
        changed = [
            name
            for name in set(old_groups) | set(new_groups)
            if name not in old_groups
            or name not in new_groups
            or old.buses.get(name) != new.buses.get(name)
            or _dev_sig(old_groups[name]) != _dev_sig(new_groups[name])
        ]
        for name in changed:
            runner = self.runners.pop(name, None)
            if runner is not None:
                await runner.close()
        new_trackers = make_trackers(new)
        for dev_id, tr in new_trackers.items():  # keep memory of unchanged devices
            old_tr = self.trackers.get(dev_id)
            if old_tr is not None and old_tr.profile == tr.profile:
                new_trackers[dev_id] = old_tr
        self.trackers = new_trackers
        for name in changed:
            if name in new_groups:
                spec = new.buses[name]
                runner = BusRunner(
                    spec, new.registry.drivers[spec.driver], new_groups[name],
                    self.pipeline, self.trackers,
                )
                self.runners[name] = runner
                try:
                    await runner.open()
                except Exception as exc:
                    log.error("reload: bus %s failed to open: %s", name, exc)
                runner.start(self._spawn)
        for name, runner in self.runners.items():
            runner.trackers = self.trackers
            if name not in changed and runner.bus is not None:
                runner.bus.reloaded()
        self.config = _merge_keep(old, new, needs_restart)
        if self.commands is not None:
            self.commands.devices = self.config.devices
        if old.uplinks != new.uplinks and "gateway.id" not in needs_restart:
            await cancel_and_wait(self._uplink_tasks)  # bounded, re-cancelling: as on stop
            self._uplink_tasks.clear()
            self.uplinks.clear()
            self._start_uplinks()
        settle_heap(reloaded=True)
        await self.pipeline.submit([self._gw_record("status", "reloaded")])
        metrics.CONFIG_RELOADS.labels("ok").inc()
        log.info("configuration reloaded: %d bus(es) restarted", len(changed))
        return {"outcome": "ok", "restarted_buses": sorted(changed), "needs_restart": needs_restart}


def settle_heap(*, reloaded: bool = False) -> None:
    """Move what start-up (or a reload) built -- modules, config, profiles, trackers -- out
    of the cyclic garbage collector's reach (``gc.freeze``).

    Without it, every full collection walks these few hundred thousand long-lived objects
    while the records in flight keep promoting objects to the oldest generation: at 1,000
    devices that was a 60-100 ms pause of the event loop every few seconds, visible as poll
    jitter. After a reload the previous freeze is undone first so the replaced config's
    cycles can be collected."""
    if reloaded:
        gc.unfreeze()
    gc.collect()
    gc.freeze()


def _dev_sig(devs: list[Any]) -> list[Any]:
    return sorted((d.spec.id, repr(d.spec), d.section) for d in devs)


def _merge_keep(old: Config, new: Config, keep: list[str]) -> Config:
    if not keep:
        return new
    # keep the restart-only settings of the running config
    model = new.model.model_copy(
        update={
            "gateway": old.model.gateway if "gateway.id" in keep else new.model.gateway,
            "buffer": old.model.buffer,
            "api": old.model.api,
        }
    )
    new.model = model
    return new


def run(config_path: Path) -> int:
    """Entry point of ``edge-gateway run``."""
    from gateway.logbuffer import install

    install()
    config = load_config(config_path)
    try:
        import uvloop

        runner_factory: Any = uvloop.run
    except ImportError:
        runner_factory = asyncio.run
    app_holder: dict[str, GatewayApp] = {}

    async def main() -> None:
        app = GatewayApp(config)
        app_holder["app"] = app
        await app.run_forever()

    runner_factory(main())
    return 0

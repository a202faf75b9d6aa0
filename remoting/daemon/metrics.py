"""Prometheus metrics of one radiumd.

A registry of its own (not the process-global one), so several daemons in one
test process do not collide.  Gauges that mirror state are set from the
allocator when scraped, so they can never drift from it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from .._allocator import Allocator


class _AllocatorCollector(Collector):
    def __init__(self, allocator: Callable[[], Allocator]) -> None:
        self._allocator = allocator

    def collect(self) -> Iterator[GaugeMetricFamily]:
        a = self._allocator()
        devices = GaugeMetricFamily("radium_devices", "Devices by health", labels=["health"])
        counts: dict[str, int] = {"ok": 0, "failed": 0, "unknown": 0}
        for d in a.devices.values():
            counts[d.health] = counts.get(d.health, 0) + 1
        for health, n in counts.items():
            devices.add_metric([health], n)
        yield devices

        total = GaugeMetricFamily("radium_device_memory_bytes", "Device memory", labels=["device", "model"])
        allocated = GaugeMetricFamily(
            "radium_device_memory_allocated_bytes", "Device memory held by leases", labels=["device"]
        )
        for d in a.devices.values():
            total.add_metric([d.id, d.model], d.memory_bytes)
            allocated.add_metric([d.id], a.allocated(d.id))
        yield total
        yield allocated
        yield GaugeMetricFamily("radium_leases", "Leases held", value=len(a.leases))
        yield GaugeMetricFamily("radium_queue_length", "Requests waiting", value=len(a.queue))


class Metrics:
    def __init__(self, allocator: Callable[[], Allocator]) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_AllocatorCollector(allocator))
        self.bytes_received = Counter(
            "radium_bytes_received", "Bytes received from clients", registry=self.registry
        )
        self.bytes_sent = Counter("radium_bytes_sent", "Bytes sent to clients", registry=self.registry)
        self.requests = Counter(
            "radium_requests", "Requests handled", ["kind", "outcome"], registry=self.registry
        )
        self.refused = Counter(
            "radium_auth_refused",
            "Connections or messages refused for their key",
            registry=self.registry,
        )
        self.malformed = Counter(
            "radium_malformed_messages",
            "Frames dropped or answered as malformed",
            registry=self.registry,
        )
        self.sessions_expired = Counter(
            "radium_sessions_expired",
            "Sessions dropped for a missing heartbeat",
            registry=self.registry,
        )

    def serve(self, listen: str) -> tuple[str, int]:
        """Start the HTTP endpoint; returns the address and port actually bound."""
        host, _, port = listen.rpartition(":")
        server, _thread = start_http_server(int(port), addr=host.strip("[]"), registry=self.registry)
        bound = server.server_address
        return str(bound[0]), int(bound[1])

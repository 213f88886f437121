"""An independent WS-Discovery publisher: the ``wsdiscovery`` package (PyPI) announcing one
ONVIF NetworkVideoTransmitter, in a child process.

    python -m tests.conformance.wsd_publisher PORT '{"scopes": [...], "xaddrs": [...]}'

The package's publisher is used unchanged except for three settings it has no parameter
for, so that it stays on loopback:

- it listens on ``PORT`` instead of 3702 (``wsdiscovery.threaded.MULTICAST_PORT``; its
  socket is bound to every address of that port, so a unicast Probe to 127.0.0.1:PORT
  reaches it -- the same socket a real camera answers unicast probes on);
- it sees no network interface (``_getNetworkAddrs``): it joins no multicast group and
  sends its Hello/Bye on no LAN, the only traffic is its answer to our probe;
- its IPv6 thread is left out (the way the package runs on a host without IPv6): it would
  queue every IPv4 unicast answer on its IPv6 socket as well and die on it.

Prints one JSON line when published: ``{"port", "endpoint", "version"}``; runs until
SIGTERM.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
from importlib.metadata import version
from typing import Any


def main(argv: list[str]) -> int:
    import wsdiscovery.threaded as threaded
    from wsdiscovery import QName, Scope
    from wsdiscovery.publishing import ThreadedWSPublishing

    port = int(argv[0])
    spec: dict[str, Any] = json.loads(argv[1]) if len(argv) > 1 else {}

    class NoIPv6:  # what the package meets on a host without IPv6
        def __init__(self, observer: Any) -> None:
            raise OSError("IPv6 left out: loopback IPv4 test")

    threaded.MULTICAST_PORT = port
    threaded._getNetworkAddrs = lambda _family: []
    threaded.NetworkingThreadIPv6 = NoIPv6

    types = [QName("http://www.onvif.org/ver10/network/wsdl", "NetworkVideoTransmitter", "dn")]
    types += [QName("http://www.onvif.org/ver10/device/wsdl", "Device", "tds")] if spec.get("device_type", True) else []
    publisher = ThreadedWSPublishing(uuid_=spec.get("endpoint"))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    publisher.start()
    try:
        publisher.publishService(types, [Scope(s) for s in spec.get("scopes", [])], list(spec.get("xaddrs", [])))
        print(json.dumps({"port": port, "endpoint": publisher.uuid, "version": version("wsdiscovery")}), flush=True)
        stop.wait()
    finally:
        publisher.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

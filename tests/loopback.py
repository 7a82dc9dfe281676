"""Free loopback ports for test servers, from the range the serving tests may use (18000-18099).

Each port is handed out once per session, so two servers started before either binds never get the same one.
"""

from __future__ import annotations

import socket
import threading

PORTS = range(18000, 18100)
_handed_out: set[int] = set()
_lock = threading.Lock()


def free_port() -> int:
    """A port of the range that nothing listens on and that this session has not handed out before."""
    with _lock:
        for port in PORTS:
            if port in _handed_out:
                continue
            with socket.socket() as probe:
                try:
                    probe.bind(("127.0.0.1", port))
                except OSError:
                    continue
            _handed_out.add(port)
            return port
    raise RuntimeError(f"no free port left in {PORTS.start}-{PORTS.stop - 1}")

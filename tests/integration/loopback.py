"""Loopback for the adapter tests: the egress rules that allow it (the test bed's platform policy,
where every local server listens), and a relay that counts what crosses it."""

from __future__ import annotations

import contextlib
import socket
import threading

from helpers import wait_for
from rewind.api.policy import EgressRule
from rewind_testbed.install import LOOPBACK_EGRESS

LOOPBACK = [EgressRule.model_validate(rule) for rule in LOOPBACK_EGRESS]


class Relay:
    """A listener on 127.0.0.1 that forwards each connection to `target` (host, port), counting
    the connections it accepts and the bytes the target sends back."""

    def __init__(self, target: tuple[str, int]):
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.peers: list[tuple] = []        # who connected, in the order accepted
        self.received = 0                   # bytes from the target
        self._lock = threading.Lock()
        threading.Thread(target=self._serve, daemon=True).start()

    def __enter__(self) -> Relay:
        return self

    def __exit__(self, *exc) -> None:
        self.listener.close()

    def connections(self) -> int:
        """The connections accepted so far. A probe connection is made and waited for: accepted
        in order, it comes after any connection a client had made (it is not counted)."""
        with socket.create_connection(("127.0.0.1", self.port)) as probe:
            me = probe.getsockname()
            wait_for("the relay to accept its probe", lambda: me in self.peers, timeout=10, interval=0.02)
            return self.peers.index(me)

    def _serve(self) -> None:
        while True:
            try:
                client, peer = self.listener.accept()
            except OSError:
                return                      # closed
            with self._lock:
                self.peers.append(peer)
            try:
                upstream = socket.create_connection(self.target, timeout=10)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            done = threading.Barrier(2, action=lambda c=client, u=upstream: (c.close(), u.close()))
            threading.Thread(target=self._pipe, args=(client, upstream, False, done), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, True, done), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, back: bool, done: threading.Barrier) -> None:
        try:
            while data := src.recv(65536):
                if back:
                    with self._lock:
                        self.received += len(data)
                dst.sendall(data)
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            for sock in (src, dst):         # ends the other direction too
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            return
        with contextlib.suppress(threading.BrokenBarrierError):
            done.wait(timeout=60)           # both directions ended: the barrier's action closes

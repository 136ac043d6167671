"""A loopback TCP relay a test can cut: to PostgreSQL (tests/system/test_outages.py) or to a
broker a destination sends to (tests/forward/test_brokers.py)."""

from __future__ import annotations

import random
import socket
import threading


class TcpProxy:
    """A loopback TCP relay to PostgreSQL that a test can stop (listener closed, connections
    reset), start again on the same port, or freeze (connections kept, nothing forwarded)."""

    def __init__(self, target_port: int, *, low_port: bool = False) -> None:
        self.target_port = target_port
        # low_port: listen below Linux's ephemeral range (32768-60999). A client retrying a
        # closed port in that range can be handed that very port for its own end and connect to
        # itself (TCP simultaneous open), and the proxy could not listen there again.
        self.port = _free_low_port() if low_port else 0
        self._listener: socket.socket | None = None
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._flowing = threading.Event()
        self._flowing.set()
        self._threads: list[threading.Thread] = []
        self._acceptor = threading.Thread()

    def start(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        listener.settimeout(0.1)
        self.port = listener.getsockname()[1]
        self._listener = listener
        thread = threading.Thread(target=self._accept, args=(listener,), daemon=True)
        thread.start()
        self._threads.append(thread)
        self._acceptor = thread

    def _accept(self, listener: socket.socket) -> None:
        while self._listener is listener:
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                client.close()
                continue
            client.settimeout(None)
            upstream.settimeout(None)
            with self._lock:
                if self._listener is not listener:  # stopped while this one was accepted
                    client.close()
                    upstream.close()
                    return
                self._sockets.update((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                thread = threading.Thread(target=self._pump, args=(a, b), daemon=True)
                thread.start()
                self._threads.append(thread)

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                while not self._flowing.wait(0.1):
                    if source not in self._sockets:
                        return
                sink.sendall(data)
        except OSError:
            pass
        finally:
            self._kill(source, sink)

    def _kill(self, *sockets: socket.socket) -> None:
        with self._lock:
            for sock in sockets:
                if sock in self._sockets:
                    self._sockets.discard(sock)
                    try:
                        # RST, not FIN: what a crashed database host or a dropped NAT entry sends.
                        sock.setsockopt(
                            socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
                        )
                        sock.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                    sock.close()

    def stop(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
        if listener is not None:
            # The acceptor notices within its 0.1 s time-out; closing the socket under it
            # could leave the kernel's listener alive until it returns.
            self._acceptor.join(timeout=10)
            listener.close()
        with self._lock:
            sockets = list(self._sockets)
        self._kill(*sockets)
        self._flowing.set()

    def freeze(self) -> None:
        self._flowing.clear()

    def thaw(self) -> None:
        self._flowing.set()

    def join(self) -> None:
        for thread in self._threads:
            thread.join(timeout=5)


def _free_low_port() -> int:
    for port in random.sample(range(20000, 32000), 200):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port between 20000 and 32000")

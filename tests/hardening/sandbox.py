"""What the privacy checks watch on a running server: a trap proxy for outgoing requests
and the process's TCP peers read from /proc."""

from __future__ import annotations

import os
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path


class TrapProxy:
    """A local TCP listener named as HTTP(S)_PROXY: any client honouring the proxy
    variables that tries to reach the internet connects here instead, and is counted."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.requests: list[bytes] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(1.0)
                try:
                    self.requests.append(conn.recv(512))
                except OSError:
                    self.requests.append(b"")

    def close(self) -> None:
        self._stop.set()
        self.sock.close()
        self._thread.join(timeout=2)


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").glob("*"):
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


def _hex_address(text: str) -> tuple[str, int]:
    address, port = text.split(":")
    if len(address) == 8:  # IPv4, little-endian
        ip = ".".join(str(int(address[i : i + 2], 16)) for i in (6, 4, 2, 0))
    else:  # IPv6: four little-endian 32-bit words
        words = [address[i : i + 8] for i in range(0, 32, 8)]
        raw = b"".join(bytes.fromhex(w)[::-1] for w in words)
        ip = socket.inet_ntop(socket.AF_INET6, raw)
    return ip, int(port, 16)


def remote_peers(pid: int) -> set[tuple[str, int]]:
    """Remote (address, port) of every connected TCP socket the process holds, from /proc."""
    inodes = _socket_inodes(pid)
    peers = set()
    for table in ("tcp", "tcp6"):
        path = Path(f"/proc/{pid}/net/{table}")
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            parts = line.split()
            if len(parts) > 9 and parts[9] in inodes and parts[3] != "0A":  # 0A = LISTEN
                peers.add(_hex_address(parts[2]))
    return peers


def is_loopback(ip: str) -> bool:
    return ip.startswith("127.") or ip in ("::1", "::ffff:127.0.0.1") or ip.startswith(
        "::ffff:127."
    )


@dataclass
class Server:
    """The running dashboard and what the privacy checks need to know about it."""

    url: str
    pid: int
    home: Path
    tmp: Path
    started: float
    proxy: TrapProxy
    peers: set[tuple[str, int]] = field(default_factory=set)

"""Helpers for the service tests: a real uvicorn server (in a thread or a child process) on a
free loopback port, hostile MIDI files, and a raw chunked upload."""

from __future__ import annotations

import contextlib
import os
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from midi_factory import write_dense

SRC = Path(__file__).resolve().parents[1] / "src"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def server_thread(app) -> Iterator[str]:
    """``app`` served by uvicorn on 127.0.0.1 in a thread of this process; yields its URL."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@contextlib.contextmanager
def server_process(*args: str) -> Iterator[tuple[str, subprocess.Popen]]:
    """``harmonixr serve ARGS`` in a child process on a free port; yields (URL, process)."""
    import httpx

    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
    }
    cmd = [sys.executable, "-m", "harmonixr.cli", "serve", "--port", str(port), *args]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                out = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
                raise RuntimeError(f"harmonixr serve exited with {proc.returncode}: {out[-2000:]}")
            try:
                if httpx.get(url + "/api/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("harmonixr serve did not answer within 120 s")
            time.sleep(0.2)
        yield url, proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=20)


# ------------------------------------------------------------------ hostile files


def add_track(data: bytes, payload: bytes) -> bytes:
    """``data`` (a standard MIDI file) with one more track holding ``payload`` as a text event
    (a file of any size that still parses)."""
    n = len(payload)
    size = bytearray([n & 0x7F])
    n >>= 7
    while n:
        size.insert(0, 0x80 | (n & 0x7F))
        n >>= 7
    body = b"\x00\xff\x01" + bytes(size) + payload + b"\x00\xff\x2f\x00"
    tracks = int.from_bytes(data[10:12], "big") + 1
    head = data[:10] + tracks.to_bytes(2, "big") + data[12:]
    return head + b"MTrk" + len(body).to_bytes(4, "big") + body


def mutations(data: bytes, folder: Path, n: int = 300, seed: int = 0) -> list[tuple[str, bytes]]:
    """``n`` hostile variants of a real MIDI file, (kind, bytes): truncations, flipped bytes,
    huge declared lengths, random bytes behind a valid header, zero-length tracks, files of
    dense hours-long notes."""
    rng = np.random.default_rng(seed)
    header = data[:14]
    dense = write_dense(folder / "dense.mid").read_bytes()
    out: list[tuple[str, bytes]] = []

    def truncated() -> bytes:
        return data[: int(rng.integers(1, len(data)))]

    def flipped() -> bytes:
        b = bytearray(data)
        for i in rng.integers(0, len(b), int(rng.integers(1, 12))):
            b[i] ^= int(rng.integers(1, 256))
        return bytes(b)

    def huge_length() -> bytes:
        b = bytearray(data)
        where = int(rng.choice([4, 18]))  # the header's length, or the first track's
        b[where : where + 4] = int(rng.integers(1 << 20, 1 << 32)).to_bytes(4, "big")
        return bytes(b)

    def random_tail() -> bytes:
        tail = rng.bytes(int(rng.integers(1, 5000)))
        return (
            header + (b"MTrk" + len(tail).to_bytes(4, "big") if rng.random() < 0.5 else b"") + tail
        )

    def zero_tracks() -> bytes:
        k = int(rng.integers(1, 65536))
        head = data[:10] + k.to_bytes(2, "big") + data[12:14]
        return head + b"MTrk\x00\x00\x00\x00" * int(rng.integers(0, min(k, 2000) + 1))

    def dense_variant() -> bytes:
        b = bytearray(dense)
        if rng.random() < 0.5:
            i = int(rng.integers(22, len(b)))
            b[i] ^= int(rng.integers(1, 256))
        return bytes(b)

    makers = [
        ("truncated", truncated, 60),
        ("flipped", flipped, 90),
        ("huge_length", huge_length, 40),
        ("random_tail", random_tail, 60),
        ("zero_length_tracks", zero_tracks, 40),
        ("dense_hours", dense_variant, 10),
    ]
    for kind, make, count in makers:
        out.extend((kind, make()) for _ in range(count))
    return out[:n]


def chunked_upload(url: str, path: str, total: int, chunk: int = 1 << 20) -> tuple[int, int]:
    """POST ``total`` bytes in chunked encoding (no Content-Length), a chunk at a time, stopping
    as soon as the server answers. Returns (status, bytes sent before the answer)."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    sent = 0
    try:
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n"
            "Content-Type: multipart/form-data; boundary=xyz\r\n\r\n"
        )
        part = (
            b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="big.mid"\r\n'
            b"Content-Type: audio/midi\r\n\r\nMThd"
        )
        sock.sendall(head.encode() + b"%x\r\n" % len(part) + part + b"\r\n")
        block = b"%x\r\n" % chunk + b"\0" * chunk + b"\r\n"
        while sent < total:
            if select.select([sock], [], [], 0)[0]:
                break
            try:
                sock.sendall(block)
            except OSError:  # the server answered and closed
                break
            sent += chunk
        reply = b""
        while b"\r\n" not in reply:
            got = sock.recv(4096)
            if not got:
                break
            reply += got
        return int(reply.split(b" ")[1]), sent
    finally:
        sock.close()

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

    from harmonixr.serve.protocol import uvicorn_settings

    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="on", **uvicorn_settings())
    server = uvicorn.Server(config)
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


# ------------------------------------------------------------------ hostile scores


def musicxml(measures: int = 3, repeat_times: int | None = None) -> bytes:
    """A small valid MusicXML: ``measures`` bars of four quarter notes at quarter = 60 (4 s a
    bar); with ``repeat_times`` the last bar ends in a repeat barline played that many times."""
    steps = "CDEFGAB"
    bars = []
    for m in range(measures):
        notes = "".join(
            f"<note><pitch><step>{steps[(m + i) % 7]}</step><octave>4</octave></pitch>"
            "<duration>1</duration><type>quarter</type></note>"
            for i in range(4)
        )
        head = (
            "<attributes><divisions>1</divisions><time><beats>4</beats>"
            "<beat-type>4</beat-type></time><clef><sign>G</sign><line>2</line></clef>"
            '</attributes><sound tempo="60"/>'
            if m == 0
            else ""
        )
        tail = ""
        if repeat_times and m == measures - 1:
            tail = (
                '<barline location="right"><repeat direction="backward" '
                f'times="{repeat_times}"/></barline>'
            )
        bars.append(f'<measure number="{m + 1}">{head}{notes}{tail}</measure>')
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n<!DOCTYPE score-partwise PUBLIC '
        '"-//Recordare//DTD MusicXML 4.0 Partwise//EN" '
        '"http://www.musicxml.org/dtds/partwise.dtd">\n<score-partwise version="4.0">'
        '<part-list><score-part id="P1"><part-name>Piano</part-name></score-part></part-list>'
        f'<part id="P1">{"".join(bars)}</part></score-partwise>'
    ).encode()


def mxl(xml: bytes, name: str = "score.musicxml") -> bytes:
    """``xml`` zipped as an ``.mxl`` (with its ``META-INF/container.xml``)."""
    import io
    import zipfile

    container = (
        '<?xml version="1.0"?><container><rootfiles>'
        f'<rootfile full-path="{name}"/></rootfiles></container>'
    )
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("META-INF/container.xml", container)
        z.writestr(name, xml)
    return out.getvalue()


def lying_mxl(inflated: int = 64 * 1024 * 1024, declared: int = 1000) -> bytes:
    """An ``.mxl`` whose MusicXML inflates to ``inflated`` bytes while the zip's directory
    (and its local header) declare ``declared``."""
    import zlib

    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    parts = [comp.compress(b"<score-partwise>")]
    block = b" " * (1 << 20)
    for _ in range(inflated >> 20):
        parts.append(comp.compress(block))
    parts.append(comp.compress(b"</score-partwise>") + comp.flush())
    data = bytearray(mxl(b"x" * 64))  # the layout; its member's bytes are replaced below
    # rebuild with the huge stream: local header + data, then the central directory
    name = b"score.musicxml"
    stream = b"".join(parts)
    crc = zlib.crc32(b"")  # wrong on purpose: a reader that trusts sizes never gets there
    local = (
        b"PK\x03\x04"
        + (20).to_bytes(2, "little")
        + b"\0\0"
        + (8).to_bytes(2, "little")
        + b"\0\0\0\0"
        + crc.to_bytes(4, "little")
        + len(stream).to_bytes(4, "little")
        + declared.to_bytes(4, "little")
        + len(name).to_bytes(2, "little")
        + b"\0\0"
        + name
    )
    central = (
        b"PK\x01\x02"
        + (20).to_bytes(2, "little") * 2
        + b"\0\0"
        + (8).to_bytes(2, "little")
        + b"\0\0\0\0"
        + crc.to_bytes(4, "little")
        + len(stream).to_bytes(4, "little")
        + declared.to_bytes(4, "little")
        + len(name).to_bytes(2, "little")
        + b"\0" * 12
        + (0).to_bytes(4, "little")
        + name
    )
    body = local + stream
    end = (
        b"PK\x05\x06"
        + b"\0" * 4
        + (1).to_bytes(2, "little") * 2
        + len(central).to_bytes(4, "little")
        + len(body).to_bytes(4, "little")
        + b"\0\0"
    )
    del data
    return body + central + end


def deep_mei(levels: int = 15000) -> bytes:
    """An MEI file of ``levels`` nested sections (about 150 KB at 15,000)."""
    return (
        '<?xml version="1.0"?><mei xmlns="http://www.music-encoding.org/ns/mei" '
        'meiversion="5.0"><music><body><mdiv><score><section>'
        + "<section>" * levels
        + "</section>" * levels
        + "</section></score></mdiv></body></music></mei>"
    ).encode()


def entity_musicxml(kind: str = "amplified") -> bytes:
    """MusicXML declaring entities: ``amplified`` (each level ten of the one below, 10⁸
    characters from a few hundred bytes) or ``external`` (a file of this machine)."""
    if kind == "external":
        subset = '<!ENTITY x SYSTEM "file:///etc/passwd">'
        use = "&x;"
    else:
        subset = '<!ENTITY a0 "aaaaaaaaaa">' + "".join(
            f'<!ENTITY a{i} "{f"&a{i - 1};" * 10}">' for i in range(1, 8)
        )
        use = "&a7;"
    xml = musicxml(3).decode()
    xml = xml.replace(
        '"http://www.musicxml.org/dtds/partwise.dtd">',
        f'"http://www.musicxml.org/dtds/partwise.dtd" [{subset}]>',
    )
    return xml.replace("<part-name>Piano</part-name>", f"<part-name>{use}</part-name>").encode()


def raw_upload(url: str, name: str, data: bytes, path: str = "/api/attribute") -> socket.socket:
    """A whole multipart upload of ``data`` sent on a socket of its own, the answer not read:
    the caller closes the socket to hang up."""
    host, port = url.removeprefix("http://").split(":")
    body = (
        b'--hx\r\nContent-Disposition: form-data; name="file"; filename="'
        + name.encode()
        + b'"\r\nContent-Type: application/octet-stream\r\n\r\n'
        + data
        + b"\r\n--hx--\r\n"
    )
    head = (
        f"POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: multipart/form-data; "
        f"boundary=hx\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    sock = socket.create_connection((host, int(port)), timeout=30)
    sock.sendall(head + body)
    return sock

"""The web service's overhead and throughput over loopback, against the API call it wraps.

    python bench/serve.py [--model RUN] [--requests 200] [--clients 4] [--per-client 50]

(a) ``--requests`` sequential ``POST /api/attribute`` of a generated 3-minute piece to
``harmonixr serve`` (a child process on 127.0.0.1), alternated in blocks of 20 with the same
question asked of the API in this process (``Harmonixr.attribute(path)``: parse in a child
process, forward, calibrated probabilities): medians, p99, and the ratio of the medians (goal,
≤ 1.5×). Blocks, not single calls: two PyTorch processes on few cores slow each
other down for a while after each forward (OpenMP threads spin), which a real client, running
no model, does not do. (b) ``--clients`` concurrent clients × ``--per-client`` requests
each: throughput, p99 and errors (goal: none). (c) A one-note file held for 3 h 59 min
against the 3-minute piece (goal: ≤ 0.5 s of server time). (d) ``--slow-clients`` connections
trickle a body a byte every 2 s while a whole upload is timed (goal: 200). The server runs
with its defaults (2 workers, a queue of 8, one torch thread).

Issue 26's attacks, each against a baseline measured in the same run: (e) the deep MEI, the
zip that lies about its size (1 MB inflating to 1 GB), entity-amplified MusicXML: status,
seconds and the largest parser process meanwhile (goal: 4xx within 10 s, ≤ 1 GB); (f) two
clients posting repeat bombs and two hanging up on slow scores, in loops, while a normal
upload is timed: its p95 against the p95 measured idle just before (goal ≤ 3×); (g) 64
bodies trickled from 8 addresses (127.0.0.2–9) while a normal upload is timed (goal: 200).
``--score-costs N``: the conversion time and memory of music21's corpus's N largest MusicXML
files and N more (the figures behind ``serve.service.Limits``), then exits.

``--model`` defaults to the shipped model; without one, a throwaway ``small`` run is trained
for two steps on generated pieces and indexed (speed does not depend on the weights). The
machine's load average is printed before and after: other processes change the figures.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(HERE.parent / "tests"))  # the hostile files of tests/serve_fixtures.py

from embed import write_piece  # noqa: E402  (bench/embed.py: a generated piano piece)

BLOCK, PAUSE = 20, 0.5  # requests per alternated block, seconds between blocks


def throwaway_run(root: Path) -> Path:
    """A ``small`` run trained for two steps on generated pieces, with its index."""
    from harmonixr.data.cache import preprocess
    from harmonixr.search.index import build_index
    from harmonixr.train.config import TrainConfig
    from harmonixr.train.quiet import quiet_lightning
    from harmonixr.train.run import train

    for i in range(24):
        folder = root / "midi" / ("Alpha" if i % 2 else "Beta")
        folder.mkdir(parents=True, exist_ok=True)
        write_piece(folder / f"p{i:02d}.mid", 60.0, seed=100 + i)
    preprocess(root / "midi", root / "cache", workers=2)
    config = TrainConfig(
        loss="contrastive",
        data=str(root / "cache"),
        out=str(root / "run"),
        preset="small",
        crop_seconds=60,
        batch_size=4,
        steps_per_epoch=2,
        max_steps=2,
        warmup_steps=1,
        val_pairs=20,
        split_fractions=(0.5, 0.25, 0.25),
        checkpoint_every_steps=1000,
        seed=0,
    )
    with quiet_lightning():
        run = train(config)
    build_index(run, root / "cache")
    return run


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: Path | None, port: int) -> subprocess.Popen:
    import httpx

    cmd = [sys.executable, "-m", "harmonixr.cli", "serve", "--port", str(port)]
    cmd += ["--model", str(model)] if model else []
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"harmonixr serve exited: {proc.stderr.read().decode()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("harmonixr serve did not answer within 180 s")


def p99(xs: list[float]) -> float:
    return float(np.percentile(xs, 99))


def concurrent(url: str, data: bytes, clients: int, per_client: int) -> dict:
    import httpx

    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()

    def client() -> None:
        with httpx.Client(base_url=url, timeout=120) as http:
            for _ in range(per_client):
                t0 = time.perf_counter()
                try:
                    r = http.post("/api/attribute", files={"file": ("piece.mid", data)})
                    ok = r.status_code == 200
                    why = f"{r.status_code} {r.text[:80]}"
                except httpx.HTTPError as exc:
                    ok, why = False, repr(exc)
                dt = time.perf_counter() - t0
                with lock:
                    latencies.append(dt)
                    if not ok:
                        errors.append(why)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return {"wall": wall, "latencies": latencies, "errors": errors}


def held_note(url: str, normal: bytes, tmp: Path, n: int = 10) -> dict:
    """Median server answer time of ``/api/analyze`` for a one-note file held for 3 h 59 min
    and for the normal piece, alternated."""
    import httpx
    import symusic

    score = symusic.Score(480)
    score.tempos.append(symusic.Tempo(0, qpm=120.0))
    track = symusic.Track(name="piano", program=0, is_drum=False)
    track.notes.append(symusic.Note(0, 480 * 2 * 14340, 60, 90))
    score.tracks.append(track)
    path = tmp / "held.mid"
    score.dump_midi(str(path))
    held = path.read_bytes()
    times: dict[str, list[float]] = {"held": [], "normal": []}
    with httpx.Client(base_url=url, timeout=120) as http:
        for _ in range(n):
            for key, data in (("held", held), ("normal", normal)):
                t0 = time.perf_counter()
                r = http.post("/api/analyze", files={"file": (f"{key}.mid", data)})
                times[key].append(time.perf_counter() - t0)
                assert r.status_code == 200, r.text
    return {k: statistics.median(v) for k, v in times.items()} | {"bytes": len(held)}


def slow_bodies(url: str, data: bytes, clients: int) -> dict:
    """``clients`` connections from one address trickle a multipart body a byte every 2 s;
    meanwhile one whole upload from another address is timed, and the trickling ones are
    counted: at most ``per_client`` of them are let in (the rest get 503 at once)."""
    from urllib.parse import urlparse

    import httpx

    u = urlparse(url)
    socks = []
    for _ in range(clients):
        # from another loopback address: another client than the whole upload's 127.0.0.1
        s = socket.create_connection((u.hostname, u.port), source_address=("127.0.0.2", 0))
        s.sendall(
            b"POST /api/attribute HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100000\r\n"
            b"Content-Type: multipart/form-data; boundary=b\r\n\r\n--b\r\n"
        )
        socks.append(s)
    stop = threading.Event()

    def trickle() -> None:
        while not stop.wait(2.0):
            for s in socks:
                with contextlib.suppress(OSError):  # a connection the server closed
                    s.sendall(b"x")

    t = threading.Thread(target=trickle, daemon=True)
    t.start()
    try:
        time.sleep(2.5)
        t0 = time.perf_counter()
        r = httpx.post(url + "/api/attribute", files={"file": ("p.mid", data)}, timeout=120)
        refused = 0
        for s in socks:  # the ones refused at once have a 503 waiting
            s.setblocking(False)
            with contextlib.suppress(OSError):
                refused += s.recv(64).startswith(b"HTTP/1.1 503")
        return {"status": r.status_code, "seconds": time.perf_counter() - t0, "refused": refused}
    finally:
        stop.set()
        for s in socks:
            s.close()


def _children_peak(pid: int, stop: threading.Event, out: list[int]) -> None:
    """The largest resident size of ``pid``'s child processes, sampled every 20 ms."""
    import psutil

    parent = psutil.Process(pid)
    while not stop.wait(0.02):
        for child in parent.children():
            with contextlib.suppress(psutil.Error):
                out[0] = max(out[0], child.memory_info().rss)


def memory_attacks(url: str, pid: int) -> list[tuple[str, int, str, float, int]]:
    """(name, status, reason, seconds, largest child's bytes) of each hostile score."""
    import httpx
    from serve_fixtures import deep_mei, entity_musicxml, lying_mxl, musicxml

    files = [
        ("a normal MusicXML (baseline)", "ok.musicxml", musicxml(8)),
        ("deep MEI, 148 KB", "deep.mei", deep_mei(7500)),
        ("lying zip, 1 MB → 1 GB", "lying.mxl", lying_mxl(1024 * 1024 * 1024, declared=1000)),
        ("entity-amplified MusicXML", "laughs.musicxml", entity_musicxml("amplified")),
        ("repeat bomb, times=100000", "bomb.musicxml", musicxml(1, repeat_times=100_000)),
    ]
    rows = []
    for label, name, data in files:
        stop, peak = threading.Event(), [0]
        watch = threading.Thread(target=_children_peak, args=(pid, stop, peak))
        watch.start()
        t0 = time.perf_counter()
        r = httpx.post(url + "/api/attribute", files={"file": (name, data)}, timeout=120)
        seconds = time.perf_counter() - t0
        stop.set()
        watch.join()
        reason = r.json()[0]["composer"] if r.status_code == 200 else r.json()["reason"]
        rows.append(
            (f"{label} ({len(data) / 1024:.0f} KB)", r.status_code, reason, seconds, peak[0])
        )
    return rows


def _p95(xs: list[float]) -> float:
    return float(np.percentile(xs, 95))


def _timed(url: str, data: bytes, n: int) -> list[float]:
    import httpx

    out = []
    with httpx.Client(base_url=url, timeout=120) as http:
        for _ in range(n):
            t0 = time.perf_counter()
            r = http.post("/api/attribute", files={"file": ("p.mid", data)})
            out.append(time.perf_counter() - t0)
            assert r.status_code == 200, r.text
    return out


def bombs_and_hangups(url: str, data: bytes, n: int = 30) -> dict:
    """p95 of a normal upload idle, then of the same uploads while two clients post repeat
    bombs and two send a slow score and hang up 0.3 s later, all four at once as the timed
    series begins (issue 26: two bombs held both workers for 30 s, a hang-up its whole parse)."""
    import httpx
    from serve_fixtures import musicxml, raw_upload

    idle = _timed(url, data, n)
    bomb = musicxml(1, repeat_times=100_000)
    slow = musicxml(400)  # a real score that holds its worker for seconds
    got: list[int] = []

    def bomber() -> None:
        r = httpx.post(url + "/api/attribute", files={"file": ("bomb.musicxml", bomb)}, timeout=120)
        got.append(r.status_code)

    def hanger() -> None:
        sock = raw_upload(url, "slow.musicxml", slow)
        time.sleep(0.3)
        sock.close()

    threads = [threading.Thread(target=f) for f in (bomber, bomber, hanger, hanger)]
    for t in threads:
        t.start()
    busy = _timed(url, data, n)
    for t in threads:
        t.join()
    return {"idle": _p95(idle), "busy": _p95(busy), "bombs": got}


def many_slow_bodies(url: str, data: bytes) -> dict:
    """64 bodies trickled from 8 addresses (8 each); meanwhile a normal upload, against the
    same upload just before."""
    from urllib.parse import urlparse

    import httpx

    base = _timed(url, data, 5)
    u = urlparse(url)
    socks = []
    for a in range(8):
        for _ in range(8):
            s = socket.create_connection(
                (u.hostname, u.port), source_address=(f"127.0.0.{a + 2}", 0)
            )
            s.sendall(
                b"POST /api/attribute HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100000\r\n"
                b"Content-Type: multipart/form-data; boundary=b\r\n\r\n--b\r\n"
            )
            socks.append(s)
    try:
        time.sleep(1.0)
        t0 = time.perf_counter()
        r = httpx.post(url + "/api/attribute", files={"file": ("p.mid", data)}, timeout=120)
        seconds = time.perf_counter() - t0
        time.sleep(6.0)  # past the 5 s grace: the trickling bodies are dropped (408)
        dropped = 0
        for s in socks:
            s.setblocking(False)
            with contextlib.suppress(OSError):
                dropped += s.recv(64).startswith((b"HTTP/1.1 408", b"HTTP/1.1 503"))
    finally:
        for s in socks:
            s.close()
    return {
        "status": r.status_code,
        "seconds": seconds,
        "base": statistics.median(base),
        "dropped": dropped,
    }


def score_costs(n: int) -> None:
    """Conversion seconds and memory of music21's corpus's ``n`` largest MusicXML files (by
    XML elements) and ``n`` others, each in a fresh child process."""
    import multiprocessing as mp
    import random

    import music21

    from harmonixr._pool import _status
    from harmonixr.midi.load import tensorize_bytes
    from harmonixr.midi.scores import read_mxl
    from harmonixr.midi.xmlsafe import scan

    def child(path: Path, q: mp.Queue) -> None:
        base = _status("VmRSS")
        t0 = time.perf_counter()
        try:
            got = f"{tensorize_bytes(path.read_bytes(), str(path), max_bytes=1 << 26).notes} notes"
        except Exception as exc:  # a MidiError says its reason
            got = str(getattr(exc, "reason", type(exc).__name__))
        q.put((time.perf_counter() - t0, _status("VmHWM") - base, got))

    root = Path(music21.__file__).parent / "corpus"
    rows = []
    for p in sorted(root.rglob("*")):
        if p.suffix.lower() in (".mxl", ".xml", ".musicxml"):
            xml = read_mxl(p.read_bytes(), 1 << 26) if p.suffix == ".mxl" else p.read_bytes()
            f = scan(xml, 1000)
            rows.append((f.elements, f.depth, f.played, len(xml), p))
    rows.sort(key=lambda r: r[0])
    print(
        f"{len(rows)} MusicXML files: nesting ≤ {max(r[1] for r in rows)}, notes as played "
        f"≤ {max(r[2] for r in rows):,}, elements p50 {rows[len(rows) // 2][0]:,}, "
        f"max {rows[-1][0]:,}"
    )
    pick = rows[-n:] + random.Random(0).sample(rows[:-n], n)
    ctx = mp.get_context("fork")
    print(f"{'file':<50} {'elements':>9} {'XML KB':>8} {'s':>6} {'+MB':>6}  result")
    for elements, _, _, size, p in pick:
        q: mp.Queue = ctx.Queue()
        proc = ctx.Process(target=child, args=(p, q))
        proc.start()
        seconds, memory, got = q.get()
        proc.join()
        print(
            f"{str(p.relative_to(root))[:50]:<50} {elements:>9,} {size / 1024:>8.0f} "
            f"{seconds:>6.1f} {memory / 2**20:>6.0f}  {got}",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=None, help="run with an index")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--per-client", type=int, default=50)
    parser.add_argument("--slow-clients", type=int, default=10)
    parser.add_argument("--score-costs", type=int, default=0, metavar="N")
    args = parser.parse_args()
    if args.score_costs:
        score_costs(args.score_costs)
        return

    import httpx

    import harmonixr
    from harmonixr.api import Harmonixr

    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        model = args.model
        shipped = (Path(harmonixr.__file__).parent / "pretrained" / "model.safetensors").is_file()
        if model is None and not shipped:
            print("no shipped model: a throwaway small run (2 steps, generated pieces)", flush=True)
            model = throwaway_run(tmp_path / "throwaway")
        piece = write_piece(tmp_path / "piece.mid", 180.0, seed=7)
        data = piece.read_bytes()
        hx = Harmonixr.load(model)
        print(f"model: {model or 'shipped'}; piece: 3 min, {len(data)} bytes", flush=True)
        port = free_port()
        proc = start_server(model, port)
        url = f"http://127.0.0.1:{port}"
        try:
            with httpx.Client(base_url=url, timeout=120) as http:
                for _ in range(5):  # warm both sides
                    hx.attribute(piece)
                    assert http.post("/api/attribute", files={"file": ("p.mid", data)}).is_success
                api: list[float] = []
                web: list[float] = []
                # blocks of BLOCK, alternated so that drifts in load hit both sides; a pause
                # between blocks lets one process's OpenMP threads stop spinning (they keep
                # both cores busy for a while after a forward) before the other one works
                for b0 in range(0, args.requests, BLOCK):
                    n = min(BLOCK, args.requests - b0)
                    for _ in range(n):
                        t0 = time.perf_counter()
                        hx.attribute(piece)
                        api.append(time.perf_counter() - t0)
                    time.sleep(PAUSE)
                    for _ in range(n):
                        t0 = time.perf_counter()
                        r = http.post("/api/attribute", files={"file": ("p.mid", data)})
                        web.append(time.perf_counter() - t0)
                        assert r.status_code == 200, r.text
                    time.sleep(PAUSE)
            hx.close()
            conc = concurrent(url, data, args.clients, args.per_client)
            held = held_note(url, data, tmp_path)
            gate = slow_bodies(url, data, args.slow_clients)
            attacks = memory_attacks(url, proc.pid)
            fair = bombs_and_hangups(url, data)
            many = many_slow_bodies(url, data)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    ms = 1000.0
    print(f"\n(a) {args.requests} sequential attribute requests, 3-minute piece")
    for name, xs in (("API call", api), ("HTTP request", web)):
        med, tail = statistics.median(xs) * ms, p99(xs) * ms
        print(f"    {name:<14} median {med:7.1f} ms   p99 {tail:7.1f} ms")
    ratio = statistics.median(web) / statistics.median(api)
    print(f"    ratio of medians {ratio:.2f}×  (goal ≤ 1.5×)")
    n = args.clients * args.per_client
    lat = conc["latencies"]
    print(f"\n(b) {args.clients} concurrent clients × {args.per_client} requests")
    print(f"    throughput {n / conc['wall']:.1f} requests/s   ({n} in {conc['wall']:.1f} s)")
    print(f"    median {statistics.median(lat) * ms:.1f} ms   p99 {p99(lat) * ms:.1f} ms")
    print(
        f"    errors {len(conc['errors'])}" + (f": {conc['errors'][:3]}" if conc["errors"] else "")
    )
    print("\n(c) a one-note file held for 3 h 59 min, against the 3-minute piece (10 each)")
    print(
        f"    held note median {held['held'] * ms:.0f} ms, {held['bytes']} bytes; 3-minute piece "
        f"{held['normal'] * ms:.0f} ms; ratio {held['held'] / held['normal']:.2f}×  "
        f"(goal: held note ≤ 500 ms)"
    )
    print(f"\n(d) {args.slow_clients} clients trickling a body a byte every 2 s")
    print(
        f"    a whole upload meanwhile: {gate['status']} in {gate['seconds'] * ms:.0f} ms "
        f"(goal: 200); trickling clients refused at once: {gate['refused']} "
        f"(one address may have 8 uploads under way)"
    )
    print("\n(e) hostile scores: status, reason, seconds, largest parser process meanwhile")
    for label, status, reason, seconds, peak in attacks:
        print(f"    {label:<44} {status} {reason:<12} {seconds:6.2f} s  {peak / 2**20:5.0f} MB")
    print("    (goal: 4xx within 10 s, largest parser ≤ 1024 MB)")
    print(
        f"\n(f) 30 normal uploads: p95 idle {fair['idle'] * ms:.0f} ms; with two repeat bombs "
        f"(answered {fair['bombs']}) and two hang-ups on slow scores as they begin "
        f"{fair['busy'] * ms:.0f} ms: {fair['busy'] / fair['idle']:.2f}×  (goal ≤ 3×)"
    )
    print(
        f"\n(g) 64 bodies trickled from 8 addresses: a normal upload {many['status']} in "
        f"{many['seconds'] * ms:.0f} ms (alone just before: {many['base'] * ms:.0f} ms, "
        f"{many['seconds'] / many['base']:.2f}×; goal: 200); trickling bodies answered 408/503 "
        f"6 s later: {many['dropped']} of 64"
    )
    print(f"\nload average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()

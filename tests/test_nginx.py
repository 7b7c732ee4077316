"""The shipped reverse-proxy configuration (``serve/nginx.conf``) run by Debian's nginx in
front of the service: uploads pass with the client's address, other host names are refused,
clients trickling headers or a body are cut off by nginx without reaching the service, bodies
over the limit get 413 and nothing is written to disk. Skipped where nginx is not installed
(CI installs it: .ci/run)."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from search_fixtures import split_paths
from serve_fixtures import free_port, server_thread

pytest.importorskip("fastapi", reason="the service needs FastAPI (harmonixr[serve])")

from harmonixr.serve.app import create_app  # noqa: E402

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
CONF = Path(__file__).resolve().parents[1] / "src" / "harmonixr" / "serve" / "nginx.conf"
pytestmark = pytest.mark.skipif(
    not os.path.exists(NGINX), reason="no nginx (apt-get install nginx; .ci/run does)"
)
HOST = "music.example.org"


@contextlib.contextmanager
def nginx(folder: Path, upstream: int, timeouts: str = "1s") -> Iterator[int]:
    """The shipped configuration, its ports and timeouts changed, run in the foreground;
    yields nginx's port."""
    port = free_port()
    site = CONF.read_text()
    assert "server 127.0.0.1:8000;" in site and "listen 8080;" in site
    site = site.replace("server 127.0.0.1:8000;", f"server 127.0.0.1:{upstream};")
    site = site.replace("listen 8080;", f"listen 127.0.0.1:{port};")
    for name in ("client_header_timeout", "client_body_timeout"):  # 10 s: a quick test
        site = site.replace(f"{name} 10s;", f"{name} {timeouts};")
    (folder / "site.conf").write_text(site)
    (folder / "logs").mkdir()
    user = "user root;\n" if os.geteuid() == 0 else ""
    (folder / "nginx.conf").write_text(
        f"{user}worker_processes 1;\npid {folder}/nginx.pid;\nerror_log {folder}/error.log;\n"
        "events { worker_connections 256; }\n"
        f"http {{\n access_log off;\n client_body_temp_path {folder}/body;\n"
        f" proxy_temp_path {folder}/proxy;\n fastcgi_temp_path {folder}/fcgi;\n"
        f" uwsgi_temp_path {folder}/uwsgi;\n scgi_temp_path {folder}/scgi;\n"
        f" include {folder}/site.conf;\n}}\n"
    )
    proc = subprocess.Popen(
        [NGINX, "-p", str(folder), "-c", str(folder / "nginx.conf"), "-g", "daemon off;"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port)):
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                out = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
                log = (folder / "error.log").read_text() if (folder / "error.log").exists() else ""
                raise RuntimeError(f"nginx did not start: {out} {log}")
            time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_the_shipped_nginx_config_fronts_the_service(search_run, tmp_path):
    import httpx

    piece = Path(split_paths(search_run, "test")[0]).read_bytes()
    app = create_app(search_run, allowed_hosts=[HOST])
    gate = _gate(app)
    with server_thread(app) as url, nginx(tmp_path, int(url.rsplit(":", 1)[1])) as port:
        front = f"http://127.0.0.1:{port}"
        files = {"file": ("a.mid", piece, "audio/midi")}
        got = httpx.post(front + "/api/attribute", files=files, headers={"host": HOST})
        assert got.status_code == 200, got.text
        assert got.headers.get("server") == "nginx"  # no version
        same = {"host": f"{HOST}:{port}", "origin": f"https://{HOST}:{port}"}
        assert httpx.post(front + "/api/attribute", files=files, headers=same).is_success
        got = httpx.post(
            front + "/api/attribute", files=files, headers={**same, "origin": "https://x.example"}
        )
        assert got.status_code == 403
        got = httpx.get(front + "/api/health", headers={"host": "evil.example"})
        assert (got.status_code, got.json()["reason"]) == (400, "bad_host")
        # a body over the limit: nginx answers 413 from its declared length
        got = httpx.post(
            front + "/api/attribute",
            content=b"x" * (22 * 1024 * 1024),
            headers={"host": HOST, "content-type": "application/octet-stream"},
        )
        assert got.status_code == 413
        # trickled headers and a trickled body are cut off by nginx; the service never sees them
        head = socket.create_connection(("127.0.0.1", port))
        head.sendall(b"POST /api/attribute HTTP/1.1\r\nHost: " + HOST.encode() + b"\r\n")
        body = socket.create_connection(("127.0.0.1", port))
        body.sendall(
            b"POST /api/attribute HTTP/1.1\r\nHost: " + HOST.encode() + b"\r\n"
            b"Content-Length: 100000\r\nContent-Type: multipart/form-data; boundary=b\r\n\r\n--b"
        )
        for s in (head, body):
            s.settimeout(10)
            reply = s.recv(200)  # closed (headers), or 408 (body), after nginx's 1 s
            assert reply == b"" or reply.startswith(b"HTTP/1.1 408"), reply
            s.close()
        assert gate.arriving == 0 and gate.active == 0
    assert not any((tmp_path / "body").rglob("*"))  # no body was written to disk


def _gate(app):
    app.middleware_stack = app.build_middleware_stack()
    node = app.middleware_stack
    while type(node).__name__ != "Gate":
        node = node.app
    return node

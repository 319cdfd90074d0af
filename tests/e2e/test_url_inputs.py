"""URL inputs over real HTTP: off by default; when on, fetched from a loopback image server started
here (allow-listed for the positive cases), with every guard (scheme, non-public address, redirects,
content type, byte cap, time limit) giving a 422 naming the input."""

from __future__ import annotations

import http.server
import io
import socket
import threading
import time
from contextlib import contextmanager
from typing import Iterator

import httpx
import pytest
from PIL import Image

from tests.e2e.test_failures import b64_image
from tests.fakes import FakeBackend, serve_engine

pytestmark = pytest.mark.slow  # every test here starts a server

PNG = io.BytesIO()
Image.new("RGB", (40, 30), (10, 200, 30)).save(PNG, "PNG")
PNG_BYTES = PNG.getvalue()


class ImageHandler(http.server.BaseHTTPRequestHandler):
    hosts: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        ImageHandler.hosts.append(self.headers.get("host", ""))
        routes = {
            "/cat.png": lambda: self.reply(200, "image/png", PNG_BYTES),
            "/redirect": lambda: self.redirect("/cat.png"),
            "/redirect-to-private": lambda: self.redirect(f"http://10.1.2.3:{self.server.server_port}/cat.png"),
            "/loop": lambda: self.redirect("/loop"),
            "/page": lambda: self.reply(200, "text/html", b"<html>not an image</html>"),
            "/big": lambda: self.reply(200, "image/png", PNG_BYTES + b"\0" * 300_000),
            "/big-unannounced": lambda: self.reply(200, "image/png", PNG_BYTES + b"\0" * 300_000, length=False),
            "/slow": lambda: (time.sleep(1.5), self.reply(200, "image/png", PNG_BYTES)),
        }
        routes.get(self.path, lambda: self.reply(404, "text/plain", b"missing"))()

    def reply(self, status: int, content_type: str, body: bytes, length: bool = True) -> None:
        self.send_response(status)
        self.send_header("content-type", content_type)
        if length:
            self.send_header("content-length", str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(body)
        except OSError:
            pass  # the fetcher stopped reading (byte cap or time limit)

    def redirect(self, location: str) -> None:
        self.send_response(302)
        self.send_header("location", location)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@contextmanager
def image_server() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), ImageHandler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_port
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    with image_server() as p:
        yield p


def embed(url: str, *inputs: str) -> httpx.Response:
    return httpx.post(url + "/embed", json={"inputs": list(inputs)}, timeout=30)


def test_url_inputs_are_off_by_default(port):
    with serve_engine(FakeBackend()) as url:
        response = embed(url, b64_image(), f"http://127.0.0.1:{port}/cat.png")
    assert response.status_code == 422
    assert response.json()["error"] == ("inputs[1]: URL inputs are disabled on this server "
                                        "(it must be started with --allow-url-inputs)")


@pytest.fixture(scope="module")
def allowed(port) -> Iterator[str]:
    with serve_engine(FakeBackend(), allow_url_inputs=True, url_allowlist="127.0.0.1/32", url_max_bytes=100_000,
                      url_timeout_ms=500) as url:
        yield url


def test_allow_listed_loopback_url_embeds_like_the_same_image_inline(allowed, port):
    inline = b64_image(color=(10, 200, 30), size=(40, 30))
    response = embed(allowed, f"http://127.0.0.1:{port}/cat.png", inline, f"http://127.0.0.1:{port}/redirect")
    assert response.status_code == 200, response.text
    by_url, by_value, redirected = response.json()
    assert by_url == by_value == redirected


@pytest.mark.skipif(socket.getaddrinfo("localhost", 80, type=socket.SOCK_STREAM)[0][4][0] != "127.0.0.1",
                    reason="localhost does not resolve to 127.0.0.1 first here")
def test_hostname_is_resolved_once_and_sent_only_as_the_host_header(allowed, port):
    ImageHandler.hosts.clear()
    assert embed(allowed, f"http://localhost:{port}/cat.png").status_code == 200
    assert ImageHandler.hosts == [f"localhost:{port}"]  # connected to the checked address, named by Host


@pytest.mark.parametrize(("path", "message"), [
    ("/redirect-to-private", "resolves to 10.1.2.3, a non-public address"),
    ("/loop", "redirected more than 5 times"),
    ("/page", "content type is 'text/html', not an image"),
    ("/big", "over the limit of 100000 (url_max_bytes)"),
    ("/big-unannounced", "over the limit of 100000 bytes (url_max_bytes)"),
    ("/slow", "took longer than 500 ms (url_timeout_ms)"),
    ("/missing", "HTTP status 404"),
])
def test_url_guards(allowed, port, path, message):
    started = time.monotonic()
    response = embed(allowed, b64_image(), f"http://127.0.0.1:{port}{path}")
    assert response.status_code == 422, response.text
    assert response.json()["error"].startswith("inputs[1]: ") and message in response.json()["error"]
    assert time.monotonic() - started < 1.5


@pytest.fixture(scope="module")
def public_only() -> Iterator[str]:
    with serve_engine(FakeBackend(), allow_url_inputs=True) as url:
        yield url


@pytest.mark.parametrize(("target", "message"), [
    ("http://127.0.0.1:{port}/cat.png", "resolves to 127.0.0.1, a non-public address"),
    ("http://localhost:{port}/cat.png", "a non-public address"),
    ("http://[::1]:{port}/cat.png", "resolves to ::1, a non-public address"),
    ("http://[::ffff:127.0.0.1]:{port}/cat.png", "resolves to 127.0.0.1, a non-public address"),
    ("http://169.254.169.254/latest/meta-data/", "resolves to 169.254.169.254, a non-public address"),
    ("http://10.0.0.1/x.png", "resolves to 10.0.0.1"),
    ("http://100.64.0.1/x.png", "resolves to 100.64.0.1"),
    ("file:///etc/passwd", "URL scheme 'file' is not allowed (allowed: http, https)"),
    ("ftp://127.0.0.1/x.png", "URL scheme 'ftp' is not allowed"),
    ("http:///nohost", "the URL has no host"),
])
def test_non_public_addresses_and_other_schemes_are_refused(public_only, port, target, message):
    response = embed(public_only, target.format(port=port))
    assert response.status_code == 422, response.text
    assert response.json()["error"].startswith("inputs[0]: ") and message in response.json()["error"]

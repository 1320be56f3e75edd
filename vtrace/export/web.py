"""The exporter's HTTP(S) listener, configured like every Prometheus exporter.

--web-config takes the exporter-toolkit file format
(https://github.com/prometheus/exporter-toolkit/blob/master/docs/web-configuration.md):

    tls_server_config:
      cert_file: server.crt
      key_file: server.key
      client_auth_type: RequireAndVerifyClientCert   # optional
      client_ca_file: ca.crt                         # with the above
      min_version: TLS12                             # default
    basic_auth_users:
      prometheus: $2y$10$...                         # bcrypt hash (htpasswd -B)

Unknown keys are an error, as in the toolkit. What a hostile or slow client
can do is bounded: each connection has a socket timeout (slowloris), at most
MAX_CONNECTIONS are served at once (the rest are closed at accept), a TLS
handshake happens in the connection's thread (never in the accept loop),
request lines and headers are capped by http.server, and a request body is
never read.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import socket
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

MAX_CONNECTIONS = 64
CONN_TIMEOUT_S = 5.0
_AUTH_CACHE = 64  # verified (user, password) digests kept, so bcrypt runs once per credential

_CLIENT_AUTH = {
    "NoClientCert": ssl.CERT_NONE,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
_TLS_VERSIONS = {"TLS10": ssl.TLSVersion.TLSv1, "TLS11": ssl.TLSVersion.TLSv1_1,
                 "TLS12": ssl.TLSVersion.TLSv1_2, "TLS13": ssl.TLSVersion.TLSv1_3}
_TLS_KEYS = {"cert_file", "key_file", "client_auth_type", "client_ca_file", "min_version", "max_version",
             "cipher_suites", "prefer_server_cipher_suites", "curve_preferences"}


class WebConfigError(Exception):
    """A --web-config file vtrace cannot use (one line, says which key)."""


class WebConfig:
    def __init__(self, ssl_context: ssl.SSLContext | None = None, users: dict[str, bytes] | None = None):
        self.ssl_context = ssl_context
        self.users = users or {}

    @classmethod
    def load(cls, path: str) -> "WebConfig":
        try:
            import yaml
        except ImportError:  # pragma: no cover - a dependency
            raise WebConfigError("--web-config needs PyYAML (pip install pyyaml)") from None
        try:
            with open(path) as f:
                doc = yaml.safe_load(f)
        except OSError as e:
            raise WebConfigError(f"{path}: {e.strerror}") from None
        except yaml.YAMLError as e:
            raise WebConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
        doc = doc or {}
        if not isinstance(doc, dict):
            raise WebConfigError(f"{path}: expected a mapping at the top level")
        unknown = set(doc) - {"tls_server_config", "basic_auth_users", "http_server_config"}
        if unknown:
            raise WebConfigError(f"{path}: unknown key {sorted(unknown)[0]!r}")
        base = os.path.dirname(os.path.abspath(path))
        ctx = _tls(doc.get("tls_server_config"), base, path) if doc.get("tls_server_config") else None
        return cls(ctx, _users(doc.get("basic_auth_users"), path))


def _tls(tc, base: str, path: str) -> ssl.SSLContext:
    if not isinstance(tc, dict):
        raise WebConfigError(f"{path}: tls_server_config must be a mapping")
    unknown = set(tc) - _TLS_KEYS
    if unknown:
        raise WebConfigError(f"{path}: unknown key tls_server_config.{sorted(unknown)[0]}")
    for k in ("cipher_suites", "curve_preferences"):
        if tc.get(k):
            raise WebConfigError(f"{path}: tls_server_config.{k} is not supported by vtrace (Python's ssl "
                                 "picks them); remove it")
    if not tc.get("cert_file") or not tc.get("key_file"):
        raise WebConfigError(f"{path}: tls_server_config needs cert_file and key_file")

    def rel(p):
        return p if os.path.isabs(p) else os.path.join(base, p)

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        ctx.minimum_version = _TLS_VERSIONS[tc.get("min_version", "TLS12")]
        if tc.get("max_version"):
            ctx.maximum_version = _TLS_VERSIONS[tc["max_version"]]
    except KeyError as e:
        raise WebConfigError(f"{path}: unknown TLS version {e.args[0]!r} (TLS10..TLS13)") from None
    try:
        ctx.load_cert_chain(rel(tc["cert_file"]), rel(tc["key_file"]))
    except (OSError, ssl.SSLError) as e:
        raise WebConfigError(f"{path}: cannot load cert_file/key_file: {getattr(e, 'strerror', None) or e}") \
            from None
    auth = tc.get("client_auth_type", "NoClientCert")
    if auth not in _CLIENT_AUTH:
        raise WebConfigError(f"{path}: client_auth_type {auth!r} not supported "
                             f"({', '.join(_CLIENT_AUTH)})")
    ctx.verify_mode = _CLIENT_AUTH[auth]
    if auth != "NoClientCert":
        if not tc.get("client_ca_file"):
            raise WebConfigError(f"{path}: client_auth_type {auth} needs client_ca_file")
        try:
            ctx.load_verify_locations(rel(tc["client_ca_file"]))
        except (OSError, ssl.SSLError) as e:
            raise WebConfigError(f"{path}: cannot load client_ca_file: {e}") from None
    return ctx


def _users(users, path: str) -> dict[str, bytes]:
    if not users:
        return {}
    if not isinstance(users, dict):
        raise WebConfigError(f"{path}: basic_auth_users must be a mapping of user: bcrypt hash")
    out = {}
    for user, h in users.items():
        h = str(h)
        if not h.startswith(("$2a$", "$2b$", "$2y$")) or len(h) != 60:
            raise WebConfigError(f"{path}: basic_auth_users.{user} is not a bcrypt hash (htpasswd -nBC 10 USER)")
        out[str(user)] = h.encode()
    return out


class _Auth:
    """Basic auth against bcrypt hashes. A credential that verified once is
    remembered (as a keyed digest, never in clear) so a scrape every few
    seconds does not pay bcrypt each time; wrong ones always do."""

    def __init__(self, users: dict[str, bytes]):
        self.users = users
        self.key = os.urandom(32)
        self.ok: dict[bytes, None] = {}
        self.lock = threading.Lock()

    def check(self, header: str | None) -> bool:
        if not self.users:
            return True
        if not header or not header.startswith("Basic "):
            return False
        try:
            user, sep, pw = base64.b64decode(header[6:], validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        h = self.users.get(user)
        if not sep or h is None:
            return False
        d = hmac.new(self.key, b"%s\0%s\0%s" % (user.encode(), pw.encode(), h), hashlib.sha256).digest()
        with self.lock:
            if d in self.ok:
                return True
        import bcrypt
        if not bcrypt.checkpw(pw.encode(), h):
            return False
        with self.lock:
            if len(self.ok) >= _AUTH_CACHE:
                self.ok.pop(next(iter(self.ok)))
            self.ok[d] = None
        return True


class MetricsServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128  # listen backlog: a burst waits to be accepted (and counted), not dropped by the kernel

    def __init__(self, addr: tuple[str, int], render: Callable[[], bytes | list[bytes]],
                 web: WebConfig | None = None):
        self.render = render
        self.web = web or WebConfig()
        self.auth = _Auth(self.web.users)
        self.slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self.rejected = 0  # connections closed at accept: too many at once
        self.tls_failures = 0
        host = addr[0]
        if ":" in host:
            self.address_family = socket.AF_INET6
        super().__init__(addr, _Handler)

    @property
    def scheme(self) -> str:
        return "https" if self.web.ssl_context else "http"

    def process_request(self, request, client_address):
        if not self.slots.acquire(blocking=False):
            self.rejected += 1
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except Exception:
            self.slots.release()
            raise

    def process_request_thread(self, request, client_address):
        try:
            request.settimeout(CONN_TIMEOUT_S)
            if self.web.ssl_context is not None:
                try:
                    request = self.web.ssl_context.wrap_socket(request, server_side=True)
                except (ssl.SSLError, OSError):
                    # plain HTTP to the TLS port, a bad client cert, a stalled
                    # handshake: close this one, keep serving
                    self.tls_failures += 1
                    self.shutdown_request(request)
                    return
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()

    def handle_error(self, request, client_address):
        pass  # a client that went away mid-response is not our error


class _Handler(BaseHTTPRequestHandler):
    server: MetricsServer
    protocol_version = "HTTP/1.1"
    server_version = "vtrace-exporter"
    timeout = CONN_TIMEOUT_S

    def _send(self, code: int, body: bytes | list[bytes], ctype: str = "text/plain; charset=utf-8", extra=()):
        # A list of chunks is written as is: no 33 MB join at 10k queues.
        chunks = [body] if isinstance(body, bytes) else body
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(sum(map(len, chunks))))
        for k, v in extra:
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.writelines(chunks)

    def do_GET(self):
        if not self.server.auth.check(self.headers.get("Authorization")):
            self._send(401, b"Unauthorized\n", extra=(("WWW-Authenticate", 'Basic realm="vtrace"'),))
            return
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._send(200, self.server.render(), "text/plain; version=0.0.4; charset=utf-8")
        elif path == "/":
            self._send(200, b"<html><head><title>vtrace exporter</title></head><body>"
                            b"<h1>vtrace exporter</h1><p><a href=\"/metrics\">Metrics</a></p></body></html>\n",
                       "text/html; charset=utf-8")
        else:
            self._send(404, b"Not found: try /metrics\n")

    do_HEAD = do_GET

    def log_message(self, format, *args):  # noqa: A002 - http.server's name
        pass  # scrapes every few seconds would flood stderr

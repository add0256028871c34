"""The HTTP extras of Airflow's HttpHook on a pagent connection: proxies, verify, cert, trust_env.

Over real HTTP: a forward proxy on 127.0.0.1 (absolute-URI requests, optional
Basic proxy authentication), the ingest emulator behind it, and a TLS server
with a certificate made here for the verify and client-certificate checks.
"""

from __future__ import annotations

import base64
import datetime
import http.client
import http.server
import ipaddress
import json
import logging
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from airflow.providers.common.compat.sdk import AirflowFailException

from pagent_provider.core.client import PagentClient
from pagent_provider.core.deadlines import _DeadlineHTTPPool
from pagent_provider.core.transport import HttpOptions, RetryPolicy
from pagent_provider.exceptions import PagentConfigError, PagentConnectionError, PagentError
from pagent_provider.get_provider_info import get_provider_info
from pagent_provider.hooks.pagent import PagentHook
from pagent_provider.testing.emulator import IngestEmulator

KEY = "test-key"
EVENT = {"session_id": "s1", "user_id": "u1", "conversion_id": "g1", "revenue": 100}
PROXY_USER, PROXY_PASSWORD = "etl", "pr0xy-s3cret"
HTTP_EXTRAS = ("proxies", "verify", "cert", "trust_env")


class ForwardProxy:
    """A tiny HTTP forward proxy: forwards absolute-URI requests and records what it saw.

    With ``credentials``, requests without the matching ``Proxy-Authorization``
    get 407, whose body echoes the header received (as a careless proxy would).
    """

    def __init__(self, credentials: tuple[str, str] | None = None) -> None:
        self.seen: list[dict[str, Any]] = []
        expected = None
        if credentials:
            expected = "Basic " + base64.b64encode(":".join(credentials).encode()).decode()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                auth = self.headers.get("Proxy-Authorization")
                proxy.seen.append({"target": self.path, "proxy_authorization": auth})
                if expected is not None and auth != expected:
                    self._answer(407, json.dumps({"error": f"bad proxy credentials {auth}"}).encode())
                    return
                target = urlsplit(self.path)  # an absolute URI: http://host:port/path
                upstream = http.client.HTTPConnection(target.hostname, target.port, timeout=10)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("proxy-authorization", "host")}
                upstream.request("POST", target.path, body=body, headers=headers)
                answer = upstream.getresponse()
                self._answer(answer.status, answer.read())
                upstream.close()

            def _answer(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> ForwardProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(autouse=True)
def _no_proxy_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


@pytest.fixture
def emulator() -> Iterator[IngestEmulator]:
    with IngestEmulator(api_keys=(KEY,)) as running:
        yield running


def _connection(monkeypatch: pytest.MonkeyPatch, url: str, **extra: Any) -> PagentHook:
    conn = {"conn_type": "pagent", "host": url, "password": KEY, "extra": {"max_retries": 0, **extra}}
    monkeypatch.setenv("AIRFLOW_CONN_PAGENT_HTTP", json.dumps(conn))
    return PagentHook("pagent_http")


def test_requests_go_through_the_proxy_given_as_a_dict(monkeypatch: pytest.MonkeyPatch, emulator: IngestEmulator):
    with ForwardProxy() as proxy:
        hook = _connection(monkeypatch, emulator.url, proxies={"http": proxy.url})
        assert hook.send_conversions([EVENT]) == {"accepted": 1}
    assert [seen["target"] for seen in proxy.seen] == [f"{emulator.url}/v1/conversions"]
    assert [event["session_id"] for event in emulator.events()] == ["s1"]


def test_proxy_with_credentials_as_json_text_and_the_credentials_never_show(
    monkeypatch: pytest.MonkeyPatch, emulator: IngestEmulator, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.DEBUG)
    with ForwardProxy(credentials=(PROXY_USER, PROXY_PASSWORD)) as proxy:
        authority = urlsplit(proxy.url).netloc
        good = json.dumps({"http": f"http://{PROXY_USER}:{PROXY_PASSWORD}@{authority}"})
        hook = _connection(monkeypatch, emulator.url, proxies=good)
        assert hook.send_conversions([EVENT]) == {"accepted": 1}
        assert proxy.seen[-1]["proxy_authorization"].startswith("Basic ")
        assert PROXY_PASSWORD not in repr(hook.client.http) and authority in repr(hook.client.http)

        # A wrong password: the proxy answers 407 and echoes the header it got
        wrong_password = "wr0ng-s3cret"
        bad = {"http": f"http://{PROXY_USER}:{wrong_password}@{authority}"}
        with pytest.raises(PagentError) as refused:
            _connection(monkeypatch, emulator.url, proxies=bad).send_conversions([EVENT])
    echoed = proxy.seen[-1]["proxy_authorization"]
    assert echoed == "Basic " + base64.b64encode(f"{PROXY_USER}:{wrong_password}".encode()).decode()
    message = str(refused.value)
    assert "407" in message and "***" in message
    texts = [message, caplog.text]
    for secret in (PROXY_PASSWORD, wrong_password, echoed.split()[1]):
        assert not any(secret in text for text in texts), secret
    assert len(emulator.events()) == 1


def test_an_unreachable_proxy_is_a_connection_error_not_an_unknown_outcome(monkeypatch: pytest.MonkeyPatch):
    # port 9 (discard) on 127.0.0.1: nothing listens, the proxy refuses the connection
    hook = _connection(monkeypatch, "http://127.0.0.1:8", proxies={"http": f"http://u:{PROXY_PASSWORD}@127.0.0.1:9"})
    with pytest.raises(PagentConnectionError) as failed:  # never sent: retried, never recorded as unknown
        hook.send_conversions([EVENT])
    assert PROXY_PASSWORD not in str(failed.value)


def test_explicit_proxies_win_over_the_environment(monkeypatch: pytest.MonkeyPatch, emulator: IngestEmulator):
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # nothing listens there
    with ForwardProxy() as proxy:
        hook = _connection(monkeypatch, emulator.url, proxies={"http": proxy.url})
        assert hook.send_conversions([EVENT]) == {"accepted": 1}
    assert len(proxy.seen) == 1


def test_trust_env_default_uses_the_environment_proxy_and_false_does_not(
    monkeypatch: pytest.MonkeyPatch, emulator: IngestEmulator, tmp_path: Path
):
    # ~/.netrc with credentials for the emulator's host: never read (the Bearer key stays)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("NETRC", str(tmp_path / ".netrc"))
    (tmp_path / ".netrc").write_text("machine 127.0.0.1 login someone password netrc-password\n")
    (tmp_path / ".netrc").chmod(0o600)
    with ForwardProxy() as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        assert _connection(monkeypatch, emulator.url).send_conversions([EVENT]) == {"accepted": 1}
        assert len(proxy.seen) == 1  # trust_env defaults to true: the environment's proxy applies
        hook = _connection(monkeypatch, emulator.url, trust_env="false")
        assert hook.client.http.trust_env is False
        assert hook.send_conversions([{**EVENT, "session_id": "s2"}]) == {"accepted": 1}
        assert len(proxy.seen) == 1  # straight to the emulator
    # the emulator accepts only "Bearer test-key": Basic auth from ~/.netrc would be a 401
    assert [request.status for request in emulator.requests()] == [200, 200]
    assert len(emulator.events()) == 2


def test_proxied_connections_keep_the_overall_deadline(monkeypatch: pytest.MonkeyPatch, emulator: IngestEmulator):
    with ForwardProxy() as proxy:
        hook = _connection(monkeypatch, emulator.url, proxies={"http": proxy.url})
        hook.send_conversions([EVENT])
        adapter = hook.client._session.get_adapter(emulator.url)
        [manager] = adapter.proxy_manager.values()
    assert manager.pool_classes_by_scheme["http"] is _DeadlineHTTPPool


# -- TLS: verify and cert


def _certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (its own CA) and its key, as PEM files."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


class TlsAcknowledger:
    """An HTTPS server that acknowledges any batch; optionally requires a client certificate."""

    def __init__(self, cert: Path, key: Path, *, client_ca: Path | None = None) -> None:
        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                events = json.loads(self.rfile.read(int(self.headers["Content-Length"])))["events"]
                status, body = (400, b'{"error":"events must not be empty"}') if not events else (200, b"")
                body = body or json.dumps({"accepted": len(events)}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        if client_ca is not None:
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(client_ca)
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> TlsAcknowledger:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
def test_verify_false_and_a_ca_bundle_path_are_accepted(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    cert, key = _certificate(tmp_path)
    with TlsAcknowledger(cert, key) as server:
        with pytest.raises(PagentError):  # verified against the system CAs: refused
            _connection(monkeypatch, server.url).send_conversions([EVENT])
        for verify in (False, "false", str(cert)):
            hook = _connection(monkeypatch, server.url, verify=verify)
            assert hook.send_conversions([EVENT]) == {"accepted": 1}, verify
        assert hook.client._session.verify == str(cert)
        assert hook.test_connection()[0] is True


def test_a_client_certificate_as_one_file_or_cert_and_key(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    cert, key = _certificate(tmp_path)
    combined = tmp_path / "combined.pem"
    combined.write_bytes(cert.read_bytes() + key.read_bytes())
    with TlsAcknowledger(cert, key, client_ca=cert) as server:
        with pytest.raises(PagentError):  # no client certificate: the handshake fails
            _connection(monkeypatch, server.url, verify=str(cert)).send_conversions([EVENT])
        for client_cert in ([str(cert), str(key)], json.dumps([str(cert), str(key)]), str(combined)):
            hook = _connection(monkeypatch, server.url, verify=str(cert), cert=client_cert)
            assert hook.send_conversions([EVENT]) == {"accepted": 1}, client_cert


# -- bad values


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        ({"proxies": "{not json"}, "'proxies'"),
        ({"proxies": ["http://proxy:3128"]}, "'proxies'"),
        ({"proxies": {"https": "proxy.internal:3128"}}, "'proxies'"),
        ({"proxies": {"https": f"ftp://u:{PROXY_PASSWORD}@proxy:3128"}}, "'proxies'"),
        ({"proxies": {"https": "http://proxy:99999"}}, "'proxies'"),
        ({"proxies": {"https": 3128}}, "'proxies'"),
        ({"verify": "/no/such/ca-bundle.pem"}, "'verify'"),
        ({"verify": 1.5}, "'verify'"),
        ({"cert": "/no/such/client.pem"}, "'cert'"),
        ({"cert": [1, 2]}, "'cert'"),
        ({"cert": ["a.pem", "b.pem", "c.pem"]}, "'cert'"),
        ({"trust_env": "maybe"}, "'trust_env'"),
        ({"trust_env": 3}, "'trust_env'"),
    ],
)
def test_bad_values_are_refused_naming_the_extra(monkeypatch: pytest.MonkeyPatch, extra: dict[str, Any], named: str):
    hook = _connection(monkeypatch, "http://127.0.0.1:8", **extra)
    with pytest.raises(PagentConfigError) as refused:
        hook.get_conn()
    message = str(refused.value)
    assert message.startswith(f"connection 'pagent_http': extra {named}"), message
    assert PROXY_PASSWORD not in message
    assert isinstance(refused.value, AirflowFailException)  # fails the task at once
    ok, reported = hook.test_connection()
    assert not ok and named in reported


def test_empty_extras_mean_the_defaults(monkeypatch: pytest.MonkeyPatch):
    hook = _connection(monkeypatch, "http://127.0.0.1:8", proxies="", verify="", cert=None, trust_env="")
    assert repr(hook.get_conn().http) == repr(HttpOptions())


def test_the_client_takes_http_options_and_redacts_proxy_credentials():
    options = HttpOptions(proxies={"https": f"http://{PROXY_USER}:{PROXY_PASSWORD}@proxy:3128"}, verify=False)
    with PagentClient(KEY, base_url="http://127.0.0.1:8", policy=RetryPolicy(max_retries=0), http=options) as client:
        assert client._session.proxies == dict(options.proxies) and client._session.verify is False
        encoded = base64.b64encode(f"{PROXY_USER}:{PROXY_PASSWORD}".encode()).decode()
        assert client.redact(f"echo {PROXY_PASSWORD} {encoded}") == "echo *** ***"


def test_the_connection_form_offers_the_http_extras():
    [connection_type] = get_provider_info()["connection-types"]
    assert set(HTTP_EXTRAS) <= set(connection_type["conn-fields"])
    assert connection_type["conn-fields"]["trust_env"]["schema"]["default"] is True
    from airflow.providers_manager import ProvidersManager

    widgets = ProvidersManager().connection_form_widgets
    assert {f"extra__pagent__{name}" for name in HTTP_EXTRAS} <= set(widgets)


def test_the_legacy_widgets_carry_the_http_extras():
    pytest.importorskip("wtforms")
    pytest.importorskip("flask_appbuilder")
    from wtforms import StringField

    widgets = PagentHook.get_connection_form_widgets()
    assert set(HTTP_EXTRAS) <= set(widgets)
    assert all(widgets[name].field_class is StringField for name in HTTP_EXTRAS)

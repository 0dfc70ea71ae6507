"""Which CAs the daemon's clients trust: each source in its order, a file that cannot be used,
and one context for one choice. Each handshake is a real one against a server whose certificate
a test CA issued."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent.support.tls import OS_TRUST_STORE, CAFileError, client_trust
from tests.tls_helpers import TestAuthority, closing_tls_server, make_authority


@pytest.fixture
def authority(tmp_path: Path) -> TestAuthority:
    return make_authority(tmp_path / "ca")


@pytest.fixture
async def tls_port(authority: TestAuthority) -> AsyncIterator[int]:
    """A TLS server on 127.0.0.1 with the test CA's certificate, closing each connection."""
    async with closing_tls_server(authority) as port:
        yield port


async def handshake(context: ssl.SSLContext, port: int) -> None:
    _, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=context, server_hostname="127.0.0.1"
    )
    writer.close()


def test_the_setting_wins_over_both_variables(authority: TestAuthority, tmp_path: Path) -> None:
    other = make_authority(tmp_path / "other").ca_pem
    environ = {"SSL_CERT_FILE": str(other), "REQUESTS_CA_BUNDLE": str(other)}
    trust = client_trust(authority.ca_pem, environ)
    assert trust.source == f"ca_file setting ({authority.ca_pem})"


@pytest.mark.parametrize(
    ("environ", "source"),
    [
        ({"SSL_CERT_FILE": "{ca}", "REQUESTS_CA_BUNDLE": "{other}"}, "SSL_CERT_FILE={ca}"),
        ({"SSL_CERT_FILE": "", "REQUESTS_CA_BUNDLE": "{ca}"}, "REQUESTS_CA_BUNDLE={ca}"),
        ({"REQUESTS_CA_BUNDLE": "{ca}"}, "REQUESTS_CA_BUNDLE={ca}"),
    ],
)
def test_ssl_cert_file_then_requests_ca_bundle(
    authority: TestAuthority, tmp_path: Path, environ: dict[str, str], source: str
) -> None:
    files = {"ca": str(authority.ca_pem), "other": str(make_authority(tmp_path / "o").ca_pem)}
    given = {name: value.format(**files) for name, value in environ.items()}
    assert client_trust(None, given).source == source.format(**files)


async def test_a_named_file_is_trusted_and_alone(
    authority: TestAuthority, tls_port: int, tmp_path: Path
) -> None:
    trusted = client_trust(None, {"SSL_CERT_FILE": str(authority.ca_pem)})
    assert trusted.context.check_hostname
    assert trusted.context.verify_mode == ssl.CERT_REQUIRED
    await handshake(trusted.context, tls_port)
    # Another CA's file: the test CA is then unknown, and the system's CAs are not added.
    other = client_trust(make_authority(tmp_path / "other").ca_pem)
    with pytest.raises(ssl.SSLCertVerificationError, match="unable to get local issuer"):
        await handshake(other.context, tls_port)


async def test_without_a_file_the_operating_systems_store(tls_port: int) -> None:
    trust = client_trust(None, {})
    assert trust.source == OS_TRUST_STORE
    assert trust.context.check_hostname
    with pytest.raises(ssl.SSLCertVerificationError):  # the test CA is in no system store
        await handshake(trust.context, tls_port)


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (None, "cannot read it: No such file or directory"),
        (b"", "holds no usable PEM certificate"),
        (b"not a certificate\n", "holds no usable PEM certificate"),
    ],
)
def test_a_file_that_cannot_be_used_is_one_line_naming_it(
    tmp_path: Path, content: bytes | None, problem: str
) -> None:
    path = tmp_path / "corp.pem"
    if content is not None:
        path.write_bytes(content)
    for ca_file, environ, named in (
        (path, {}, f"ca_file setting ({path})"),
        (None, {"SSL_CERT_FILE": str(path)}, f"SSL_CERT_FILE={path}"),
        (None, {"REQUESTS_CA_BUNDLE": str(path)}, f"REQUESTS_CA_BUNDLE={path}"),
    ):
        with pytest.raises(CAFileError) as refused:
            client_trust(ca_file, environ)
        assert str(refused.value).startswith(f"{named}: {problem}")
        assert "\n" not in str(refused.value)


def test_a_folder_is_not_a_ca_file(tmp_path: Path) -> None:
    with pytest.raises(CAFileError, match=r"^ca_file setting \(.*\): cannot read it: Is a dir"):
        client_trust(tmp_path)


def test_one_context_for_one_choice(authority: TestAuthority, tmp_path: Path) -> None:
    named = {"SSL_CERT_FILE": str(authority.ca_pem)}
    first = client_trust(None, named)
    assert client_trust(None, dict(named)) is first
    assert client_trust(None, named | {"REQUESTS_CA_BUNDLE": "/elsewhere.pem"}) is first
    assert client_trust(None, {}) is client_trust(None, {})
    assert client_trust(authority.ca_pem, {}) is client_trust(authority.ca_pem, named)
    assert client_trust(None, {}) is not first
    other = str(make_authority(tmp_path / "other").ca_pem)
    assert client_trust(None, {"SSL_CERT_FILE": other}) is not first


def test_a_failure_is_not_cached(authority: TestAuthority, tmp_path: Path) -> None:
    later = tmp_path / "later.pem"
    with pytest.raises(CAFileError):
        client_trust(later)
    later.write_bytes(authority.ca_pem.read_bytes())
    assert client_trust(later).source == f"ca_file setting ({later})"

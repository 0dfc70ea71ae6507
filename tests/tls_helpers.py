"""A certificate authority made by the test (trustme) and a certificate it issues for 127.0.0.1
and localhost, written as the PEM files a platform serves with and a daemon is told to trust."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import trustme


@dataclass(frozen=True)
class TestAuthority:
    __test__ = False  # not a test class, whatever its name

    ca_pem: Path
    """The CA's certificate: what a client is told to trust."""
    cert_pem: Path
    """The server's certificate chain, for 127.0.0.1 and localhost."""
    key_pem: Path
    """The server's private key."""

    def client_context(self) -> ssl.SSLContext:
        """A client context that trusts this CA alone, for the test's own requests."""
        return ssl.create_default_context(cafile=str(self.ca_pem))


def make_authority(folder: Path) -> TestAuthority:
    """A new CA and a server certificate, as files in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    files = TestAuthority(folder / "ca.pem", folder / "server.pem", folder / "server-key.pem")
    ca.cert_pem.write_to_path(str(files.ca_pem))
    files.cert_pem.write_bytes(b"".join(blob.bytes() for blob in server.cert_chain_pems))
    server.private_key_pem.write_to_path(str(files.key_pem))
    return files


@asynccontextmanager
async def closing_tls_server(authority: TestAuthority) -> AsyncIterator[int]:
    """A TLS server on 127.0.0.1 with `authority`'s certificate that closes each connection
    once the handshake is done; yields its port."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(authority.cert_pem, authority.key_pem)

    async def close(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(close, "127.0.0.1", 0, ssl=context)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()

"""Which certificate authorities the daemon's TLS clients trust, decided once for all of them.

httpx and websockets each build a context of their own by default, each loading a CA store (a
known websockets cost) and each with its own idea of which one; the daemon builds one `Trust`
here and passes its context to both, so registration and the socket always agree.

The order: a CA file named explicitly wins (the `ca_file` setting, then `SSL_CERT_FILE`, then
`REQUESTS_CA_BUNDLE`, as curl and requests read them), and only that file is then trusted;
otherwise the operating system's trust store through `truststore`, where an administrator
installs a corporate CA, and Python's default context where truststore is unavailable.
"""

from __future__ import annotations

import functools
import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

CA_FILE_VARIABLES = ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE")
"""The environment variables naming a CA file, the first set one winning."""
OS_TRUST_STORE = "the operating system's trust store (truststore)"
DEFAULT_CA_PATHS = "OpenSSL's default CA paths (truststore is unavailable here)"


class CAFileError(Exception):
    """A CA file was named but cannot be used; the message is one line naming where it was named
    and the path."""


@dataclass(frozen=True)
class Trust:
    context: ssl.SSLContext
    """A client context, hostname checking on."""
    source: str
    """One line naming where the trusted CAs come from, for logs and `envagent doctor`."""


def client_trust(ca_file: Path | None = None, environ: Mapping[str, str] = os.environ) -> Trust:
    """The trust for `ca_file` (the setting) and `environ`; the same object for the same
    choice, so that a process builds one context. Raises CAFileError."""
    if ca_file is not None:
        return _trust(str(ca_file), f"ca_file setting ({ca_file})")
    for variable, path in named_ca_files(environ).items():
        return _trust(path, f"{variable}={path}")  # the first one wins
    return _trust(None, "")


def named_ca_files(environ: Mapping[str, str]) -> dict[str, str]:
    """Each of CA_FILE_VARIABLES that `environ` sets, in order; an empty one counts as unset."""
    return {name: environ[name] for name in CA_FILE_VARIABLES if environ.get(name)}


@functools.cache
def _trust(path: str | None, source: str) -> Trust:
    """Cached by the choice made; a failure raises and so is not cached."""
    if path is not None:
        return Trust(_from_file(path, source), source)
    try:
        import truststore  # imported here: a daemon given a CA file never loads it
    except ImportError:
        return Trust(ssl.create_default_context(), DEFAULT_CA_PATHS)
    return Trust(truststore.SSLContext(ssl.PROTOCOL_TLS_CLIENT), OS_TRUST_STORE)


def _from_file(path: str, source: str) -> ssl.SSLContext:
    try:
        return ssl.create_default_context(cafile=path)
    except ssl.SSLError as exc:
        problem = f"holds no usable PEM certificate ({exc.reason or exc})"
    except OSError as exc:
        problem = f"cannot read it: {exc.strerror or exc}"
    raise CAFileError(f"{source}: {problem}")

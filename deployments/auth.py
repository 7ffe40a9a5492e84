"""Access control at the ingress: API keys (``Authorization: Bearer <key>``) and the Serve proxy's
per-request hint headers that a client must not set.

Pure Python (no Ray, no FastAPI): the ingress builds one :class:`ApiKeyAuth` per replica from its
settings and the replica's environment, and asks it about each request's ``Authorization`` header.

Keys come from ``ingress.api_keys`` (literal; they travel in the Serve config, which ``serve
status`` and the dashboard show: for tests and laptops) and from the environment variable named by
``ingress.api_keys_env`` (default ``SSJF_API_KEYS``; several keys separated by commas or
whitespace, so keys can be rotated by running old and new side by side). Where any key is
configured, every protected route needs one; ``ingress.require_api_key`` makes "no key
configured" a startup error instead of an open server.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from collections.abc import Iterable, Mapping

from deployments.protocol import APIError

DEFAULT_KEYS_ENV = "SSJF_API_KEYS"
MIN_KEY_LENGTH = 16  # a short key is guessable; `openssl rand -hex 32` makes a 64-character one

# Ray Serve's HTTP proxy (ray/serve/_private/proxy.py, send_request_to_replica) reads these from the
# client's request before the ingress sees it: a non-positive or large x-request-timeout-seconds
# replaces http_options.request_timeout_s, and "x-request-disconnect-disabled: ?1" stops the proxy
# cancelling the call when the client goes away. Serve has no setting to ignore them.
SERVE_HINT_HEADERS = ("x-request-timeout-seconds", "x-request-disconnect-disabled")

_KEY_RE = re.compile(r"[\x21-\x7e]+")  # printable ASCII, no spaces: what fits a Bearer token
_SPLIT_RE = re.compile(r"[,\s]+")
_ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def check_key(key: object, where: str) -> str:
    """``key`` if it is a usable API key, else ValueError naming ``where`` it came from (never the key)."""
    if not isinstance(key, str) or not _KEY_RE.fullmatch(key) or "," in key:
        raise ValueError(f"{where}: an API key must be printable ASCII without spaces or commas")
    if len(key) < MIN_KEY_LENGTH:
        raise ValueError(f"{where}: an API key must have at least {MIN_KEY_LENGTH} characters, one has {len(key)}")
    return key


def check_env_name(name: object, where: str) -> None:
    if name is not None and (not isinstance(name, str) or not _ENV_NAME_RE.fullmatch(name)):
        raise ValueError(f"{where} must be an environment variable name (letters, digits, _) or null, got {name!r}")


def parse_keys(text: str | None, where: str) -> list[str]:
    """The keys in an environment variable's value: separated by commas and/or whitespace."""
    return [check_key(k, where) for k in _SPLIT_RE.split(text or "") if k]


def load_keys(api_keys: Iterable[str] | None, api_keys_env: str | None,
              environ: Mapping[str, str] | None = None) -> list[str]:
    """Every configured key, deduplicated: ``api_keys`` first, then those of ``$api_keys_env``."""
    environ = os.environ if environ is None else environ
    keys = [check_key(k, "ingress.api_keys") for k in (api_keys or [])]
    if api_keys_env:
        keys += parse_keys(environ.get(api_keys_env), f"${api_keys_env}")
    return list(dict.fromkeys(keys))


def _digest(value: str | bytes) -> bytes:
    # Comparing fixed-length digests keeps the comparison's time independent of the key's length too
    # (hmac.compare_digest on unequal lengths returns at once).
    return hashlib.sha256(value.encode("utf-8", "surrogateescape") if isinstance(value, str) else value).digest()


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header (scheme case-insensitive), else None."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token


def unauthorized(message: str) -> APIError:
    """OpenAI's answer to a missing or wrong key (401, ``invalid_api_key``), with the challenge RFC 6750 asks for."""
    return APIError(401, message, type="invalid_request_error", code="invalid_api_key",
                    headers={"WWW-Authenticate": "Bearer"})


class ApiKeyAuth:
    """Checks ``Authorization`` headers against a set of keys in constant time. No keys: everything passes."""

    def __init__(self, keys: Iterable[str]):
        self._digests = tuple(_digest(k) for k in keys)

    @classmethod
    def from_settings(cls, api_keys: Iterable[str] | None, api_keys_env: str | None, require: bool,
                      environ: Mapping[str, str] | None = None) -> ApiKeyAuth:
        """The ingress's checker; with ``require`` and no key anywhere, ValueError (the replica fails to
        start, and ``serve status`` shows why) rather than a server open to anyone."""
        keys = load_keys(api_keys, api_keys_env, environ)
        if require and not keys:
            source = f"the environment variable {api_keys_env} (comma-separated keys) on every ingress node" \
                if api_keys_env else "ingress.api_keys_env"
            raise ValueError(f"ingress.require_api_key is true but no API key is configured: set {source}, "
                             "or ingress.api_keys")
        return cls(keys)

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    @property
    def num_keys(self) -> int:
        return len(self._digests)

    def allows(self, authorization: str | None) -> bool:
        if not self._digests:
            return True
        token = bearer_token(authorization)
        if token is None:
            return False
        presented = _digest(token)
        # Every key is compared (no early exit), so the time does not tell which key nearly matched.
        match = False
        for digest in self._digests:
            match |= hmac.compare_digest(presented, digest)
        return match

    def check(self, authorization: str | None) -> None:
        """Raise the client's 401 unless the header carries a valid key."""
        if self.allows(authorization):
            return
        if bearer_token(authorization) is None:
            raise unauthorized("You didn't provide an API key. Send it in the Authorization header: "
                               "'Authorization: Bearer YOUR_KEY'.")
        raise unauthorized("Incorrect API key provided.")


def refuse_serve_hints(headers: Mapping[str, str]) -> None:
    """400 if the request carries a Serve proxy hint header (see :data:`SERVE_HINT_HEADERS`).

    By the time the ingress runs, the proxy has already applied the hint; answering at once is what
    takes its effect away: nothing is generated, so there is no timeout to lift and no disconnect
    to ignore."""
    for name in SERVE_HINT_HEADERS:
        if name in headers:
            raise APIError(400, f"the header {name!r} is not accepted from clients (it would change how the "
                           "server times out or cancels this request)", param=name, code="header_not_allowed")

"""Endpoint URLs (teacher.base_url): what a valid one looks like, how it prints without
secrets, and which part of it names the model's home for the response cache."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit, urlunsplit

OPENAI_HOST = "api.openai.com"
LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", "0.0.0.0", "::"}


def url_problem(url: str) -> str | None:
    """Why `url` cannot be an endpoint's base_url, or None. Credentials are refused here (in
    `stairs validate`), so they never reach the catalog, a cache row, a log or an error."""
    try:
        parts = urlsplit(url.strip())
        parts.port  # noqa: B018  (raises ValueError on a port that is not a number)
    except ValueError as e:
        return f"not a URL ({e})"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "not an http(s) URL with a host, e.g. http://127.0.0.1:8000/v1"
    if parts.username is not None or parts.password is not None:
        return ("carries credentials (user:password@); put the key in an environment "
                "variable and name it in teacher.api_key_env")
    if parts.query or parts.fragment:
        return ("carries a query string or fragment (keys do not belong in URLs); put the key "
                "in an environment variable and name it in teacher.api_key_env")
    return None


def redact(url: str | None) -> str | None:
    """The URL with any user:password@ and query string replaced by '***': safe to print or
    store even if it slipped past validation (a URL built in code, an older catalog)."""
    if not url:
        return url
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "***"
    userinfo = parts.username is not None or parts.password is not None
    if not (userinfo or parts.query or parts.fragment):
        return url
    netloc = f"***@{host}{port}" if userinfo else parts.netloc
    return urlunsplit((parts.scheme, netloc, parts.path, "***" if parts.query else "",
                       "***" if parts.fragment else ""))


def model_host(url: str | None) -> str:
    """The host a model is served from, for the response cache: lower case, without scheme,
    port, path or trailing slash, every loopback spelling as 'localhost'. The same model
    served on another port or spelled another way hits the same cache entries."""
    if not url:
        return OPENAI_HOST
    host = (urlsplit(url.strip()).hostname or "").lower().rstrip(".")
    if host in LOOPBACK_NAMES:
        return "localhost"
    try:
        if ipaddress.ip_address(host).is_loopback:
            return "localhost"
    except ValueError:
        pass
    return host

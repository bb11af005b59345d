"""Which proxy a request goes through: `--proxy`, else the environment, read as httpx and
requests read it.

libcurl reads the environment itself, but not as Python users expect: it ignores `HTTP_PROXY`
in upper case on purpose (httpoxy), where httpx and requests honour it. So dlstudy decides here,
with the standard library's reading of `http_proxy`/`HTTP_PROXY`, `https_proxy`, `all_proxy`
and `no_proxy` (lower case first; `HTTP_PROXY` ignored in a CGI request, as there), and hands
libcurl an explicit proxy, or none, per origin.
"""

from __future__ import annotations

import ipaddress
import urllib.request
from urllib.parse import urlsplit

from .urls import authority_problem, redact_url

PROXY_SCHEMES = ("http", "https", "socks4", "socks4a", "socks5", "socks5h")
DEFAULT_PORTS = {"http": 80, "https": 443}


class Proxies:
    """The proxy settings in force when a client is made: `--proxy`, then the environment;
    `--proxy ''`: none at all."""

    def __init__(self, explicit: str | None = None) -> None:
        self._explicit = explicit
        self._environment = urllib.request.getproxies_environment()
        self._chosen: dict[tuple[str, str, int | None], str | None] = {}

    def for_origin(self, scheme: str, host: str, port: int | None = None) -> str | None:
        """The proxy URL for requests to `scheme://host:port` (`port` None: the scheme's
        default), or None to connect directly. `NO_PROXY` applies to `--proxy` too, as in curl."""
        key = (scheme, host, port or DEFAULT_PORTS.get(scheme))
        if key not in self._chosen:
            self._chosen[key] = self._choose(*key)
        return self._chosen[key]

    def _choose(self, scheme: str, host: str, port: int | None) -> str | None:
        if no_proxy_asked(self._explicit):
            return None
        environment = self._environment
        proxy = self._explicit or environment.get(scheme) or environment.get("all")
        if not proxy:
            return None
        if bypassed(host, environment.get("no", ""), port):
            return None
        return proxy if "://" in proxy else f"http://{proxy}"


def no_proxy_asked(explicit: str | None) -> bool:
    """Whether `--proxy ''` (or `proxy = ""` in a config profile) asks for no proxy at all,
    whatever the environment says, as curl's `--proxy ''` does."""
    return explicit == ""


def bypassed(host: str, no_proxy: str, port: int | None = None) -> bool:
    """Whether `NO_PROXY` names `host`, reached on `port`. An entry is `*` (every host); a name,
    for itself and every name below it, written `example.org`, `.example.org` (as curl and
    httpx read both) or `*.example.org`; an address or a CIDR range; any of these with a
    `:port` suffix, for that port only (as httpx, requests and Go read it; libcurl would
    never match such an entry). Entries are separated by commas or spaces."""
    host = host.strip("[]").lower().rstrip(".")
    address = _address(host)
    for entry in no_proxy.lower().replace(",", " ").split():
        if entry == "*":
            return True
        entry, entry_port = _split_port(entry)
        if entry_port is not None and entry_port != port:
            continue
        if address is not None:
            if _in_network(address, entry):
                return True
            continue
        name = entry.removeprefix("*").strip(".")
        if name and (host == name or host.endswith("." + name)):
            return True
    return False


def _split_port(entry: str) -> tuple[str, int | None]:
    """A NO_PROXY entry and its port, or None without one: `host:port`, `[v6]:port`; an IPv6
    address or range written without brackets (`::1`, `fd00::/8`) has no port."""
    if entry.startswith("[") and "]" in entry:
        address, _, rest = entry[1:].partition("]")
        return address, _port(rest[1:]) if rest.startswith(":") else None
    if entry.count(":") == 1:
        name, _, port = entry.partition(":")
        return name, _port(port)
    return entry, None


def _port(text: str) -> int:
    """A port number; -1 (which no request has) for one that is not."""
    return int(text) if text.isdigit() else -1


def _in_network(address: ipaddress.IPv4Address | ipaddress.IPv6Address, entry: str) -> bool:
    try:
        return address in ipaddress.ip_network(entry, strict=False)
    except ValueError:
        return False


def _address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def shown(proxy: str) -> str:
    """A proxy URL fit to print: its password (and any secret query) masked."""
    return redact_url(proxy)


def proxy_url_problem(proxy: str) -> str | None:
    """Why `proxy` (from `--proxy` or the environment) cannot be used, or None. The reason
    quotes nothing of it: libcurl's own message would quote it whole, password included."""
    scheme, sep, rest = proxy.partition("://")
    if not sep:
        if not proxy.strip():
            return "the proxy URL is empty"
        scheme, rest = "http", proxy  # as for_origin reads it
    if scheme.lower() not in PROXY_SCHEMES:
        return f"unsupported proxy scheme {scheme!r} (use one of {', '.join(PROXY_SCHEMES)})"
    if not rest.strip("/"):
        return "the proxy URL has no host"
    if " " in rest:  # libcurl refuses it, and would quote the URL whole, password included
        return "the proxy URL has a space in it: write it percent-encoded (%20)"
    problem = authority_problem(f"{scheme}://{rest}")
    return f"the proxy URL {problem}" if problem else None


def chosen_proxy_problem(explicit: str | None, url: str) -> str | None:
    """Why `--proxy`, or the environment's proxy for requests to `url`, cannot be used: one
    line naming where it came from, its password masked; or None."""
    if no_proxy_asked(explicit):
        return None
    if explicit:
        where, proxy = "--proxy", explicit
    else:
        try:
            parts = urlsplit(url.strip())
            port = parts.port
        except ValueError:
            return None  # the URL's own check says what is wrong
        scheme = parts.scheme.lower()
        found = Proxies().for_origin(scheme, parts.hostname or "", port)
        if found is None:
            return None
        named = scheme if urllib.request.getproxies_environment().get(scheme) else "all"
        where, proxy = f"${named.upper()}_PROXY", found
    problem = proxy_url_problem(proxy)
    return f"{where} {shown(proxy)}: {problem}" if problem else None

"""Where opsweb may send: one check for every outbound target (webhooks, Slack, the mail relay,
health checks, HTTP alarms, AWS endpoint overrides), applied twice.

* **When a target is configured** — ``url_problem(url, allow)`` answers with a sentence or
  ``None``. It refuses anything but http(s), a URL with a user name or password
  (``http://a@b``), and a host that is, in any spelling, an address that is not public:
  loopback, link-local (the cloud metadata services 169.254.169.254, 169.254.170.2 and
  fd00:ec2::254 among them), RFC 1918 and unique-local (fc00::/7), shared, unspecified,
  multicast or reserved ranges — written as ``2852039166``, ``0251.0376.0251.0376``,
  ``0xa9fea9fe``, ``[::ffff:169.254.169.254]`` or as the well-known names ``localhost`` and
  ``metadata.google.internal``. It does not ask DNS: a name's addresses may change after the
  check, so they are checked when sending.
* **When a request is sent** — ``request()`` (HTTP) and ``connect()`` (any TCP client, e.g.
  SMTP) resolve the host, refuse if *any* address it resolves to is refused, and connect to
  the address that was checked (TLS still verifies the certificate against the name), so a
  DNS answer that changes between the check and the connection cannot send the request
  elsewhere. ``request()`` never follows a redirect: a 3xx is the answer.

``AllowList`` names the exceptions (networks and host names), e.g. the loopback health checks
of the local backend or a relay on the machine; opsweb builds it from ``OPSWEB_OUTBOUND_ALLOW``
and registers it with ``configure()`` (this package imports no Django).
"""

from __future__ import annotations

import http.client
import ipaddress
import re
import smtplib
import socket
import ssl
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

# Names that mean an internal address whatever DNS says (as if they were written as it).
INTERNAL_NAMES = {
    "localhost": "127.0.0.1",
    "ip6-localhost": "::1",
    "ip6-loopback": "::1",
    "metadata": "169.254.169.254",
    "metadata.google.internal": "169.254.169.254",
    "metadata.goog": "169.254.169.254",
    "instance-data": "169.254.169.254",
    "instance-data.ec2.internal": "169.254.169.254",
}
METADATA_ADDRESSES = {
    ipaddress.ip_address(a)
    for a in ("169.254.169.254", "169.254.170.2", "169.254.170.23", "fd00:ec2::254", "fd00:ec2::23")
}
LOOPBACK = ("127.0.0.0/8", "::1/128", "localhost")
_HOST_NAME = re.compile(r"(?=.{1,253}$)[a-z0-9_]([a-z0-9_-]{0,62})(\.[a-z0-9_]([a-z0-9_-]{0,62}))*")
_NUMERIC_HOST = re.compile(r"[0-9a-fx.]+")


class OutboundRefused(Exception):
    """The target is not one opsweb sends to; the message says which address and why."""


@dataclass(frozen=True)
class AllowList:
    """Exceptions to the refusal: networks (``10.0.0.0/8``, ``127.0.0.1``) and host names
    (``relay.internal``: whatever it resolves to)."""

    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    hosts: frozenset[str] = frozenset()

    @classmethod
    def parse(cls, entries: Iterable[str]) -> AllowList:
        """An allow-list from CIDRs, addresses and host names; ValueError names a bad entry."""
        networks, hosts = [], set()
        for raw in entries:
            entry = str(raw).strip().lower().rstrip(".")
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
            except ValueError:
                if not _HOST_NAME.fullmatch(entry):
                    raise ValueError(
                        f"{raw!r} is neither a network (10.0.0.0/8), an address nor a host name."
                    ) from None
                hosts.add(entry)
        return cls(tuple(networks), frozenset(hosts))

    def __add__(self, other: AllowList) -> AllowList:
        return AllowList(self.networks + other.networks, self.hosts | other.hosts)

    def with_loopback(self) -> AllowList:
        """This list plus this machine's loopback addresses and ``localhost``."""
        return self + AllowList.parse(LOOPBACK)

    def allows_address(self, address: Address) -> bool:
        candidates = [address, _embedded_ipv4(address)]
        return any(
            a is not None and a.version == net.version and a in net
            for a in candidates
            for net in self.networks
        )


_provider: Callable[[], AllowList] = AllowList


def configure(provider: Callable[[], AllowList]) -> None:
    """Set where ``current_allow()`` reads the allow-list from (opsweb: its settings)."""
    global _provider
    _provider = provider


def current_allow() -> AllowList:
    """The allow-list in force: what ``configure()`` gave, or nothing allowed."""
    return _provider()


# -- configuration ---------------------------------------------------------------------------


def url_problem(url: str, *, allow: AllowList | None = None, what: str = "The URL") -> str | None:
    """A sentence saying why opsweb will not send to ``url`` (an http(s) URL), or None when
    it may. Asks no DNS: names other than the well-known internal ones are checked when
    sending (``request``)."""
    allow = current_allow() if allow is None else allow
    url = str(url).strip()
    if any(ch.isspace() or ord(ch) < 32 for ch in url):
        return f"{what} contains spaces or control characters."
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # e.g. an unclosed "[" around an IPv6 address
        return f"{what} is not a valid URL ({exc})."
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        return f"{what} must start with http:// or https:// and name a host."
    if "@" in parts.netloc or "\\" in parts.netloc:
        return (
            f"{what} carries a user name or password (user@host); opsweb does not send "
            f"credentials in URLs: give the host alone."
        )
    try:
        parts.port  # noqa: B018 (raises on a port that is not a number)
        host = _host(parts.hostname or "")
    except ValueError as exc:
        return f"{what} has an invalid host or port ({exc})."
    return host_problem(host, allow=allow, what=what)


def host_problem(host: str, *, allow: AllowList | None = None, what: str = "The URL") -> str | None:
    """Like ``url_problem`` for a bare host name or address (e.g. a mail relay)."""
    allow = current_allow() if allow is None else allow
    try:
        host = _host(host)
    except ValueError as exc:
        return f"{what} has an invalid host ({exc})."
    if not host:
        return f"{what} names no host."
    if host in allow.hosts:
        return None
    address = literal_address(host)
    if address is None:
        return None
    if allow.allows_address(address):
        return None
    kind = address_problem(address)
    if kind is None:
        return None
    shown = host if str(address) == host else f"{host} ({address})"
    return (
        f"{what} points at {shown}, {kind}; opsweb does not send there. An address meant to "
        f"be reached goes in OPSWEB_OUTBOUND_ALLOW."
    )


def literal_address(host: str) -> Address | None:
    """The address ``host`` stands for without DNS: an IP literal in any spelling the C
    resolver accepts (``2852039166``, ``0251.0376.0251.0376``, ``0xa9.254.43518``,
    ``::ffff:169.254.169.254``), or a well-known internal name; None for other names."""
    host = _host(host)
    if host in INTERNAL_NAMES:
        return ipaddress.ip_address(INTERNAL_NAMES[host])
    if host.endswith(".localhost"):
        return ipaddress.ip_address("127.0.0.1")
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if _NUMERIC_HOST.fullmatch(host):
        try:
            return ipaddress.ip_address(socket.inet_aton(host))
        except OSError:
            pass
    return None


def address_problem(address: Address) -> str | None:
    """What kind of non-public address ``address`` is (``"a loopback address"``), or None
    for a public one. IPv4 carried inside IPv6 (mapped, NAT64, 6to4, Teredo) counts too."""
    for candidate in (_embedded_ipv4(address), address):
        if candidate is None:
            continue
        if candidate in METADATA_ADDRESSES:
            return "a cloud metadata service"
        if candidate.is_loopback:
            return "a loopback address"
        if candidate.is_link_local:
            return "a link-local address (where cloud metadata services live)"
        if candidate.is_unspecified:
            return "the unspecified address"
        if candidate.is_multicast:
            return "a multicast address"
        if any(candidate in n for n in _PRIVATE if n.version == candidate.version):
            return "a private address (RFC 1918 or unique-local)"
        if not candidate.is_global:
            return "an address that is not public (reserved or shared)"
    return None


_PRIVATE = [
    ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7")
]
# IPv6 prefixes whose last 32 bits are an IPv4 address a gateway may reach: NAT64 and the
# deprecated IPv4-compatible form (::a.b.c.d).
_CARRIES_IPV4 = [ipaddress.ip_network(n) for n in ("64:ff9b::/96", "::/96")]


def _embedded_ipv4(address: Address) -> ipaddress.IPv4Address | None:
    if address.version == 4:
        return None
    if address.ipv4_mapped:
        return address.ipv4_mapped
    if address.sixtofour:
        return address.sixtofour
    if address.teredo:
        return address.teredo[1]
    if any(address in n for n in _CARRIES_IPV4) and int(address) > 1:  # not :: or ::1
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def _host(host: str) -> str:
    """``host`` lowercased, without brackets, zone or final dot, IDNA-encoded (as the
    resolver would see it: ``１２７.０.０.１`` is 127.0.0.1)."""
    host = host.strip().strip("[]").split("%", 1)[0].lower().rstrip(".")
    if host and not host.isascii():
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError as exc:
            raise ValueError(f"{host!r} is not a valid host name") from exc
    return host


# -- sending ---------------------------------------------------------------------------------


def resolve(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (the system resolver), in its order."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(info[4][0] for info in infos))


def checked_addresses(
    host: str, port: int, *, allow: AllowList | None = None, what: str = "The target"
) -> list[str]:
    """The addresses to connect to for ``host``, each checked. Raises OutboundRefused when
    the host itself or *any* address it resolves to is refused (a name with one internal
    address among public ones is refused), OSError when it does not resolve."""
    allow = current_allow() if allow is None else allow
    problem = host_problem(host, allow=allow, what=what)
    if problem:
        raise OutboundRefused(problem)
    name = _host(host)
    try:
        addresses = resolve(name, port)
    except socket.gaierror as exc:
        raise OSError(f"{name} does not resolve ({exc.strerror})") from None
    if name in allow.hosts:
        return addresses
    for text in addresses:
        address = ipaddress.ip_address(text.split("%", 1)[0])
        kind = None if allow.allows_address(address) else address_problem(address)
        if kind:
            raise OutboundRefused(
                f"{what} {name} resolves to {text}, {kind}; opsweb does not send there. An "
                f"address meant to be reached goes in OPSWEB_OUTBOUND_ALLOW."
            )
    if not addresses:
        raise OSError(f"{name} does not resolve")
    return addresses


def connect(
    host: str,
    port: int,
    *,
    timeout: float | None,
    allow: AllowList | None = None,
    what: str = "The target",
) -> socket.socket:
    """A TCP connection to ``host``:``port`` made to a checked address (the first that
    answers). Raises OutboundRefused (refused target) or OSError (no connection)."""
    error: OSError = OSError(f"{host} has no address")
    for address in checked_addresses(host, port, allow=allow, what=what):
        try:
            return socket.create_connection((address, port), timeout)
        except OSError as exc:
            error = exc
    raise error


@dataclass(frozen=True)
class Answer:
    """An HTTP answer: status, the start of the body, and where a redirect pointed (never
    followed)."""

    status: int
    body: bytes
    location: str = ""

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


class _PinnedHTTPConnection(http.client.HTTPConnection):
    def __init__(self, host, port, *, allow, what, timeout):
        super().__init__(host, port, timeout=timeout)
        self._allow, self._what = allow, what

    def connect(self):
        self.sock = connect(
            self.host, self.port, timeout=self.timeout, allow=self._allow, what=self._what
        )


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    def __init__(self, host, port, *, allow, what, timeout):
        super().__init__(host, port, timeout=timeout, context=ssl.create_default_context())
        self._allow, self._what = allow, what

    def connect(self):
        sock = connect(
            self.host, self.port, timeout=self.timeout, allow=self._allow, what=self._what
        )
        # The certificate is checked against the name, while the socket goes to the address.
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


def request(
    url: str,
    *,
    method: str = "GET",
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 10.0,
    allow: AllowList | None = None,
    limit: int = 64 * 1024,
    what: str = "The URL",
) -> Answer:
    """Send one HTTP request to ``url`` (``timeout`` seconds to connect and for each read)
    and return the answer, reading at most ``limit`` bytes of body. Redirects are returned,
    not followed. Raises OutboundRefused for a refused target, OSError when nothing answers,
    http.client.HTTPException for a malformed answer."""
    allow = current_allow() if allow is None else allow
    problem = url_problem(url, allow=allow, what=what)
    if problem:
        raise OutboundRefused(problem)
    parts = urlsplit(url.strip())
    https = parts.scheme.lower() == "https"
    port = parts.port or (443 if https else 80)
    kind = _PinnedHTTPSConnection if https else _PinnedHTTPConnection
    connection = kind(_host(parts.hostname or ""), port, allow=allow, what=what, timeout=timeout)
    path = urlunsplit(("", "", parts.path or "/", parts.query, ""))
    try:
        connection.request(
            method, path, body=body, headers={"User-Agent": "opsweb", **(headers or {})}
        )
        response = connection.getresponse()
        return Answer(response.status, response.read(limit), response.getheader("Location", ""))
    finally:
        connection.close()


def check_endpoint(url: str, *, allow: AllowList | None = None, what: str = "The URL") -> None:
    """For clients that open their own connections (boto3's ``endpoint_url``): the URL and
    every address its host resolves to now are checked. Raises OutboundRefused or OSError."""
    problem = url_problem(url, allow=allow, what=what)
    if problem:
        raise OutboundRefused(problem)
    parts = urlsplit(url.strip())
    port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
    checked_addresses(parts.hostname or "", port, allow=allow, what=what)


class SMTP(smtplib.SMTP):
    """smtplib's client connecting through ``connect()``: the relay is checked and pinned;
    STARTTLS still verifies the relay's certificate against its name."""

    def __init__(self, host: str = "", port: int = 0, *args, allow: AllowList | None = None, **kw):
        self._allow = allow
        super().__init__(host, port, *args, **kw)

    def _get_socket(self, host, port, timeout):
        return connect(host, port, timeout=timeout, allow=self._allow, what="The mail relay")


class SMTP_SSL(smtplib.SMTP_SSL):  # noqa: N801 (smtplib's name)
    """``SMTP`` over implicit TLS."""

    def __init__(self, host: str = "", port: int = 0, *args, allow: AllowList | None = None, **kw):
        self._allow = allow
        super().__init__(host, port, *args, **kw)

    def _get_socket(self, host, port, timeout):
        sock = connect(host, port, timeout=timeout, allow=self._allow, what="The mail relay")
        return self.context.wrap_socket(sock, server_hostname=self._host)

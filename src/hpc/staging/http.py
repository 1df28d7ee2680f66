"""HTTP(S) sources: streamed GETs, resumed with ``Range`` + ``If-Range``, connections address-checked.

Every connection, including those a redirect leads to, goes through :class:`GuardedAdapter`: the host
is resolved, every address checked with the :class:`~hpc.staging.addresses.AddressPolicy`, and the
socket connected to a checked address (TLS still verifies the certificate against the host name).
The environment is ignored (``trust_env = False``): no proxy variables, no ``.netrc`` credentials.

Error statuses never become data: anything but 200/206 ends the read with the status in the reason.
408, 429, 502, 503 and 504 are retried; other statuses (404, 403, 500...) fail the transfer at once.
"""

from __future__ import annotations

import logging
import re
import socket
from typing import Any
from collections.abc import Iterator

import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError, ReadTimeoutError

from hpc import __version__
from hpc.staging.addresses import AddressPolicy, loggable_url
from hpc.staging.errors import SourceChanged, SourceError, UnsafeAddress
from hpc.staging.sources import CHUNK

USER_AGENT = f"hpc-gateway/{__version__}"

# urllib3 logs every request line at DEBUG, query string included: presigned URLs carry their
# signature there. Set, not inherited: the root logger may be lowered to DEBUG after this import.
if logging.getLogger("urllib3").level < logging.INFO:
    logging.getLogger("urllib3").setLevel(logging.INFO)
RETRYABLE_STATUS = frozenset({408, 429, 502, 503, 504})
MAX_REDIRECTS = 5
SEND_BLOCK = 1024 * 1024
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")


def guarded_connect(conn: HTTPConnection, policy: AddressPolicy) -> socket.socket:
    """``_new_conn`` of a urllib3 connection, connecting only to addresses the policy allows."""
    addresses = policy.resolve(conn._dns_host, conn.port)  # raises UnsafeAddress before any connect
    last: Exception | None = None
    for address in addresses:
        try:
            return urllib3.util.connection.create_connection(
                (address, conn.port), conn.timeout, source_address=conn.source_address,
                socket_options=conn.socket_options,
            )
        except TimeoutError as exc:
            raise ConnectTimeoutError(conn, f"connection to {conn.host} timed out") from exc
        except OSError as exc:
            last = exc
    raise NewConnectionError(conn, f"failed to establish a new connection: {last}")


def guarded_pool_classes(policy: AddressPolicy, http_conn=HTTPConnection, https_conn=HTTPSConnection,
                         http_pool=HTTPConnectionPool, https_pool=HTTPSConnectionPool) -> dict[str, type]:
    """urllib3 pool classes (``pool_classes_by_scheme``) whose connections are address-checked."""

    def _new_conn(self):
        return guarded_connect(self, policy)

    def guarded(base: type, name: str) -> type:
        def __init__(self, *args, **kwargs):
            # Request bodies (S3 parts) are sent in blocks of this size: urllib3's default of 16 KiB makes a
            # 16 MiB part a thousand read-and-send steps through Python.
            kwargs.setdefault("blocksize", SEND_BLOCK)
            base.__init__(self, *args, **kwargs)

        return type(name, (base,), {"_new_conn": _new_conn, "__init__": __init__})

    conn_http = guarded(http_conn, "GuardedHTTPConnection")
    conn_https = guarded(https_conn, "GuardedHTTPSConnection")
    return {
        "http": type("GuardedHTTPConnectionPool", (http_pool,), {"ConnectionCls": conn_http}),
        "https": type("GuardedHTTPSConnectionPool", (https_pool,), {"ConnectionCls": conn_https}),
    }


class GuardedAdapter(HTTPAdapter):
    """A requests adapter whose every connection is checked by an :class:`AddressPolicy`."""

    def __init__(self, policy: AddressPolicy):
        self._pool_classes = guarded_pool_classes(policy)
        super().__init__(max_retries=0)

    def init_poolmanager(self, *args, **kwargs):
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = self._pool_classes


def guarded_session(policy: AddressPolicy) -> requests.Session:
    session = requests.Session()
    session.trust_env = False
    session.max_redirects = MAX_REDIRECTS
    adapter = GuardedAdapter(policy)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


class _HttpStream:
    def __init__(self, response: requests.Response, start: int, total: int | None, validator: dict[str, Any],
                 description: str, read_timeout: float):
        self._response = response
        self._read_timeout = read_timeout
        self.start = start
        self.total = total
        self.validator = validator
        self._description = description

    def chunks(self) -> Iterator[bytes]:
        raw = self._response.raw
        try:
            while True:
                # Raw bytes as served (no content decoding): what the server's Content-Length counts.
                data = raw.read(CHUNK, decode_content=False)
                if not data:
                    return
                yield data
        except (ReadTimeoutError, TimeoutError):
            raise SourceError(f"stalled: {self._description} sent no data for {self._read_timeout:g} s "
                              "(read timeout)", retryable=True) from None
        except Exception as exc:  # noqa: BLE001 - a stream closed under a reader fails in assorted ways
            raise SourceError(f"reading {self._description} failed: {_short(exc)}", retryable=True) from None

    def close(self) -> None:
        self._response.close()


class HttpSource:
    """A file behind an http:// or https:// URL.

    Args:
        url: The URL (may carry user-info credentials; they are never shown).
        policy: Which addresses may be connected to.
        connect_timeout: Seconds to connect.
        read_timeout: Seconds of silence tolerated while reading: a source silent longer is "stalled".
    """

    def __init__(self, url: str, policy: AddressPolicy, connect_timeout: float = 10.0, read_timeout: float = 60.0):
        self.url = url
        self.description = loggable_url(url)
        self._session = guarded_session(policy)
        self._timeout = (connect_timeout, read_timeout)

    def open(self, offset: int, validator: dict[str, Any] | None) -> _HttpStream:
        validator = validator or {}
        headers = {"Accept-Encoding": "identity", "User-Agent": USER_AGENT}
        if offset > 0:
            headers["Range"] = f"bytes={offset}-"
            if validator.get("etag") and not validator["etag"].startswith("W/"):
                headers["If-Range"] = validator["etag"]
            elif validator.get("last_modified"):
                headers["If-Range"] = validator["last_modified"]
        try:
            response = self._session.get(self.url, headers=headers, stream=True, timeout=self._timeout)
        except UnsafeAddress:
            raise
        except (requests.exceptions.InvalidSchema, requests.exceptions.InvalidURL,
                requests.exceptions.MissingSchema, requests.exceptions.TooManyRedirects) as exc:
            raise SourceError(f"cannot fetch {self.description}: {_short(exc)}") from None
        except requests.exceptions.ReadTimeout:
            raise SourceError(f"stalled: {self.description} sent no answer for {self._timeout[1]:g} s "
                              "(read timeout)", retryable=True) from None
        except requests.RequestException as exc:
            raise SourceError(f"cannot fetch {self.description}: {_short(exc)}", retryable=True) from None
        try:
            return self._stream(response, offset, validator)
        except BaseException:
            response.close()
            raise

    def _stream(self, response: requests.Response, offset: int, validator: dict[str, Any]) -> _HttpStream:
        status = response.status_code
        if status == 416 and offset > 0:
            raise SourceChanged(f"{self.description} is no longer {offset} bytes long or more")
        if status not in (200, 206):
            reason = f"the source answered HTTP {status} {response.reason or ''}".rstrip()
            raise SourceError(f"{reason} for {self.description}", retryable=status in RETRYABLE_STATUS)
        found = {
            "etag": response.headers.get("ETag"),
            "last_modified": response.headers.get("Last-Modified"),
        }
        if status == 200:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            start = 0
        else:
            match = _CONTENT_RANGE.match(response.headers.get("Content-Range", "").strip())
            if not match or int(match.group(1)) != offset:
                raise SourceError(
                    f"{self.description} answered a range request with an unexpected Content-Range "
                    f"{response.headers.get('Content-Range')!r}"
                )
            total = None if match.group(3) == "*" else int(match.group(3))
            start = offset
        found["size"] = total
        if validator.get("size") is not None and total is not None and total != validator["size"]:
            raise SourceChanged(f"{self.description} changed size from {validator['size']} to {total} bytes")
        if start == 0:
            validator = found
        return _HttpStream(response, start, total, validator, self.description, self._timeout[1])


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    # urllib3 nests the whole pool repr in its messages; the innermost reason is what matters.
    match = re.search(r"\(Caused by (\w+)\(.*?: (.*)\)\)?$", text)
    if match:
        text = f"{match.group(1)}: {match.group(2)}"
    return text[:300]

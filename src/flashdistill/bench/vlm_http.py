"""The VLM judge's HTTP side: a time-out that bounds the whole request, and secrets kept out of what it records.

- `deadline_client(timeout, concurrency)`: the httpx client the judge's OpenAI client sends through. httpx's
  time-outs are per operation: a server that trickles its reply one byte at a time keeps every read under the
  read time-out and the request alive for ever. Here every socket operation (connect, TLS handshake, each read and
  write) made inside `deadline(seconds)` gets at most the time left until the deadline, and none once it has
  passed (httpx's own ReadTimeout / WriteTimeout / ConnectTimeout, which the OpenAI client reports as a time-out),
  so `seconds` bounds the whole request, headers and body included. The deadline is per thread, as each of the
  judge's workers sends its requests synchronously.
- `redact_url(url)`: the URL with its user, password and query values replaced by `***`, for what is recorded
  (run.json, results.json) and printed: a key may be written into `--vlm-base-url` itself.
- `scrub(text, key, url)`: `text` with the API key and the URL's secrets replaced by `***`, the key also where a
  reply spaced it out or percent-encoded it; the judge applies it to everything a server's reply can put into a
  result (reasoning, failure modes, error messages).
"""

from __future__ import annotations

import re
import sys
import threading
import time
from contextlib import contextmanager
from urllib.parse import parse_qsl, quote, unquote, urlsplit, urlunsplit

try:  # the HTTP stack of the installed OpenAI client: httpx2 in newer releases, httpx before
    import httpcore2 as httpcore
    import httpx2 as httpx
except ImportError:  # pragma: no cover
    import httpcore
    import httpx

_local = threading.local()
_WRITE_CHUNK = 1 << 16  # bytes per write, each with a fresh share of the time left
_MIN_SECRET = 4  # shorter URL parts (`v=1`) are not secrets; replacing them would garble messages


@contextmanager
def deadline(seconds: float):
    """Every socket operation of this thread inside the block ends by `seconds` from now."""
    _local.end = time.monotonic() + seconds
    try:
        yield
    finally:
        _local.end = None


def _left(timeout: float | None, timed_out: type[Exception]) -> float | None:
    end = getattr(_local, "end", None)
    if end is None:
        return timeout
    left = end - time.monotonic()
    if left <= 0:
        raise timed_out("the whole request ran past its time-out")
    return left if timeout is None else min(timeout, left)


class _Stream(httpcore.NetworkStream):
    def __init__(self, inner: httpcore.NetworkStream):
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, _left(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        view = memoryview(buffer)
        for start in range(0, len(view), _WRITE_CHUNK):
            self._inner.write(view[start:start + _WRITE_CHUNK], _left(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(self, ssl_context, server_hostname: str | None = None,
                  timeout: float | None = None) -> httpcore.NetworkStream:
        return _Stream(self._inner.start_tls(ssl_context, server_hostname, _left(timeout, httpcore.ConnectTimeout)))

    def get_extra_info(self, info: str):
        return self._inner.get_extra_info(info)


class _Backend(httpcore.NetworkBackend):
    def __init__(self, inner: httpcore.NetworkBackend):
        self._inner = inner

    def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        return _Stream(self._inner.connect_tcp(host, port, _left(timeout, httpcore.ConnectTimeout), local_address,
                                               socket_options))

    def connect_unix_socket(self, path, timeout=None, socket_options=None):
        return _Stream(self._inner.connect_unix_socket(path, _left(timeout, httpcore.ConnectTimeout),
                                                       socket_options))

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


def _bound(transport) -> bool:
    """Route `transport`'s connections through the deadline backend; False when it is not httpx's own."""
    pool = getattr(transport, "_pool", None)
    backend = getattr(pool, "_network_backend", None)
    if backend is None:
        return False
    if not isinstance(backend, _Backend):
        pool._network_backend = _Backend(backend)
    return True


def deadline_client(timeout: float, concurrency: int) -> httpx.Client:
    """An httpx client whose requests made inside `deadline()` end by the deadline (module docstring)."""
    limits = httpx.Limits(max_connections=max(concurrency, 10), max_keepalive_connections=max(concurrency, 10))
    client = httpx.Client(timeout=timeout, follow_redirects=True, limits=limits)
    transports = [client._transport, *client._mounts.values()]  # the mounts: proxies named by the environment
    if not all(_bound(t) for t in transports if t is not None):  # tests/test_vlm_judge.py catches this
        print("note: the installed httpx is not the one this judge knows: its time-out bounds each read of a "
              "reply, not the whole request", file=sys.stderr)
    return client


def redact_url(url: str) -> str:
    """`url` with its user, password and query values replaced by `***` (scheme, host, port and path kept)."""
    try:
        parts = urlsplit(url)
        host = parts.netloc.rpartition("@")[2]
        netloc = f"***@{host}" if "@" in parts.netloc else host
        query = "&".join(f"{k}=***" for k, _ in parse_qsl(parts.query, keep_blank_values=True))
        return urlunsplit((parts.scheme, netloc, parts.path, query, ""))
    except ValueError:  # not even a URL: show nothing of it
        return "***"


def _url_secrets(url: str) -> list[str]:
    """The user, password and query values of `url`, as written (percent-encoded) and decoded."""
    try:
        parts = urlsplit(url)
        found = [parts.username, parts.password, *(item.partition("=")[2] for item in parts.query.split("&"))]
    except ValueError:
        return []
    found = [s for s in found if s]
    return [s for s in {*found, *map(unquote, found)} if len(s) >= _MIN_SECRET]


def scrub(text: str, key: str | None, url: str) -> str:
    """`text` with `key` (also spaced out or percent-encoded) and the secrets of `url` replaced by `***`."""
    secrets = _url_secrets(url)
    if key and key != "EMPTY":  # "EMPTY": the placeholder a local server without a key gets
        secrets += [key, quote(key, safe="")]
    for secret in sorted(set(secrets), key=len, reverse=True):
        text = text.replace(secret, "***")
    if key and key != "EMPTY":
        spaced = r"\s*".join(re.escape(c) for c in key)
        text = re.sub(spaced, "***", text, flags=re.IGNORECASE)
    return text

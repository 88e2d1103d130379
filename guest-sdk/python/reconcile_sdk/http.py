"""Outbound HTTP over wasi:http 0.2: a small blocking client (no asyncio needed)."""
from __future__ import annotations

import json as _json
from typing import Optional
from urllib.parse import urlsplit

from componentize_py_types import Ok, Err
from wit_world.imports import http_types as _h, outgoing_handler as _out, streams as _streams

MAX_BODY_BYTES = 64 * 1024 * 1024
_METHODS = {"GET": _h.Method_Get, "HEAD": _h.Method_Head, "POST": _h.Method_Post, "PUT": _h.Method_Put,
            "DELETE": _h.Method_Delete, "PATCH": _h.Method_Patch, "OPTIONS": _h.Method_Options}


class HttpError(Exception):
    def __init__(self, kind: str, message: str, status: Optional[int] = None):
        super().__init__(message)
        self.kind, self.status = kind, status


def _kind(code) -> str:
    n = type(code).__name__.removeprefix("ErrorCode_")
    if n in ("HttpRequestDenied", "DestinationIpProhibited"):
        return "denied"
    if "Timeout" in n:
        return "timeout"
    if n in ("ConnectionRefused", "ConnectionTerminated", "DestinationUnavailable", "DestinationIpUnroutable"):
        return "connect"
    if n in ("DnsError", "DestinationNotFound"):
        return "dns"
    if n.startswith("Tls"):
        return "tls"
    if n == "HttpResponseBodySize":
        return "body_too_large"
    if n == "ConnectionLimitReached":
        return "limit"
    if n in ("HttpRequestUriInvalid", "HttpRequestMethodInvalid"):
        return "invalid"
    return "other"


def _code_error(code) -> HttpError:
    return HttpError(_kind(code), type(code).__name__.removeprefix("ErrorCode_"))


class Response:
    def __init__(self, status: int, headers: list, body: bytes):
        self.status, self.headers, self.body = status, headers, body

    def header(self, name: str) -> Optional[str]:
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v.decode("latin-1")
        return None

    def text(self) -> str:
        try:
            return self.body.decode("utf-8")
        except UnicodeDecodeError as e:
            raise HttpError("decode", f"the body is not UTF-8: {e}", self.status)

    def json(self):
        try:
            return _json.loads(self.body)
        except ValueError as e:
            raise HttpError("decode", f"the body is not JSON: {e}", self.status)

    def raise_for_status(self) -> "Response":
        if self.status >= 400:
            raise HttpError("status", f"HTTP {self.status}", self.status)
        return self


def _block(pollable):
    with pollable:
        pollable.block()


def request(method: str, url: str, headers: Optional[dict] = None, body: Optional[bytes] = None,
            json=None, timeout: Optional[float] = None) -> Response:
    u = urlsplit(url)
    if u.scheme not in ("http", "https") or not u.netloc:
        raise HttpError("invalid", f"not an http(s) URL: {url}")
    hdrs = [(k.lower(), v.encode() if isinstance(v, str) else v) for k, v in (headers or {}).items()]
    if json is not None:
        body = _json.dumps(json).encode()
        hdrs.append(("content-type", b"application/json"))
    try:
        fields = _h.Fields.from_list(hdrs)
    except Err as e:
        raise HttpError("invalid", f"invalid header: {e.value!r}")
    req = _h.OutgoingRequest(fields)
    m = _METHODS.get(method.upper())
    req.set_method(m() if m else _h.Method_Other(method))
    req.set_scheme(_h.Scheme_Https() if u.scheme == "https" else _h.Scheme_Http())
    req.set_authority(u.netloc)
    req.set_path_with_query((u.path or "/") + (f"?{u.query}" if u.query else ""))
    options = None
    if timeout is not None:
        ns = int(timeout * 1e9)
        options = _h.RequestOptions()
        options.set_connect_timeout(ns); options.set_first_byte_timeout(ns); options.set_between_bytes_timeout(ns)
    out_body = req.body()
    try:
        future = _out.handle(req, options)
    except Err as e:
        raise _code_error(e.value) from None
    if body:
        stream = out_body.write()
        data = memoryview(body)
        while data:
            n = stream.check_write()
            if n == 0:
                _block(stream.subscribe()); continue
            stream.write(bytes(data[:n])); data = data[n:]
        stream.blocking_flush()
        stream.__exit__(None, None, None)
    _h.OutgoingBody.finish(out_body, None)
    with future:
        while (r := future.get()) is None:
            _block(future.subscribe())
    if isinstance(r, Err) or isinstance(r.value, Err):
        raise _code_error(r.value.value if isinstance(r, Ok) else r.value)
    resp = r.value.value
    with resp:
        status = resp.status()
        with resp.headers() as h:
            headers_out = h.entries()
        inb = resp.consume()
    stream = inb.stream()
    chunks, size = [], 0
    try:
        while True:
            try:
                c = stream.blocking_read(64 * 1024)
            except Err as e:
                if isinstance(e.value, _streams.StreamError_Closed):
                    break
                raise HttpError("other", "the body failed to arrive") from None
            size += len(c)
            if size > MAX_BODY_BYTES:
                raise HttpError("body_too_large", f"the body is over {MAX_BODY_BYTES} bytes", status)
            chunks.append(c)
    finally:
        stream.__exit__(None, None, None)
    _h.IncomingBody.finish(inb).__exit__(None, None, None)
    return Response(status, headers_out, b"".join(chunks))


def get(url: str, **kw) -> Response:
    return request("GET", url, **kw)


def post(url: str, **kw) -> Response:
    return request("POST", url, **kw)

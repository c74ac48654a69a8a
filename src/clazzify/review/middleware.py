"""Pure-ASGI middleware of the review app: a body cap, and the security headers.

Both run before any handler parses anything, and neither buffers a body.
"""

from __future__ import annotations

from typing import Any

from starlette.exceptions import HTTPException

Scope = dict[str, Any]

#: How long a browser keeps to HTTPS after seeing the header: one year.
HSTS = "max-age=31536000"

SECURITY_HEADERS = {
    # Everything the page loads is served by the app itself: htmx and the page script too.
    "Content-Security-Policy": "default-src 'self'; img-src 'self'; style-src 'self'; "
    "script-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}


async def _plain(send: Any, status: int, text: str) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"), (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": f"{status}: {text}\n".encode()})


class BodyLimit:
    """Refuse request bodies over ``max_bytes`` before anything reads them.

    A ``Content-Length`` above the cap gets 413 at once, and the body is never read. A
    chunked body is counted as it streams in; the chunk that crosses the cap raises 413
    (an :class:`HTTPException`, so the app's error handler answers), and nothing after it
    is read.
    """

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length":
                if not value.isdigit():
                    await _plain(send, 400, f"bad Content-Length {value[:40]!r}: send a byte count")
                    return
                if int(value) > self.max_bytes:
                    await _plain(send, 413, f"the request body of {int(value)} bytes is over the "
                                            f"{self.max_bytes}-byte limit: send less")
                    return
        received = 0

        async def capped_receive() -> dict:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise HTTPException(413, f"the request body is over the {self.max_bytes}-byte limit: "
                                             "send less")
            return message

        await self.app(scope, capped_receive, send)


class SecurityHeaders:
    """The CSP and friends on every response; over TLS also HSTS and ``Secure`` cookies.

    TLS means the request's scheme is ``https`` (uvicorn with a certificate, or a trusted
    proxy's ``X-Forwarded-Proto``), or ``always_tls`` (``--secure-cookies``: the app sits
    behind a TLS proxy that it does not trust for headers).
    """

    def __init__(self, app: Any, always_tls: bool = False) -> None:
        self.app = app
        self.always_tls = always_tls

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        tls = self.always_tls or scope.get("scheme") == "https"

        async def send_with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                headers = []
                for name, value in message.get("headers", []):
                    if tls and name.lower() == b"set-cookie" and b"; secure" not in value.lower():
                        value += b"; secure"
                    headers.append((name, value))
                headers += [(k.lower().encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]
                if tls:
                    headers.append((b"strict-transport-security", HSTS.encode()))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)

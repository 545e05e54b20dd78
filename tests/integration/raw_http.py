"""Raw HTTP/1.1 over a socket, for clients that misbehave on purpose (a body that stalls,
trickles, or never ends) where an HTTP library would not."""

from __future__ import annotations

import socket
from typing import Any

import msgspec

GIVE_UP_S = 25.0  # a socket read that waits longer fails the test


class RawResponse:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def json(self) -> Any:
        return msgspec.json.decode(self.body)


def connect(url: str, give_up_s: float = GIVE_UP_S) -> socket.socket:
    host, port = url.removeprefix("http://").split("/")[0].rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=give_up_s)


def request_head(path: str, content_type: str = "application/x-ndjson",
                 length: int | None = None, *, extra: dict[str, str] | None = None) -> bytes:
    framing = (b"Transfer-Encoding: chunked" if length is None
               else b"Content-Length: %d" % length)
    more = b"".join(b"%s: %s\r\n" % (k.encode(), v.encode()) for k, v in (extra or {}).items())
    return (b"POST %s HTTP/1.1\r\nHost: gateway\r\nContent-Type: %s\r\n%s\r\n%s\r\n"
            % (path.encode(), content_type.encode(), framing, more))


def start_body(sock: socket.socket, path: str, length: int, first_bytes: bytes,
               request_id: str | None = None) -> None:
    """Send a request's headers with ``Expect: 100-continue``, wait for the server's
    ``100 Continue`` (the gateway's handler asks for the body: it admitted the request) and
    send ``first_bytes`` of the body. A client that closes the socket now has certainly left
    in the middle of a body the gateway was reading, behind HAProxy too."""
    extra = {"Expect": "100-continue"}
    if request_id is not None:
        extra["X-Request-Id"] = request_id
    sock.sendall(request_head(path, "application/json", length, extra=extra))
    interim = b""
    while b"\r\n\r\n" not in interim:
        chunk = sock.recv(1)
        if not chunk:
            raise AssertionError(f"connection closed before 100 Continue: {interim!r}")
        interim += chunk
    assert interim.startswith(b"HTTP/1.1 100"), interim
    sock.sendall(first_bytes)


def read_response(sock: socket.socket) -> RawResponse:
    """One HTTP/1.1 response with a Content-Length (what the gateway and HAProxy send)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError(f"connection closed before a response: {data!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip()
               for k, v in (line.split(":", 1) for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError("connection closed in the middle of a response body")
        body += chunk
    return RawResponse(status, headers, body)


def closed_by_peer(sock: socket.socket) -> bool:
    """True once the peer closed the connection (EOF), False if it stays open until the
    socket's timeout."""
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True

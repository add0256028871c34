"""Reading an HTTP/1.1 request body (``Content-Length`` or chunked) for the test servers.

Both the ingest emulator and :class:`~pagent_provider.testing.webapp.WebAppServer`
must consume the whole body of every request, so that the next request on a
keep-alive connection starts at the right byte. Only the standard library is used.
"""

from __future__ import annotations

from email.message import Message
from io import BufferedIOBase

__all__ = ["ClientGone", "read_request_body"]

# Longest chunk-size or trailer line accepted, as http.client does.
_MAX_LINE = 65537


class ClientGone(Exception):
    """The client closed the connection before sending the whole body."""


def read_request_body(headers: Message, rfile: BufferedIOBase) -> bytes | None:
    """Read the body of the request whose headers were just parsed.

    Args:
        headers: The request headers (``BaseHTTPRequestHandler.headers``).
        rfile: The connection's buffered reader, positioned after the headers.

    Returns:
        The body (de-chunked), ``b""`` when the request has none, or ``None``
        if its framing is invalid (a bad ``Content-Length`` or chunk size);
        the connection cannot be reused then.

    Raises:
        ClientGone: If the connection ended mid-body.
    """
    if "chunked" in headers.get("Transfer-Encoding", "").lower():
        return _read_chunked(rfile)
    length = headers.get("Content-Length")
    if length is None:
        return b""
    try:
        n = int(length)
    except ValueError:
        return None
    if n < 0:
        return None
    data = rfile.read(n)
    if len(data) != n:
        raise ClientGone
    return data


def _read_chunked(rfile: BufferedIOBase) -> bytes | None:
    parts: list[bytes] = []
    while True:
        line = rfile.readline(_MAX_LINE)
        if not line:
            raise ClientGone
        try:
            size = int(line.split(b";", 1)[0].strip(), 16)
        except ValueError:
            return None
        if size < 0:
            return None
        if size == 0:
            while rfile.readline(_MAX_LINE) not in (b"\r\n", b"\n", b""):
                pass  # trailers
            return b"".join(parts)
        chunk = rfile.read(size)
        if len(chunk) != size:
            raise ClientGone
        parts.append(chunk)
        rfile.readline(_MAX_LINE)  # CRLF after the chunk

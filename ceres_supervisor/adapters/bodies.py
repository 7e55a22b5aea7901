"""Reading an HTTP answer whole, with a cap.

aiohttp's `StreamReader.read(n)` returns what has arrived so far, up to n bytes, not n bytes: an
answer that comes in several TCP segments (a few kilobytes on a loaded machine) would be cut, and
its JSON would not parse.
"""

from __future__ import annotations

import aiohttp


async def read_body(content: aiohttp.StreamReader, limit: int, first_line: bool = False) -> bytes:
    """The whole answer, until the server ends it; with `first_line`, until its first newline (a
    stream that stays open, as etcd's lease keep-alive). ValueError past `limit` bytes."""
    chunks: list[bytes] = []
    size = 0
    while chunk := await content.readany():
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            raise ValueError(f"answer larger than {limit} bytes")
        if first_line and b"\n" in chunk:
            break
    return b"".join(chunks)

"""The reward service's wire format, checked in an order that leaves unauthenticated bytes unparsed.

A request is two ZMQ frames after the ROUTER's envelope (the sender identity, and for a REQ client
an empty delimiter):
  header  b"GRW1" + request id (8 bytes, big-endian) + token (UTF-8; empty when the service has none)
  body    msgpack map {"completions": [str], "targets": [item id], "mode": str?, "beams": [[str]]?}
          or {"ping": true}, answered without scoring (the pool's health check)
The header has a fixed layout, so the token is compared before anything in the body is read; the
body is unpacked only after the token matched. No frame over `frame_limit` gets this far: the
replica's socket drops the connection that sends one before buffering it (ZMQ_MAXMSGSIZE), and the
client refuses to send a body over the limit, with an error that names it.
A reply is one msgpack frame: {"id", "ok": true, ...} or {"id", "ok": false, "code", "error"}, where
"id" is the header's (null when the header itself is malformed) and "code" one of the constants below.
"""
from __future__ import annotations

import hmac
import ipaddress
import struct
from typing import Any, Sequence

import msgpack

from cluster.spec import SpecError

MAGIC = b"GRW1"
_ID = struct.Struct(">Q")
HEADER_BYTES = len(MAGIC) + _ID.size
MAX_TOKEN_BYTES = 1024  # bounds the header frame, so a malformed one is refused before anything else is read
MAX_REQUEST_BYTES = 64 << 20  # cluster.reward.max_request_mib's default

BAD_FRAME = "bad frame"
BAD_TOKEN = "bad token"
BAD_REQUEST = "bad request"
INTERNAL = "internal error"


class FrameError(ValueError):
    """A request refused before scoring; `request_id` is the header's when the header could be read."""

    def __init__(self, code: str, message: str, request_id: int | None = None):
        super().__init__(f"{code}: {message}")
        self.code, self.request_id = code, request_id


def pack_request(request_id: int, token: str | None, body: Any) -> list[bytes]:
    return [MAGIC + _ID.pack(request_id) + (token or "").encode(), msgpack.packb(body, use_bin_type=True)]


def split_envelope(frames: Sequence[bytes]) -> tuple[list[bytes], list[bytes]]:
    """(envelope, request frames) of a message as a ROUTER socket receives it."""
    size = 2 if len(frames) > 1 and frames[1] == b"" else 1
    return list(frames[:size]), list(frames[size:])


def frame_limit(max_request_bytes: int) -> int:
    """The largest frame a replica receives: the body limit, or a full header where that is larger."""
    return max(max_request_bytes, HEADER_BYTES + MAX_TOKEN_BYTES)


def check_request(parts: Sequence[bytes], token: bytes | None) -> tuple[int, Any]:
    """(request id, unpacked body) of the frames after the envelope, or FrameError."""
    if len(parts) != 2:
        raise FrameError(BAD_FRAME, f"expected 2 frames (header, body) after the envelope, got {len(parts)}")
    header, body = parts
    if not HEADER_BYTES <= len(header) <= HEADER_BYTES + MAX_TOKEN_BYTES or not header.startswith(MAGIC):
        raise FrameError(BAD_FRAME, f"the header frame must be {MAGIC!r}, an 8-byte request id and the token "
                                    f"(got {len(header)} bytes starting {header[:4]!r})")
    (request_id,) = _ID.unpack_from(header, len(MAGIC))
    if token is not None and not hmac.compare_digest(header[HEADER_BYTES:], token):
        raise FrameError(BAD_TOKEN, "missing or wrong reward service token (cluster.reward.token)", request_id)
    try:
        return request_id, msgpack.unpackb(body, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several types for undecodable bytes; each is the sender's fault
        raise FrameError(BAD_FRAME, f"the body is not valid msgpack: {type(exc).__name__}: {exc}", request_id) from None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a hostname, an interface name or "*": it may be reachable from anywhere
        return False


def check_token(host: str, token: str | None) -> None:
    """A service reachable from other machines must authenticate its callers, with a token that fits the header."""
    if not token and not is_loopback(host):
        raise SpecError(f"cluster.reward.token is required when the reward service binds a non-loopback address "
                        f"(cluster.reward.host: {host!r}); set it to a shared secret")
    if token and len(token.encode()) > MAX_TOKEN_BYTES:
        raise SpecError(f"cluster.reward.token is {len(token.encode())} bytes in UTF-8; at most {MAX_TOKEN_BYTES} fit")

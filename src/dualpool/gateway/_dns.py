"""A small DNS client: A and AAAA records of one name from one nameserver, over UDP.

`pools[].dns.server` (host:port) makes the gateway ask that nameserver directly
instead of the system resolver (getaddrinfo, /etc/resolv.conf): for clusters
whose service DNS is not the node's resolver, and for the tests, which run a
local DNS server whose answers change while the gateway runs.
"""

from __future__ import annotations

import asyncio
import ipaddress
import secrets
import struct

__all__ = ["query_addresses"]

_A = 1
_AAAA = 28
_IN = 1


def _question(qid: int, name: str, qtype: int) -> bytes:
    head = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0)  # recursion desired, 1 question
    labels = b"".join(
        bytes([len(p)]) + p for p in (x.encode("idna") for x in name.rstrip(".").split(".")) if p
    )
    return head + labels + b"\x00" + struct.pack("!HH", qtype, _IN)


def _skip_name(msg: bytes, i: int) -> int:
    while True:
        n = msg[i]
        if n == 0:
            return i + 1
        if n & 0xC0 == 0xC0:  # compression pointer: two bytes, ends the name
            return i + 2
        i += 1 + n


def _answers(msg: bytes, qid: int) -> list[str]:
    if len(msg) < 12:
        raise OSError("DNS answer too short")
    rid, flags, qd, an, _, _ = struct.unpack("!HHHHHH", msg[:12])
    if rid != qid:
        raise OSError("DNS answer to another question")
    rcode = flags & 0xF
    if rcode == 3:
        raise OSError("DNS: name not found (NXDOMAIN)")
    if rcode:
        raise OSError(f"DNS error rcode {rcode}")
    i = 12
    for _ in range(qd):
        i = _skip_name(msg, i) + 4
    out: list[str] = []
    for _ in range(an):
        i = _skip_name(msg, i)
        rtype, rclass, _ttl, rdlen = struct.unpack("!HHIH", msg[i : i + 10])
        i += 10
        data = msg[i : i + rdlen]
        i += rdlen
        if rclass != _IN:
            continue
        if rtype == _A and rdlen == 4:
            out.append(str(ipaddress.IPv4Address(data)))
        elif rtype == _AAAA and rdlen == 16:
            out.append(str(ipaddress.IPv6Address(data)))
    return out


class _Client(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.answer: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
        if not self.answer.done():
            self.answer.set_result(data)

    def error_received(self, exc: Exception) -> None:
        if not self.answer.done():
            self.answer.set_exception(exc)


async def _ask(name: str, qtype: int, server: tuple[str, int], timeout: float) -> list[str]:
    loop = asyncio.get_running_loop()
    qid = secrets.randbits(16)
    transport, proto = await loop.create_datagram_endpoint(_Client, remote_addr=server)
    try:
        transport.sendto(_question(qid, name, qtype))
        try:
            msg = await asyncio.wait_for(proto.answer, timeout)
        except TimeoutError:
            raise OSError(f"no answer from DNS server {server[0]}:{server[1]}") from None
        return _answers(msg, qid)
    finally:
        transport.close()


async def query_addresses(name: str, server: tuple[str, int], timeout: float = 2.0) -> list[str]:
    """Sorted A and AAAA addresses of `name`; OSError when the name does not resolve."""
    found: list[str] = []
    errors: list[OSError] = []
    for qtype in (_A, _AAAA):
        try:
            found += await _ask(name, qtype, server, timeout)
        except OSError as exc:
            errors.append(exc)
    if not found and errors:
        raise errors[0]
    if not found:
        raise OSError(f"DNS: no A or AAAA record for {name}")
    return sorted(set(found))

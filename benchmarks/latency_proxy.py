"""A TCP proxy that adds a fixed delay to every HTTP round trip, to emulate a distant store.

    python benchmarks/latency_proxy.py HOST:PORT [--latency-ms 20] [--port 0]

It listens on 127.0.0.1 (a free port unless ``--port``), prints ``LISTENING <port>`` once ready,
and forwards every connection to ``HOST:PORT``. Each time a client starts sending after the
server last spoke (a new request on a connection, or the body after an ``Expect: 100-continue``
answer) the proxy holds those bytes for the latency before forwarding them, so each request /
response round trip costs at least that much, as it does against a cloud endpoint tens of
milliseconds away. Response bytes are forwarded at once, and bodies stream through unchanged.
``tc netem`` would do this in the kernel, but it needs privileges these machines do not have.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib


class _Turn:
    """Whether the next client bytes start a new round trip."""

    __slots__ = ("fresh",)

    def __init__(self) -> None:
        self.fresh = True


async def _pump_requests(
    src: asyncio.StreamReader, dst: asyncio.StreamWriter, turn: _Turn, delay: float
) -> None:
    while data := await src.read(1 << 16):
        if turn.fresh:
            turn.fresh = False
            await asyncio.sleep(delay)
        dst.write(data)
        await dst.drain()
    with contextlib.suppress(OSError):
        dst.write_eof()


async def _pump_responses(
    src: asyncio.StreamReader, dst: asyncio.StreamWriter, turn: _Turn
) -> None:
    while data := await src.read(1 << 16):
        turn.fresh = True
        dst.write(data)
        await dst.drain()
    with contextlib.suppress(OSError):
        dst.write_eof()


async def _serve(upstream_host: str, upstream_port: int, port: int, delay: float) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(upstream_host, upstream_port)
        except OSError:
            writer.close()
            return
        turn = _Turn()
        try:
            await asyncio.gather(
                _pump_requests(reader, up_writer, turn, delay),
                _pump_responses(up_reader, writer, turn),
            )
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            for w in (writer, up_writer):
                w.close()

    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=1024)
    bound = server.sockets[0].getsockname()[1]
    print(f"LISTENING {bound}", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("upstream", help="HOST:PORT to forward to")
    ap.add_argument("--latency-ms", type=float, default=20.0, help="delay per round trip")
    ap.add_argument("--port", type=int, default=0, help="port to listen on (0: a free one)")
    args = ap.parse_args()
    host, _, port = args.upstream.rpartition(":")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(host, int(port), args.port, args.latency_ms / 1000))


if __name__ == "__main__":
    main()

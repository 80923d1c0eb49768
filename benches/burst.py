#!/usr/bin/env python3
"""Open N connections, then send one GET on each at the same moment; report the statuses.

usage: burst.py HOST:PORT PATH N     (bounded: N <= 5000, 30 s overall timeout)
"""
import asyncio
import collections
import sys


async def one(host, port, path, start, conns):
    reader, writer = await asyncio.open_connection(host, port)
    conns.append(writer)
    await start.wait()
    writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    status_line = await reader.readline()
    await reader.read()
    writer.close()
    parts = status_line.split()
    return parts[1].decode() if len(parts) > 1 else "none"


async def main(addr, path, n):
    host, port = addr.rsplit(":", 1)
    start = asyncio.Event()
    conns = []
    tasks = [asyncio.create_task(one(host, int(port), path, start, conns)) for _ in range(n)]
    while len(conns) < n:
        await asyncio.sleep(0.01)
    start.set()
    results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 30)
    counts = collections.Counter(r if isinstance(r, str) else type(r).__name__ for r in results)
    print(" ".join(f"{k}:{v}" for k, v in sorted(counts.items())))


if __name__ == "__main__":
    n = min(int(sys.argv[3]), 5000)
    asyncio.run(asyncio.wait_for(main(sys.argv[1], sys.argv[2], n), 60))

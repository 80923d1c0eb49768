#!/usr/bin/env python3
"""Memory per idle keep-alive connection, and whether it is given back.

    benches/idle_memory.py [connections]        (default 5000)

Starts the release binary's mock CRM and a gateway (one worker) on loopback, warms the
card cache, opens N connections that each make one request (a cache hit) and then stay
open and idle, and reads the gateway's RSS (/proc/PID/status) before, while they are
open, and after they are closed. Needs `cargo build --release` first; loopback only.
"""
import os
import socket
import subprocess
import sys
import tempfile
import time

BIN = os.path.join(os.path.dirname(__file__), "..", "target", "release", "cardgate")
CRM, GW, ADMIN = ("127.0.0.1", 18581), ("127.0.0.1", 18590), ("127.0.0.1", 18591)


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def open_fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def wait_port(addr, limit=10.0):
    end = time.time() + limit
    while time.time() < end:
        try:
            socket.create_connection(addr, timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"nothing listens on {addr}")


def request(sock):
    sock.sendall(b"GET /rest/chat/client/id/idle-bench-token HTTP/1.1\r\nHost: gw\r\n\r\n")
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise OSError("closed")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int([l.split(b":")[1] for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")][0])
    while len(body) < length:
        body += sock.recv(65536)


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
    work = tempfile.mkdtemp(prefix="cardgate-idle.")
    conf = os.path.join(work, "gw.toml")
    with open(conf, "w") as f:
        f.write(
            f'[server]\nlisten = "{GW[0]}:{GW[1]}"\nthreads = 1\nupgrade_sock = "{work}/gw.sock"\n'
            f'keepalive_timeout = "10m"\n[admin]\nlisten = "{ADMIN[0]}:{ADMIN[1]}"\n'
            f'[upstream]\nurl = "http://{CRM[0]}:{CRM[1]}"\n[log]\naccess = false\n'
        )
    procs = [
        subprocess.Popen([BIN, "mock-crm", "--listen", f"{CRM[0]}:{CRM[1]}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
        subprocess.Popen([BIN, "--config", conf], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
    ]
    gw = procs[1].pid
    try:
        wait_port(CRM)
        wait_port(GW)
        warm = socket.create_connection(GW)
        for _ in range(200):
            request(warm)
        warm.close()
        time.sleep(0.5)
        base_fds, before = open_fds(gw), rss_kib(gw)
        conns = []
        for _ in range(n):
            s = socket.create_connection(GW)
            request(s)
            conns.append(s)
        time.sleep(5.0)  # past the listener's 1 s idle shrink and the 2 s trim period
        during = rss_kib(gw)
        for s in conns:
            s.close()
        end = time.time() + 10
        while open_fds(gw) > base_fds and time.time() < end:
            time.sleep(0.05)
        time.sleep(5.0)
        after = rss_kib(gw)
        per = (during - before) * 1024 / n
        print(f"{n} idle connections: RSS {before} KiB before, {during} KiB open, {after} KiB after closing")
        print(f"per idle connection: {per:.0f} bytes ({per / 1024:.1f} KiB)")
        print(f"after closing: {100.0 * (after - before) / max(before, 1):+.1f}% of the RSS before")
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait()


if __name__ == "__main__":
    main()

"""A slowloris client, run as its own process by test_slowloris.py so that
its loop does not share the test's interpreter lock with the normal client.

    python slowloris_drip.py PORT N INTERVAL_S

Holds N connections to 127.0.0.1:PORT, each sending one byte of a request
every INTERVAL_S seconds: half drip their headers, half send whole headers
and drip the body. A connection the server closes is opened again at once,
so the load stays. Prints "ready" once all N are open, and on SIGTERM one
JSON line: connections opened, closed by the server, answers seen (first
line of each), and the longest life of a server-closed connection (from its first byte
sent, so that a wait in the listen backlog is not counted).
"""

import json
import resource
import selectors
import signal
import socket
import sys
import time

HEAD = (b"POST /v1/webhooks/tavus HTTP/1.1\r\nHost: sluice\r\n"
        b"Content-Type: application/json\r\nContent-Length: 100000\r\n")
PAD = b"X-Pad: " + b"a" * 4000 + b"\r\n"
BODY_HEAD = HEAD + b"\r\n"


class Conn:
    def __init__(self, port, body):
        self.sock = socket.socket()
        self.sock.setblocking(False)
        try:
            self.sock.connect(("127.0.0.1", port))
        except BlockingIOError:
            pass
        self.opened = None      # when the handshake is known done
        self.body = body
        self.pending = BODY_HEAD if body else b""
        self.data = b'{"x": "' + b"y" * 99990 + b'"}' if body else HEAD + PAD
        self.pos = 0
        self.answer = b""


def main():
    port, n, interval = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, n + 256)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    sel = selectors.DefaultSelector()
    stats = {"opened": 0, "closed_by_server": 0, "max_life_s": 0.0,
             "answers": {}, "send_errors": 0}

    def open_one(idx, body):
        c = Conn(port, body)
        c.idx = idx
        sel.register(c.sock, selectors.EVENT_READ, c)
        stats["opened"] += 1
        return c

    conns = [open_one(i, i % 2 == 1) for i in range(n)]
    print("ready", flush=True)
    tick = 0
    while not stop:
        # Spread the sends over the interval: one slice per 50 ms.
        slices = max(1, int(interval / 0.05))
        start = time.monotonic()
        for i in range(tick % slices, len(conns), slices):
            c = conns[i]
            try:
                if c.pending:
                    sent = c.sock.send(c.pending)
                    if c.opened is None:
                        c.opened = time.monotonic()
                    c.pending = c.pending[sent:]
                elif c.pos < len(c.data):
                    c.sock.send(c.data[c.pos:c.pos + 1])
                    if c.opened is None:
                        c.opened = time.monotonic()
                    c.pos += 1
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:
                stats["send_errors"] += 1
        tick += 1
        timeout = max(0.0, 0.05 - (time.monotonic() - start))
        for key, _ in sel.select(timeout):
            c = key.data
            try:
                got = c.sock.recv(4096)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                got = b""
            if got:
                c.answer += got
                continue
            life = time.monotonic() - (c.opened or time.monotonic())
            stats["closed_by_server"] += 1
            stats["max_life_s"] = max(stats["max_life_s"], round(life, 3))
            line = c.answer.split(b"\r\n", 1)[0].decode("latin-1") \
                or "(none)"
            stats["answers"][line] = stats["answers"].get(line, 0) + 1
            sel.unregister(c.sock)
            c.sock.close()
            conns[c.idx] = open_one(c.idx, c.body)
    for c in conns:
        c.sock.close()
    print(json.dumps(stats), flush=True)


if __name__ == "__main__":
    main()

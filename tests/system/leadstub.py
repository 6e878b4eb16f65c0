# A lead-context HTTP source for the campaign tests: GET /leads/{lead_id}.
#
# - 200 with the JSON context a test set (`stub.set(lead, ctx)`; ctx None
#   answers the body `null`), 404 for a lead it does not know;
#   `stub.set_raw(lead, body, status)` answers a body as is;
# - a delay per lead or for every lead (a wait in the handler thread that
#   stop() cuts short, so a "hung" source leaves no thread behind);
# - a failure mode per lead: answer 500 the next N calls (None: always);
# - counters: total calls, calls per lead, requests in flight now and at
#   most (peak), TCP connections accepted, all under one lock;
# - HTTPS (`LeadStub(tls=(certfile, keyfile))`, the handshake in the
#   connection's own thread) and a dual-stack listener (`host="::"`, for
#   clients that resolve a name such as localhost to ::1 or 127.0.0.1).
#
# The in-flight count drops *before* the response is written, so a client
# keeping exactly K lookups in flight (a new one starts when one has been
# answered) is never seen at K + 1.

import json
import socket
import ssl
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote

PREFIX = "/leads/"


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 512        # the default 5 would drop bursts

    def handle_error(self, request, client_address):
        # A client that timed out and closed the socket: BrokenPipe etc.;
        # a client refusing our certificate.
        pass

    def get_request(self):
        sock, addr = super().get_request()
        with self.stub._lock:
            self.stub.connections += 1
        return sock, addr


class _Server6(_Server):
    address_family = socket.AF_INET6

    def server_bind(self):
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"   # keep-alive, as libevent may reuse

    def log_message(self, fmt, *args):
        pass

    def setup(self):
        ctx = self.server.stub._ssl
        if ctx is not None:
            self.request.settimeout(10)
            try:
                self.request = ctx.wrap_socket(self.request, server_side=True)
            except (ssl.SSLError, OSError):
                with self.server.stub._lock:
                    self.server.stub.tls_failures += 1
                raise
            self.request.settimeout(None)
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _send(self, status, body):
        data = body if isinstance(body, bytes) else body.encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        # Headers and body in one write: two small writes would meet the
        # client's delayed ACK (Nagle) and add ~40 ms to every lookup.
        self._headers_buffer.append(b"\r\n")
        self._headers_buffer.append(data)
        self.flush_headers()

    def do_GET(self):
        stub = self.server.stub
        path = self.path.split("?", 1)[0]
        if not path.startswith(PREFIX):
            self._send(404, b'{"error":"no such path"}')
            return
        raw = path[len(PREFIX):]
        lead = unquote(raw, errors="strict")
        status, body, delay = stub._begin(lead, raw)
        try:
            if delay > 0:
                stub._stopping.wait(delay)
        finally:
            stub._end(lead)
        self._send(status, body)


class Raw:
    """A body served as is (not JSON-encoded), with its status."""

    def __init__(self, body, status=200):
        self.body = body if isinstance(body, bytes) else body.encode()
        self.status = status


class LeadStub:
    def __init__(self, tls=None, host="127.0.0.1"):
        self._lock = threading.Lock()
        self._ssl = None
        if tls is not None:
            self._ssl = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self._ssl.load_cert_chain(*tls)
        self.host = host
        self.connections = 0        # TCP connections accepted
        self.tls_failures = 0       # handshakes that failed
        self.contexts = {}          # lead id -> context (None: body null)
        self.delays = {}            # lead id -> seconds
        self.delay = 0.0            # every lead without its own delay
        self.failures = {}          # lead id -> remaining 500s (None: all)
        self.calls = Counter()      # lead id -> GETs
        self.total = 0
        self.inflight = 0
        self.peak = 0
        self.inflight_by_lead = Counter()
        self.raw_paths = []         # the encoded ids as requested
        self._server = None
        self._thread = None
        self.port = None
        self._stopping = threading.Event()

    # -- set-up by the test
    def set(self, lead, ctx):
        with self._lock:
            self.contexts[str(lead)] = ctx

    def set_raw(self, lead, body, status=200):
        """Answer `body` (bytes/str, sent as is) with `status`."""
        with self._lock:
            self.contexts[str(lead)] = Raw(body, status)

    def remove(self, lead):
        with self._lock:
            self.contexts.pop(str(lead), None)

    def set_delay(self, lead, seconds):
        with self._lock:
            self.delays[str(lead)] = seconds

    def fail(self, lead, times=None):
        """Answer 500 to the next `times` GETs of lead (None: for ever)."""
        with self._lock:
            self.failures[str(lead)] = times

    def reset_counters(self):
        with self._lock:
            self.calls.clear()
            self.total = 0
            self.peak = self.inflight
            self.raw_paths.clear()
            self.connections = 0
            self.tls_failures = 0

    # -- reading the counters
    def calls_for(self, lead):
        with self._lock:
            return self.calls[str(lead)]

    def in_flight(self, lead=None):
        with self._lock:
            if lead is None:
                return self.inflight
            return self.inflight_by_lead[str(lead)]

    def snapshot(self):
        with self._lock:
            return {"total": self.total, "peak": self.peak,
                    "inflight": self.inflight, "calls": dict(self.calls),
                    "connections": self.connections,
                    "tls_failures": self.tls_failures}

    # -- the handler's side
    def _begin(self, lead, raw):
        with self._lock:
            self.total += 1
            self.calls[lead] += 1
            self.raw_paths.append(raw)
            self.inflight += 1
            self.inflight_by_lead[lead] += 1
            self.peak = max(self.peak, self.inflight)
            delay = self.delays.get(lead, self.delay)
            if lead in self.failures:
                left = self.failures[lead]
                if left is None or left > 0:
                    if left is not None:
                        self.failures[lead] = left - 1
                    return 500, b'{"error":"injected"}', delay
            if lead not in self.contexts:
                return 404, b'{"error":"no such lead"}', delay
            ctx = self.contexts[lead]
            if isinstance(ctx, Raw):
                return ctx.status, ctx.body, delay
            return 200, json.dumps(ctx), delay

    def _end(self, lead):
        with self._lock:
            self.inflight -= 1
            self.inflight_by_lead[lead] -= 1

    # -- life cycle
    def start(self):
        self._stopping.clear()
        cls = _Server6 if ":" in self.host else _Server
        self._server = cls((self.host, 0), _Handler)
        self._server.stub = self
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05},
                                        name="leadstub", daemon=True)
        self._thread.start()
        return self

    def stop(self):
        self._stopping.set()            # hung handlers answer now
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(10)
            self._server = None

    @property
    def url(self):
        """The lead_context.url template for the worker."""
        return self.url_for("127.0.0.1")

    def url_for(self, host):
        """The template naming this stub by `host` (a name or address)."""
        scheme = "https" if self._ssl is not None else "http"
        return f"{scheme}://{host}:{self.port}{PREFIX}{{lead_id}}"

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

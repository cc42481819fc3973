"""A real HTTP reverse proxy in front of a real server that answers chosen requests with an error itself,
as a load balancer does while the server behind it restarts; every other request is forwarded unchanged."""
from __future__ import annotations

import http.client
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "host",
               "proxy-authorization", "proxy-authenticate", "content-length", "server", "date"}


class FaultProxy:
    """Forwards every request to `upstream`, except those matching a rule: answered with `status`."""

    def __init__(self, upstream: str):
        self.upstream = urllib.parse.urlsplit(upstream)
        self.rules: list[list] = []  # [method, path suffix, query substring, status, times left (-1: always)]
        self.faulted: list[str] = []
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def handle_any(self):
                proxy.serve(self)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = handle_any

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def fail(self, method: str, path: str, query: str = "", status: int = 503, times: int = -1) -> None:
        with self.lock:
            self.rules.append([method, path, query, status, times])

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def _rule(self, method: str, target: str):
        path, _, query = target.partition("?")
        query = urllib.parse.unquote_plus(query)
        with self.lock:
            for rule in self.rules:
                if rule[0] == method and path.endswith(rule[1]) and rule[2] in query and rule[4] != 0:
                    rule[4] -= rule[4] > 0
                    self.faulted.append(f"{method} {target}")
                    return rule
        return None

    @staticmethod
    def _body(h: BaseHTTPRequestHandler) -> bytes:
        if h.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while (size := int(h.rfile.readline().split(b";")[0], 16)):
                chunks.append(h.rfile.read(size))
                h.rfile.readline()
            h.rfile.readline()
            return b"".join(chunks)
        return h.rfile.read(int(h.headers.get("Content-Length") or 0))

    def serve(self, h: BaseHTTPRequestHandler) -> None:
        body = self._body(h)
        rule = self._rule(h.command, h.path)
        if rule:
            status, payload, headers = rule[3], b"<html><body>503 Service Unavailable</body></html>", []
        else:
            conn = http.client.HTTPConnection(self.upstream.hostname, self.upstream.port, timeout=120)
            conn.request(h.command, h.path, body=body,
                         headers={k: v for k, v in h.headers.items() if k.lower() not in HOP_HEADERS})
            resp = conn.getresponse()
            status, payload, headers = resp.status, resp.read(), resp.getheaders()
            conn.close()
        h.send_response(status)
        for key, value in headers:
            if key.lower() not in HOP_HEADERS:
                h.send_header(key, value)
        if rule:
            h.send_header("Content-Type", "text/html")
        h.send_header("Content-Length", str(len(payload)))
        h.end_headers()
        h.wfile.write(payload)

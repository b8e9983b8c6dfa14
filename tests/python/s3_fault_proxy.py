"""An unreliable network and S3 in front of a real S3-compatible server, for the job store's
fault tests: at random (seeded) it delays requests, answers 503 SlowDown, answers 409
ConditionalRequestConflict to create-only writes, and drops connections, some before the
request reaches the server and some after (the write landed; the client never hears it).
Each kind is dealt once to the first request it applies to, then the dice decide.

usage: s3_fault_proxy.py UPSTREAM_URL SEED
Prints "proxy on http://127.0.0.1:PORT" once listening; counts of each fault go to stderr at
exit (SIGTERM) and on every 200th request.
"""
import http.client
import http.server
import random
import signal
import socket
import sys
import threading
import time
import urllib.parse

UPSTREAM = urllib.parse.urlparse(sys.argv[1])
RNG = random.Random(int(sys.argv[2]))
LOCK = threading.Lock()
COUNTS = {"requests": 0, "delay": 0, "slowdown": 0, "conflict": 0, "drop_before": 0, "drop_after": 0}


# A value of `fault` that picks each kind (see relay()).
FORCE = {"delay": 0.05, "slowdown": 0.12, "conflict": 0.15, "drop_before": 0.18, "drop_after": 0.20}


def roll(create_only):
    """The dice, except that each kind of fault not seen yet is dealt to the next request it
    applies to: a short run meets every kind, whatever order the requests came in."""
    with LOCK:
        COUNTS["requests"] += 1
        extra = RNG.random()
        for kind, value in FORCE.items():
            if COUNTS[kind] == 0 and (kind != "conflict" or create_only):
                return value, extra
        return RNG.random(), extra


def count(what):
    with LOCK:
        COUNTS[what] += 1
        if COUNTS["requests"] % 200 == 0:
            print(f"faults {COUNTS}", file=sys.stderr, flush=True)


class Proxy(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def error(self, status, code, message):
        body = (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
                f"<Message>{message}</Message></Error>").encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def drop(self):
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def relay(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        create_only = self.command == "PUT" and self.headers.get("If-None-Match") == "*"
        fault, extra = roll(create_only)
        if fault < 0.10:
            count("delay")
            time.sleep(extra * 0.2)
        elif fault < 0.14:
            count("slowdown")
            return self.error(503, "SlowDown", "Please reduce your request rate.")
        elif fault < 0.17 and create_only:
            count("conflict")
            return self.error(409, "ConditionalRequestConflict",
                              "A conflicting conditional operation is currently in progress")
        elif fault < 0.19:
            count("drop_before")
            return self.drop()
        conn = http.client.HTTPConnection(UPSTREAM.hostname, UPSTREAM.port, timeout=60)
        headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
        headers["Host"] = UPSTREAM.netloc
        conn.request(self.command, self.path, body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        conn.close()
        if 0.19 <= fault < 0.21:
            count("drop_after")
            return self.drop()
        self.send_response(resp.status)
        for k, v in resp.getheaders():
            if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = relay


def main():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Proxy)
    server.daemon_threads = True

    def stop(*_):
        print(f"faults {COUNTS}", file=sys.stderr, flush=True)
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    print(f"proxy on http://127.0.0.1:{server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()

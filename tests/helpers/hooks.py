"""A webhook receiver on a free port that verifies every delivery with the `standardwebhooks`
package (the reference implementation a site's systems would use), and what it got."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks import Webhook as Verifier

from tests.helpers.servers import free_port, wait_until


@dataclass
class Got:
    msg_id: str
    timestamp: int
    body: dict
    at: float
    answered: int

    @property
    def type(self) -> str:
        return self.body["type"]

    @property
    def data(self) -> dict:
        return self.body["data"]


class Receiver:
    """Answers with the next of `answers` (then `status`); records what verified and what
    did not. `hang` seconds of sleep before answering simulate a slow receiver."""

    def __init__(self, secret: str | None = None):
        self.secret = secret
        self.got: list[Got] = []
        self.unverified: list[str] = []
        self.answers: list[int] = []
        self.status = 200
        self.hang = 0.0
        self.lock = threading.Lock()
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                headers = {k.lower(): v for k, v in self.headers.items()}
                with hook.lock:
                    status = hook.answers.pop(0) if hook.answers else hook.status
                try:
                    payload = Verifier(hook.secret).verify(body, headers)
                except Exception as e:  # noqa: BLE001 - recorded; the test fails on it
                    with hook.lock:
                        hook.unverified.append(f"{type(e).__name__}: {e}")
                    status = 400
                else:
                    got = Got(headers["webhook-id"], int(headers["webhook-timestamp"]),
                              payload, time.monotonic(), status)
                    with hook.lock:
                        hook.got.append(got)
                if hook.hang:
                    time.sleep(hook.hang)
                self.send_response(status)
                self.send_header("Content-Type", "text/plain")
                self.end_headers()
                self.wfile.write(f"answered {status}".encode())

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.port = self.server.server_port
        self.url = f"http://127.0.0.1:{self.port}/hooks"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> Receiver:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def of_type(self, event_type: str) -> list[Got]:
        with self.lock:
            return [g for g in self.got if g.type == event_type and g.answered < 300]

    def wait_for(self, event_type: str, count: int = 1, timeout: float = 30.0) -> list[Got]:
        wait_until(lambda: len(self.of_type(event_type)) >= count, timeout,
                   what=f"{count} {event_type} webhook(s); got {self.types()}, "
                        f"unverified {self.unverified}")
        return self.of_type(event_type)

    def types(self) -> list[str]:
        with self.lock:
            return [g.type for g in self.got]


def body_json(got: Got) -> str:
    return json.dumps(got.body, sort_keys=True)

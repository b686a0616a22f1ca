"""An OpenAI-compatible server of the tests' own, on 127.0.0.1: chat completions, and the Batch API (files,
batches) with batches that finish, fail some lines, expire half done or are cancelled. It records what it was
asked and how many requests were in flight at once, and can rate-limit, refuse or die on command."""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_IDS = itertools.count(1)


@dataclass
class Behaviour:
    latency: float = 0.0  # seconds each chat completion takes
    rate_limit_first: int = 0  # the first N chat requests get 429 with retry-after
    retry_after: str = "1"
    remaining_zero_at: int = 0  # the Nth answer says x-ratelimit-remaining-requests: 0 (reset `reset`)
    reset: str = "1s"
    die_after: int | None = None  # after N answered chat requests the server closes every connection
    # every chat request: endless (a body that never ends), huge (a 200 MB body), trickle (one byte a second),
    # redirect (302 elsewhere); or 429 once with this Retry-After value ("retry:-5", "retry:nan", ...)
    hostile: str | None = None
    # Batch API: what a batch does when polled the `polls_to_finish`-th time
    batch_end: str = "completed"  # the first batch: completed | expired | cancelled | failed
    later_batch_end: str | None = None  # the batches after it (None: as the first)
    batch_answer_share: float = 1.0  # share of the first batch's lines answered when it ends (the rest left out)
    batch_error_every: int = 0  # every Nth line answered with a 500 error line instead
    polls_to_finish: int = 1


@dataclass
class Record:
    chat: list[tuple[float, str]] = field(default_factory=list)  # (time, last message) of every chat request
    answered: int = 0
    answered_texts: list[str] = field(default_factory=list)  # the last message of every chat request answered
    max_in_flight: int = 0
    in_flight: int = 0
    bytes_sent: int = 0  # of hostile bodies, until the client stopped reading
    auth: Counter = field(default_factory=Counter)
    submitted_ids: list[str] = field(default_factory=list)  # custom_ids of every batch line submitted
    batches: dict[str, dict[str, Any]] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)


def answer_body(text: str) -> dict[str, Any]:
    return {
        "choices": [{"message": {"content": f"answer to {text}"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 11, "completion_tokens": 3},
    }


class FakeProvider:
    def __init__(self, behaviour: Behaviour | None = None):
        self.behaviour = behaviour or Behaviour()
        self.record = Record()
        self.lock = threading.Lock()
        self.dead = False
        self.ids = _IDS  # unique across servers, as a provider's are
        provider = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                provider.handle(self, "POST")

            def do_GET(self) -> None:
                provider.handle(self, "GET")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self) -> FakeProvider:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self.dead = True
        self.httpd.shutdown()
        self.httpd.server_close()

    # --- dispatch ---

    def handle(self, h: BaseHTTPRequestHandler, method: str) -> None:
        if self.dead:
            h.close_connection = True
            return
        length = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(length) if length else b""
        self.record.auth[h.headers.get("Authorization", "")] += 1
        path = h.path.split("/v1", 1)[-1]
        if method == "POST" and path == "/chat/completions":
            return self.chat(h, json.loads(raw))
        if method == "POST" and path == "/files":
            return self.upload(h, raw)
        if method == "POST" and path == "/batches":
            return self.create_batch(h, json.loads(raw))
        if method == "GET" and path.startswith("/batches/"):
            return self.poll(h, path.rsplit("/", 1)[1])
        if method == "GET" and path.startswith("/files/") and path.endswith("/content"):
            return self.send(h, 200, self.record.files[path.split("/")[2]], "application/jsonl")
        return self.send(h, 404, b'{"error": "not found"}')

    def send(
        self, h: BaseHTTPRequestHandler, status: int, payload: bytes, kind: str = "application/json", headers=None
    ) -> None:
        h.send_response(status)
        h.send_header("Content-Type", kind)
        h.send_header("Content-Length", str(len(payload)))
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(payload)

    def chat(self, h: BaseHTTPRequestHandler, body: dict[str, Any]) -> None:
        b = self.behaviour
        text = body["messages"][-1]["content"]
        with self.lock:
            n = len(self.record.chat)
            self.record.chat.append((time.monotonic(), text))
            if b.die_after is not None and self.record.answered >= b.die_after:
                self.dead = True
            if self.dead:
                h.close_connection = True
                return
            self.record.in_flight += 1
            self.record.max_in_flight = max(self.record.max_in_flight, self.record.in_flight)
        try:
            if b.hostile:
                return self.misbehave(h, b.hostile, n)
            if n < b.rate_limit_first:
                return self.send(h, 429, b'{"error": "rate limited"}', headers={"Retry-After": b.retry_after})
            time.sleep(b.latency)
            with self.lock:
                self.record.answered += 1
                self.record.answered_texts.append(text)
                headers = {}
                if b.remaining_zero_at and self.record.answered == b.remaining_zero_at:
                    headers = {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": b.reset}
            return self.send(h, 200, json.dumps(answer_body(text)).encode(), headers=headers)
        finally:
            with self.lock:
                self.record.in_flight -= 1

    def misbehave(self, h: BaseHTTPRequestHandler, how: str, n: int) -> None:
        if how.startswith("retry:"):
            if n == 0:
                return self.send(h, 429, b"{}", headers={"Retry-After": how.split(":", 1)[1]})
            with self.lock:
                self.record.answered += 1
            return self.send(h, 200, json.dumps(answer_body("late")).encode())
        if how == "redirect":
            return self.send(h, 302, b"", headers={"Location": "http://127.0.0.1:9/steal"})
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        if how == "huge":
            h.send_header("Content-Length", str(200 * 2**20))
        elif how == "trickle":
            h.send_header("Content-Length", "100000")
        else:
            h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()
        block = b"x" * 65536
        try:
            while not self.dead:
                if how == "trickle":
                    h.wfile.write(b"{")
                    h.wfile.flush()
                    self.record.bytes_sent += 1
                    time.sleep(1)
                elif how == "huge":
                    h.wfile.write(block)
                    self.record.bytes_sent += len(block)
                    if self.record.bytes_sent >= 200 * 2**20:
                        return
                else:
                    h.wfile.write(b"%x\r\n%s\r\n" % (len(block), block))
                    self.record.bytes_sent += len(block)
        except OSError:
            h.close_connection = True  # the client stopped reading

    # --- Batch API ---

    def upload(self, h: BaseHTTPRequestHandler, raw: bytes) -> None:
        head = f"Content-Type: {h.headers['Content-Type']}\r\n\r\n".encode()
        message = BytesParser(policy=HTTP).parsebytes(head + raw)
        content = next(p.get_payload(decode=True) for p in message.iter_parts() if p.get_filename())
        file_id = f"file-{next(self.ids)}"
        self.record.files[file_id] = content
        self.send(h, 200, json.dumps({"id": file_id, "purpose": "batch"}).encode())

    def create_batch(self, h: BaseHTTPRequestHandler, body: dict[str, Any]) -> None:
        lines = [json.loads(x) for x in self.record.files[body["input_file_id"]].decode().splitlines() if x]
        self.record.submitted_ids += [x["custom_id"] for x in lines]
        batch_id = f"batch-{next(self.ids)}"
        self.record.batches[batch_id] = {"id": batch_id, "status": "in_progress", "lines": lines, "polls": 0}
        self.send(h, 200, json.dumps({"id": batch_id, "status": "validating"}).encode())

    def poll(self, h: BaseHTTPRequestHandler, batch_id: str) -> None:
        b = self.behaviour
        batch = self.record.batches[batch_id]
        batch["polls"] += 1
        if batch["status"] == "in_progress" and batch["polls"] >= b.polls_to_finish:
            self.finish(batch)
        public = {k: v for k, v in batch.items() if k not in ("lines", "polls")}
        self.send(h, 200, json.dumps(public).encode())

    def finish(self, batch: dict[str, Any]) -> None:
        b = self.behaviour
        lines = batch["lines"]
        first = batch["id"] == next(iter(self.record.batches))
        batch["status"] = b.batch_end if first or b.later_batch_end is None else b.later_batch_end
        if batch["status"] == "failed":
            batch["errors"] = {"data": [{"message": "invalid input file"}]}
            return
        answered = lines[: round(len(lines) * (b.batch_answer_share if first else 1.0))]
        out, err = [], []
        for i, line in enumerate(answered, 1):
            if b.batch_error_every and i % b.batch_error_every == 0:
                err.append(
                    {"custom_id": line["custom_id"], "response": {"status_code": 500, "body": {}}, "error": None}
                )
                continue
            text = line["body"]["messages"][-1]["content"]
            response = {"status_code": 200, "request_id": f"r{i}", "body": answer_body(text)}
            out.append({"id": f"line-{i}", "custom_id": line["custom_id"], "response": response, "error": None})
        for name, rows in (("output_file_id", out), ("error_file_id", err)):
            if rows:
                file_id = f"file-{next(self.ids)}"
                self.record.files[file_id] = "".join(json.dumps(r) + "\n" for r in rows).encode()
                batch[name] = file_id
        batch["request_counts"] = {"total": len(lines), "completed": len(out), "failed": len(err)}

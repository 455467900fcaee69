"""A small, deterministic OpenAI-compatible HTTP server for tests and the offline demo.

It is a real `http.server.ThreadingHTTPServer` on 127.0.0.1, so the code under test goes through
the official `openai` client, real sockets and real JSON, and it can inject the faults a paid
endpoint produces: 500s, 429s with Retry-After, hangs past the client timeout, truncated JSON
bodies and answers that do not parse. Every request body is recorded so tests can count them.

Run it as ``python -m deita_train.testing.openai_stub --port 8765`` for the demo.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


Responder = Callable[[dict], "str | dict | None"]

FAULT_KINDS = ("500", "429", "timeout", "truncated_json", "garbage_text")


@dataclass
class Fault:
    """An injected fault.

    It applies to requests whose body satisfies `match` (all requests when None), starting at the
    `nth` matching request (0-based) and firing `times` times (every matching request from then on
    when None). ``"429"`` sends `retry_after` seconds in Retry-After; ``"timeout"`` holds the
    request for `sleep` seconds (or until the server stops) before answering; ``"truncated_json"``
    sends a 200 whose JSON body is cut in half; ``"garbage_text"`` sends a well-formed 200 whose
    assistant text is `text`.
    """

    kind: str
    match: Callable[[dict], bool] | None = None
    nth: int = 0
    times: int | None = 1
    retry_after: float = 0.0
    sleep: float = 5.0
    text: str = "I am not able to follow the requested format."

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"Fault.kind must be one of {FAULT_KINDS}, got {self.kind!r}")
        self.seen = 0
        self.fired = 0


def compose_responders(*responders: Responder) -> Responder:
    """The first responder that returns something other than None answers the request."""

    def composed(body: dict) -> str | dict | None:
        for responder in responders:
            out = responder(body)
            if out is not None:
                return out
        return None

    return composed


def last_user_text(body: dict) -> str:
    """The text of the last user message of a chat request ('' when there is none)."""
    for message in reversed(body.get("messages") or []):
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, list):  # content parts
                return "".join(p.get("text", "") for p in content if isinstance(p, dict))
            return str(content or "")
    return ""


def echo_responder(body: dict) -> str:
    """Fallback for anything else: a short deterministic answer derived from the request."""
    text = last_user_text(body)
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:8]
    words = text.split()
    return f"Stub answer {digest}: " + " ".join(words[:12])


# --------------------------------------------------------------------------- EVOL responder


_EVOL_SUFFIXES = {
    "constraints": ("Keep the answer under 150 words.", "Use exactly three bullet points.", "Cite one example."),
    "deepening": ("Also explain why this matters.", "Discuss one common misconception too."),
    "concretizing": ("Focus on a small bakery as the example.", "Use a 2020 city bus timetable as the case."),
    "reasoning": ("Show each reasoning step before the final answer.", "Justify every step you take."),
    "complicate_input": ("Input: [3, 1, 4, 1, 5, 9, 2, 6] with two missing values.",),
}
_QUALITY_SUFFIXES = (
    "In short, the key point is to start small and check the result.",
    "For example, you can try it first on a tiny case before scaling up.",
    "A useful habit is to write down each step so mistakes are easy to spot.",
    "This also helps you explain the reasoning to someone else.",
)
_ITEM_RE = re.compile(r"^\[(\d+)\] ", re.MULTILINE)


def _pick(options: Sequence[str], text: str) -> str:
    return options[int(hashlib.sha256(text.encode("utf-8")).hexdigest(), 16) % len(options)]


def _between(text: str, start: str, end: str) -> str | None:
    i = text.find(start)
    if i < 0:
        return None
    j = text.find(end, i + len(start))
    return text[i + len(start) : j if j >= 0 else len(text)].strip()


def _numbered_items(block: str) -> list[str]:
    """Split '[1] a\\n[2] b ...' into ['a', 'b', ...], following the 1, 2, 3 ... sequence."""
    marks = []
    for m in _ITEM_RE.finditer(block):
        if int(m.group(1)) == len(marks) + 1:
            marks.append(m)
    ends = [m.start() for m in marks[1:]] + [len(block)]
    return [block[m.end() : end].strip() for m, end in zip(marks, ends)]


def _length_scores(items: Sequence[str]) -> list[int]:
    """Score 1..6 by length rank (longer = higher), ties broken by position: deterministic."""
    order = sorted(range(len(items)), key=lambda i: (len(items[i]), i))
    scores = [0] * len(items)
    for rank, i in enumerate(order):
        scores[i] = min(6, rank + 1)
    return scores


def evol_responder(body: dict) -> str | None:
    """Deterministic answers to the EVOL prompts of `deita_train.evol`; None for anything else.

    Evolving appends a mutation-specific sentence to the given instruction, rewriting appends a
    sentence to the given response, and ranking scores items by length, so evolved (longer)
    variants rank higher, as a real judge tends to.
    """
    from deita_train import evol

    text = last_user_text(body)
    if text.startswith(evol.PROMPT_REWRITER_HEAD):
        given = _between(text, evol.GIVEN_PROMPT_MARK, evol.REWRITTEN_PROMPT_MARK)
        if given is None:
            return None
        mutation = next((name for name, method in evol.COMPLEXITY_METHODS.items() if method in text), "constraints")
        return f"{given} {_pick(_EVOL_SUFFIXES[mutation], given)}"
    if text.startswith(evol.RESPONSE_REWRITER_HEAD):
        given = _between(text, evol.GIVEN_RESPONSE_MARK, evol.REWRITTEN_RESPONSE_MARK)
        if given is None:
            return None
        return f"{given} {_pick(_QUALITY_SUFFIXES, given)}"
    if text.startswith(evol.COMPLEXITY_RANKING_HEAD):
        items = _numbered_items(text.split(evol.RANKING_FORMAT_TAIL, 1)[-1])
    elif text.startswith(evol.QUALITY_RANKING_HEAD):
        items = _numbered_items(text.split(evol.RESPONSE_LIST_MARK, 1)[-1])
    else:
        return None
    if not items:
        return None
    return "\n".join(f"[{i}] Score: {s}" for i, s in enumerate(_length_scores(items), start=1))


def default_responder() -> Responder:
    """What the command-line server answers: EVOL prompts, judge prompts when that module exists, else echo."""
    responders: list[Responder] = [evol_responder]
    try:
        from deita_train.testing.judge_stub import judge_responder  # type: ignore[import-not-found]

        responders.append(judge_responder)
    except ImportError:
        pass
    responders.append(echo_responder)
    return compose_responders(*responders)


# --------------------------------------------------------------------------- server


def _usage(body: dict, text: str, n: int) -> dict:
    """Whitespace token counts: deterministic and good enough for accounting tests."""
    prompt_tokens = 0
    for message in body.get("messages") or []:
        content = message.get("content")
        prompt_tokens += len(str(content if isinstance(content, str) else json.dumps(content)).split())
    completion_tokens = max(1, len(text.split())) * n
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet by default
        if self.server.verbose:
            super().log_message(format, *args)

    def _send(self, status: int, payload: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)
        self.wfile.flush()

    def _error(self, status: int, message: str, kind: str, headers: dict[str, str] | None = None) -> None:
        body = {"error": {"message": message, "type": kind, "param": None, "code": None}}
        self._send(status, json.dumps(body).encode("utf-8"), headers)

    def do_GET(self) -> None:  # noqa: N802 - http.server naming
        if self.path.rstrip("/") in ("/v1/models", "/models"):
            models = [{"id": self.server.model_id, "object": "model", "created": 0, "owned_by": "deita-train"}]
            self._send(200, json.dumps({"object": "list", "data": models}).encode("utf-8"))
        else:
            self._error(404, f"no route {self.path}", "invalid_request_error")

    def do_POST(self) -> None:  # noqa: N802 - http.server naming
        length = int(self.headers.get("Content-Length") or 0)
        data = self.rfile.read(length)
        if self.path.rstrip("/") not in ("/v1/chat/completions", "/chat/completions"):
            self._error(404, f"no route {self.path}", "invalid_request_error")
            return
        try:
            body = json.loads(data)
        except ValueError:
            self._error(400, "request body is not JSON", "invalid_request_error")
            return
        stub = self.server.stub
        fault = stub._record(body)
        try:
            self._answer(body, fault)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeout) or was killed: nothing to answer

    def _answer(self, body: dict, fault: Fault | None) -> None:
        stub = self.server.stub
        if fault is not None and fault.kind == "500":
            self._error(500, "injected server error", "server_error")
            return
        if fault is not None and fault.kind == "429":
            self._error(429, "injected rate limit", "rate_limit_error", {"Retry-After": f"{fault.retry_after:g}"})
            return
        if fault is not None and fault.kind == "timeout":
            if stub._stopping.wait(fault.sleep):
                return
        try:
            out = stub.responder(body)
        except Exception as e:  # a broken responder is a test bug: make it loud, not retryable
            self._error(400, f"stub responder raised {type(e).__name__}: {e}", "invalid_request_error")
            return
        if out is None:
            self._error(400, "stub has no answer for this request", "invalid_request_error")
            return
        if isinstance(out, str):
            content, logprobs, finish_reason = out, None, "stop"
        else:
            content, logprobs, finish_reason = (
                str(out["content"]),
                out.get("logprobs"),
                out.get("finish_reason", "stop"),
            )
        if fault is not None and fault.kind == "garbage_text":
            content, logprobs, finish_reason = fault.text, None, "stop"
        n = int(body.get("n") or 1)
        choices = []
        for i in range(n):
            choice: dict[str, Any] = {
                "index": i,
                "message": {"role": "assistant", "content": content},
                "logprobs": logprobs,
                "finish_reason": finish_reason,
            }
            choices.append(choice)
        digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode("utf-8")).hexdigest()[:24]
        response = {
            "id": f"chatcmpl-{digest}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model") or self.server.model_id,
            "choices": choices,
            "usage": _usage(body, content, n),
        }
        payload = json.dumps(response).encode("utf-8")
        if fault is not None and fault.kind == "truncated_json":
            payload = payload[: len(payload) // 2]
        else:  # recorded before sending, so a client that has its answer always finds it counted
            stub._served(body)
        self._send(200, payload)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    stub: StubOpenAIServer
    verbose: bool = False
    model_id: str = "stub-model"


class StubOpenAIServer:
    """OpenAI-compatible chat-completions server on 127.0.0.1, in a background thread.

    ``responder(body)`` gets the parsed request and returns the assistant text, or
    ``{"content": str, "logprobs": {...}, "finish_reason": "stop"}`` (logprobs and finish_reason
    optional), or None (answered with a 400). Use as a context
    manager, or call `start()` / `stop()`.
    """

    def __init__(
        self,
        responder: Responder | None = None,
        faults: Sequence[Fault] = (),
        host: str = "127.0.0.1",
        port: int = 0,
        model_id: str = "stub-model",
        verbose: bool = False,
    ) -> None:
        self.responder = responder or default_responder()
        self.faults = list(faults)
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._requests: list[dict] = []
        self._answered: list[dict] = []
        self._faults_fired: list[str] = []
        self._httpd = _Server((host, port), _Handler)
        self._httpd.stub = self
        self._httpd.verbose = verbose
        self._httpd.model_id = model_id
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> StubOpenAIServer:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="openai-stub", daemon=True
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join()
            self._thread = None
        self._httpd.server_close()

    def __enter__(self) -> StubOpenAIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---------------------------------------------------------------- bookkeeping

    def _record(self, body: dict) -> Fault | None:
        """Log the request and decide (under the lock, so counts are exact) which fault, if any, it gets."""
        with self._lock:
            self._requests.append(body)
            chosen = None
            for fault in self.faults:
                if fault.match is not None and not fault.match(body):
                    continue
                index = fault.seen
                fault.seen += 1
                if chosen is None and index >= fault.nth and (fault.times is None or fault.fired < fault.times):
                    fault.fired += 1
                    chosen = fault
            if chosen is not None:
                self._faults_fired.append(chosen.kind)
            return chosen

    def _served(self, body: dict) -> None:
        with self._lock:
            self._answered.append(body)

    @property
    def request_count(self) -> int:
        """Chat-completion requests received, faulted ones included."""
        with self._lock:
            return len(self._requests)

    @property
    def requests(self) -> list[dict]:
        """A copy of every chat-completion request body received, in arrival order."""
        with self._lock:
            return list(self._requests)

    @property
    def answered(self) -> list[dict]:
        """Bodies answered with a well-formed 200 (what a paid endpoint bills), counted as the answer goes out."""
        with self._lock:
            return list(self._answered)

    @property
    def faults_fired(self) -> list[str]:
        with self._lock:
            return list(self._faults_fired)

    def count_for(self, predicate: Callable[[dict], bool]) -> int:
        """How many received requests satisfy `predicate`."""
        return sum(1 for body in self.requests if predicate(body))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Deterministic OpenAI-compatible stub server (EVOL, judge, echo).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765, help="0 picks a free port")
    parser.add_argument("--model-id", default="stub-model")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    server = StubOpenAIServer(host=args.host, port=args.port, model_id=args.model_id, verbose=args.verbose)
    print(f"serving {server.base_url.replace('127.0.0.1', args.host)}", flush=True)
    try:
        server._httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server._httpd.server_close()
    sys.exit(0)


if __name__ == "__main__":
    main()

"""LLMClient against a real HTTP server on 127.0.0.1 (the stub), with injected faults."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from deita_train import llm
from deita_train.llm import Completion, LLMClient, LLMConfig, LLMError
from deita_train.testing.openai_stub import (
    Fault,
    StubOpenAIServer,
    compose_responders,
    echo_responder,
    evol_responder,
    last_user_text,
)


def _answer(body: dict) -> str:
    return "answer to: " + last_user_text(body)


def _msgs(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


@pytest.fixture
def serve():
    """serve(responder=..., faults=...) -> a started StubOpenAIServer, stopped after the test."""
    servers: list[StubOpenAIServer] = []

    def start(responder=_answer, faults=()) -> StubOpenAIServer:
        server = StubOpenAIServer(responder, faults=faults).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def make_client(tmp_path: Path):
    def make(server: StubOpenAIServer, **overrides) -> LLMClient:
        cfg = dict(
            model="stub-model",
            base_url=server.base_url,
            max_retries=3,
            timeout=30.0,
            backoff_base=0.001,
            backoff_max=0.01,
            cache_dir=str(tmp_path / "cache"),
        )
        cfg.update(overrides)
        return LLMClient(LLMConfig(**cfg))

    return make


@pytest.fixture
def delays(monkeypatch) -> list[float]:
    """Record backoff delays instead of sleeping them."""
    seen: list[float] = []
    monkeypatch.setattr(llm, "_sleep", seen.append)
    return seen


def test_completion_then_cache_hit_sends_nothing(serve, make_client):
    server = serve()
    client = make_client(server)
    first = client.complete(_msgs("hello"), temperature=0.0, max_tokens=16)
    assert isinstance(first, Completion)
    assert first.text == "answer to: hello" and not first.cached
    assert first.raw["object"] == "chat.completion" and first.usage["completion_tokens"] == 3
    assert server.request_count == 1
    assert server.requests[0]["temperature"] == 0.0 and server.requests[0]["max_tokens"] == 16

    again = make_client(server).complete(_msgs("hello"), temperature=0.0, max_tokens=16)  # a new client: disk cache
    assert again.cached and again.text == first.text and again.key == first.key
    assert server.request_count == 1
    stats = client.stats
    assert stats["requests_sent"] == 1 and stats["cache_hits"] == 0 and stats["prompt_tokens"] == 1


def test_request_key_is_canonical_and_covers_everything(serve, make_client):
    client = make_client(serve())
    k = client.request_key(_msgs("a"), temperature=0.5, max_tokens=8)
    assert k == client.request_key(_msgs("a"), max_tokens=8, temperature=0.5)
    assert len(k) == 64
    assert k != client.request_key(_msgs("a"), temperature=0.6, max_tokens=8)
    assert k != client.request_key(_msgs("b"), temperature=0.5, max_tokens=8)
    other = LLMClient(LLMConfig(model="other-model", base_url="http://127.0.0.1:9/v1"))
    assert k != other.request_key(_msgs("a"), temperature=0.5, max_tokens=8)


@pytest.mark.parametrize(
    "fault",
    [
        Fault("500", times=2),
        Fault("429", times=2, retry_after=0.0),
        Fault("truncated_json", times=2),
    ],
    ids=lambda f: f.kind,
)
def test_retryable_faults_are_retried_and_counted(serve, make_client, delays, fault):
    server = serve(faults=[fault])
    client = make_client(server)
    out = client.complete(_msgs("x"))
    assert out.text == "answer to: x"
    assert server.request_count == 3 and server.faults_fired == [fault.kind] * 2
    stats = client.stats
    assert stats["requests_sent"] == 3 and stats["retries"] == 2 and stats["failures"] == 0
    assert len(delays) == 2
    assert stats["completion_tokens"] == 3  # only the answered attempt is billed


def test_timeout_is_retried(serve, make_client, delays):
    server = serve(faults=[Fault("timeout", sleep=30.0)])
    client = make_client(server, timeout=1.0)
    assert client.complete(_msgs("slow")).text == "answer to: slow"
    assert server.request_count == 2 and client.stats["retries"] == 1


def test_retry_after_is_honoured(serve, make_client, delays):
    server = serve(faults=[Fault("429", times=1, retry_after=7.0)])
    client = make_client(server, backoff_max=30.0)
    client.complete(_msgs("x"))
    assert len(delays) == 1 and delays[0] >= 7.0


def test_backoff_grows_exponentially_and_is_capped(serve, make_client, delays):
    server = serve(faults=[Fault("500", times=5)])
    client = make_client(server, max_retries=5, backoff_base=1.0, backoff_max=4.0)
    client.complete(_msgs("x"))
    assert len(delays) == 5
    for attempt, delay in enumerate(delays, start=1):
        cap = min(4.0, 2 ** (attempt - 1))
        assert cap / 2 <= delay <= cap  # jitter in the upper half of the exponential step


def test_exhausted_retries_raise_and_are_not_cached(serve, make_client, delays):
    server = serve(faults=[Fault("500", times=None)])
    client = make_client(server, max_retries=2)
    with pytest.raises(LLMError) as info:
        client.complete(_msgs("x"))
    err = info.value
    assert err.attempts == 3 and err.status == 500 and "500" in err.reason
    assert err.key == client.request_key(_msgs("x"))
    assert server.request_count == 3 and client.stats["failures"] == 1
    server.faults.clear()
    assert not client.complete(_msgs("x")).cached  # the failure was not cached: it is sent again
    assert server.request_count == 4


def test_client_errors_are_not_retried(serve, make_client, delays):
    server = serve(responder=lambda body: None)  # the stub answers 400
    client = make_client(server)
    with pytest.raises(LLMError) as info:
        client.complete(_msgs("x"))
    assert info.value.status == 400 and info.value.attempts == 1
    assert server.request_count == 1 and delays == []


def test_garbage_text_is_a_successful_completion(serve, make_client):
    server = serve(faults=[Fault("garbage_text", text="no idea")])
    out = make_client(server).complete(_msgs("x"))
    assert out.text == "no idea"  # the LLM layer cannot judge content; the pipeline parses it


def test_complete_many_keeps_order_bounds_concurrency_and_isolates_failures(serve, make_client, delays):
    lock = threading.Lock()
    state = {"now": 0, "peak": 0}

    def slow(body: dict) -> str | None:
        with lock:
            state["now"] += 1
            state["peak"] = max(state["peak"], state["now"])
        time.sleep(0.02)
        with lock:
            state["now"] -= 1
        text = last_user_text(body)
        return None if text == "bad" else text.upper()

    server = serve(responder=slow)
    client = make_client(server, max_concurrency=3)
    texts = [f"item {i}" for i in range(20)] + ["bad"]
    results = client.complete_many([{"messages": _msgs(t), "temperature": 0.0} for t in texts], desc="t")
    assert [r.text for r in results[:-1]] == [t.upper() for t in texts[:-1]]
    assert isinstance(results[-1], LLMError) and results[-1].status == 400
    assert 1 <= state["peak"] <= 3


def test_identical_requests_are_sent_once(serve, make_client):
    server = serve()
    client = make_client(server, max_concurrency=4)
    results = client.complete_many([{"messages": _msgs("same")}] * 6)
    assert {r.text for r in results} == {"answer to: same"}
    assert server.request_count == 1
    assert client.stats["cache_hits"] == 5


def test_logprobs_and_params_pass_through(serve, make_client):
    logprobs = {"content": [{"token": "4", "logprob": -0.1, "bytes": [52], "top_logprobs": []}]}
    server = serve(responder=lambda body: {"content": "4", "logprobs": logprobs})
    out = make_client(server).complete(_msgs("score"), logprobs=True, top_logprobs=5, seed=3, n=2)
    assert out.raw["choices"][0]["logprobs"] == logprobs
    assert len(out.raw["choices"]) == 2
    body = server.requests[0]
    assert body["logprobs"] is True and body["top_logprobs"] == 5 and body["seed"] == 3 and body["n"] == 2


def test_cost_accounting(serve, make_client):
    server = serve()
    client = make_client(server, price_per_1m_prompt_tokens=2.0, price_per_1m_completion_tokens=10.0)
    client.complete(_msgs("one two three"))
    client.complete(_msgs("one two three"))  # cache hit: free
    s = client.stats
    assert (s["prompt_tokens"], s["completion_tokens"]) == (3, 5)
    assert s["cost_usd"] == pytest.approx((3 * 2.0 + 5 * 10.0) / 1e6)


def test_api_key_is_sent_but_never_stored(serve, make_client, monkeypatch, tmp_path):
    seen: list[str] = []
    server = serve()
    orig = server._httpd.RequestHandlerClass.do_POST

    def spy(handler):
        seen.append(handler.headers.get("Authorization", ""))
        orig(handler)

    monkeypatch.setattr(server._httpd.RequestHandlerClass, "do_POST", spy)
    monkeypatch.setenv("DEITA_TEST_KEY", "sk-test-secret-123")
    client = make_client(server, api_key_env="DEITA_TEST_KEY")
    client.complete(_msgs("x"))
    assert seen == ["Bearer sk-test-secret-123"]
    assert "sk-test-secret-123" not in repr(client.config)
    cached = "".join(p.read_text() for p in (tmp_path / "cache").rglob("*.json"))
    assert cached and "sk-test-secret-123" not in cached
    monkeypatch.delenv("DEITA_TEST_KEY")
    make_client(server, api_key_env="DEITA_TEST_KEY").complete(_msgs("y"))  # unset: placeholder key
    assert seen[-1] == "Bearer EMPTY"


def test_base_url_from_environment(serve, monkeypatch, tmp_path):
    server = serve()
    monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
    client = LLMClient(LLMConfig(model="stub-model", cache_dir=str(tmp_path / "c")))
    assert client.complete(_msgs("env")).text == "answer to: env"


def test_unreadable_cache_entry_is_resent(serve, make_client, tmp_path):
    server = serve()
    client = make_client(server)
    key = client.complete(_msgs("x")).key
    path = next((tmp_path / "cache").rglob(f"{key}.json"))
    path.write_text("{not json")
    assert not client.complete(_msgs("x")).cached
    assert server.request_count == 2
    assert json.loads(path.read_text())["key"] == key


def test_stub_models_route_fault_targeting_and_responders(serve):
    import urllib.request

    server = serve(
        responder=compose_responders(evol_responder, echo_responder),
        faults=[Fault("500", match=lambda b: "target" in last_user_text(b), nth=1, times=1)],
    )
    with urllib.request.urlopen(server.base_url + "/models") as r:
        assert json.load(r)["data"][0]["id"] == "stub-model"
    client = LLMClient(LLMConfig(model="stub-model", base_url=server.base_url, max_retries=0))
    client.complete(_msgs("target one"))  # first matching request: nth=1 spares it
    client.complete(_msgs("other"))
    with pytest.raises(LLMError):
        client.complete(_msgs("target two"))  # second matching request: fault fires
    client.complete(_msgs("target three"))  # times=1: spent
    assert server.faults_fired == ["500"]
    assert server.count_for(lambda b: "target" in last_user_text(b)) == 3
    assert server.request_count == 4 and len(server.answered) == 3
    with pytest.raises(ValueError, match="kind"):
        Fault("teapot")


def test_connection_errors_are_retried_then_reported(delays, tmp_path):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = LLMClient(LLMConfig(model="m", base_url=f"http://127.0.0.1:{port}/v1", max_retries=2, timeout=2.0))
    with pytest.raises(LLMError) as info:
        client.complete(_msgs("x"))
    assert info.value.attempts == 3 and info.value.status is None and "connection" in info.value.reason
    assert len(delays) == 2 and client.stats["failures"] == 1


def test_stub_runs_from_the_command_line(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-m", "deita_train.testing.openai_stub", "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    try:
        line = proc.stdout.readline().strip()
        assert line.startswith("serving http://127.0.0.1:")
        client = LLMClient(LLMConfig(model="stub-model", base_url=line.split()[-1], cache_dir=str(tmp_path)))
        ranking = client.complete(
            _msgs(
                "Ranking the following questions according to the difficulty and complexity. "
                "Score 1-5.\n[1] Score: 1\n[2] Score: 2\n...\n[1] short\n[2] a longer one\n"
            )
        )
        assert ranking.text == "[1] Score: 1\n[2] Score: 2"
        assert client.complete(_msgs("anything else")).text.startswith("Stub answer")
    finally:
        proc.terminate()
        proc.wait()

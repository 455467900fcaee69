"""One client for every OpenAI-compatible chat-completions endpoint the project talks to.

EVOL data generation and LLM judging both send many small, independent requests to a paid
endpoint. What they need from a client is the same: bounded concurrency, retries that survive
rate limits and flaky servers, and an on-disk cache keyed by the exact request so that a killed
run resumes where it stopped and never pays for the same request twice. Retries are done here
(the `openai` client is built with ``max_retries=0``) so they are counted, tested and logged.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
from tqdm.auto import tqdm


logger = logging.getLogger(__name__)
for _name in ("httpx", "httpx2"):  # one INFO line per request drowns the progress bars
    if logging.getLogger(_name).level == logging.NOTSET:
        logging.getLogger(_name).setLevel(logging.WARNING)

_PLACEHOLDER_KEY = "EMPTY"
_sleep = time.sleep  # module-level so tests can record the backoff delays instead of waiting


@dataclass
class LLMConfig:
    """Where to send requests and how hard to try. The API key is read from `api_key_env` at use, never stored."""

    model: str
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    max_concurrency: int = 8
    max_retries: int = 6
    timeout: float = 60.0
    backoff_base: float = 1.0
    backoff_max: float = 60.0
    cache_dir: str | None = None
    price_per_1m_prompt_tokens: float = 0.0
    price_per_1m_completion_tokens: float = 0.0


@dataclass
class Completion:
    """One successful chat completion: the first choice's text plus the full response as JSON."""

    text: str
    raw: dict
    usage: dict
    cached: bool
    key: str


class LLMError(Exception):
    """A request that could not be completed: retries exhausted, or a non-retryable status."""

    def __init__(self, key: str, reason: str, attempts: int, status: int | None = None) -> None:
        super().__init__(f"request {key[:12]} failed after {attempts} attempt(s): {reason}")
        self.key = key
        self.reason = reason
        self.attempts = attempts
        self.status = status


class _Retryable(Exception):
    """Internal: one attempt failed in a way worth retrying."""

    def __init__(self, reason: str, status: int | None = None, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.retry_after = retry_after


def canonical_json(obj: Any) -> str:
    """Key-sorted, whitespace-free JSON: equal requests give equal strings."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _retry_after_seconds(headers: Any) -> float | None:
    """Seconds from `retry-after-ms` or `retry-after` (delta seconds); None when absent or unparsable."""
    if headers is None:
        return None
    for name, scale in (("retry-after-ms", 1e-3), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            return max(0.0, float(value) * scale)
        except ValueError:
            continue
    return None


class LLMClient:
    """Cached, retrying, concurrency-bounded chat completions against one model and endpoint."""

    def __init__(self, config: LLMConfig) -> None:
        self.config = config
        base_url = config.base_url or os.environ.get("OPENAI_BASE_URL") or None
        self.base_url = base_url
        self._client = openai.OpenAI(
            base_url=base_url,
            api_key=os.environ.get(config.api_key_env) or _PLACEHOLDER_KEY,
            timeout=config.timeout,
            max_retries=0,
        )
        self._cache_dir = Path(config.cache_dir) if config.cache_dir else None
        if self._cache_dir is not None:
            self._cache_dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._inflight: dict[str, Future] = {}
        self._rng = random.Random()
        self._stats = {
            "requests_sent": 0,  # HTTP attempts, retries included (what the server sees)
            "requests_succeeded": 0,
            "cache_hits": 0,
            "retries": 0,
            "failures": 0,
            "prompt_tokens": 0,
            "completion_tokens": 0,
        }
        self._job_usage: dict[str, tuple[int, int]] = {}  # every answered request served, cached or not

    # ------------------------------------------------------------------ keys and cache

    def request_key(self, messages: Sequence[dict], **params: Any) -> str:
        """sha256 of the canonical JSON of model, messages and params: the cache key of a request."""
        payload = {"model": self.config.model, "messages": list(messages), "params": params}
        return hashlib.sha256(canonical_json(payload).encode("utf-8")).hexdigest()

    def _cache_path(self, key: str) -> Path | None:
        return None if self._cache_dir is None else self._cache_dir / key[:2] / f"{key}.json"

    def _cache_get(self, key: str) -> dict | None:
        path = self._cache_path(key)
        if path is None or not path.exists():
            return None
        try:
            entry = json.loads(path.read_text(encoding="utf-8"))
            raw = entry["response"]
            _first_text(raw)
            return raw
        except (OSError, ValueError, KeyError, TypeError) as e:
            logger.warning("ignoring unreadable cache entry %s (%s); the request will be sent again", path, e)
            return None

    def _cache_put(self, key: str, request: dict, raw: dict) -> None:
        path = self._cache_path(key)
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump({"key": key, "request": request, "response": raw}, f, ensure_ascii=False)
        os.replace(tmp, path)

    # ------------------------------------------------------------------ requests

    @property
    def stats(self) -> dict[str, Any]:
        """Counters since construction. `cost_usd` covers the requests sent now (cache hits are free);
        the `job_*` figures cover every answered request served, with a cached answer's usage as billed
        when it was first sent: a job's whole spend, summed over a killed run and its rerun."""
        with self._lock:
            out: dict[str, Any] = dict(self._stats)
            job = list(self._job_usage.values())
        out["cost_usd"] = self._cost(out["prompt_tokens"], out["completion_tokens"])
        out["job_requests"] = len(job)
        out["job_prompt_tokens"] = sum(p for p, _ in job)
        out["job_completion_tokens"] = sum(c for _, c in job)
        out["job_cost_usd"] = self._cost(out["job_prompt_tokens"], out["job_completion_tokens"])
        return out

    def _cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return round(
            prompt_tokens * self.config.price_per_1m_prompt_tokens / 1e6
            + completion_tokens * self.config.price_per_1m_completion_tokens / 1e6,
            6,
        )

    def _bump(self, **deltas: int) -> None:
        with self._lock:
            for name, d in deltas.items():
                self._stats[name] += d

    def complete(self, messages: Sequence[dict], **params: Any) -> Completion:
        """One chat completion; served from the cache when this exact request succeeded before.

        Identical requests running at the same time are sent once: the others wait for it.
        Raises `LLMError` when retries are exhausted or the endpoint refuses the request.
        """
        key = self.request_key(messages, **params)
        raw = self._cache_get(key)
        if raw is not None:
            self._bump(cache_hits=1)
            return self._served(raw, key, cached=True)
        with self._lock:
            pending = self._inflight.get(key)
            owner = pending is None
            if owner:
                pending = self._inflight[key] = Future()
        if not owner:
            result = pending.result()
            self._bump(cache_hits=1)
            return self._served(result, key, cached=True)
        try:
            raw = self._cache_get(key)  # a twin may have finished between the first look and the lock
            if raw is not None:
                self._bump(cache_hits=1)
                pending.set_result(raw)
                return self._served(raw, key, cached=True)
            raw = self._send_with_retries(key, list(messages), params)
        except BaseException as e:
            pending.set_exception(e)
            raise
        else:
            pending.set_result(raw)
        finally:
            with self._lock:
                self._inflight.pop(key, None)
        return self._served(raw, key, cached=False)

    def _served(self, raw: dict, key: str, cached: bool) -> Completion:
        """Record the usage of an answered request once (a cached answer carries what its first run paid)."""
        result = _completion(raw, key, cached)
        usage = result.usage
        with self._lock:
            self._job_usage.setdefault(
                key, (int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0))
            )
        return result

    def _send_with_retries(self, key: str, messages: list[dict], params: dict[str, Any]) -> dict:
        attempts = 0
        while True:
            attempts += 1
            self._bump(requests_sent=1)
            try:
                raw = self._send_once(messages, params)
            except _Retryable as e:
                if attempts > self.config.max_retries:
                    self._bump(failures=1)
                    raise LLMError(key, e.reason, attempts, e.status) from None
                delay = self._backoff(attempts, e.retry_after)
                logger.debug("request %s: %s; retry %d in %.2fs", key[:12], e.reason, attempts, delay)
                self._bump(retries=1)
                _sleep(delay)
                continue
            except LLMError as e:
                self._bump(failures=1)
                raise LLMError(key, e.reason, attempts, e.status) from None
            usage = raw.get("usage") or {}
            self._bump(
                requests_succeeded=1,
                prompt_tokens=int(usage.get("prompt_tokens") or 0),
                completion_tokens=int(usage.get("completion_tokens") or 0),
            )
            self._cache_put(key, {"model": self.config.model, "messages": messages, "params": params}, raw)
            return raw

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        """Exponential backoff with jitter; a server's Retry-After is a floor, never shortened."""
        cap = min(self.config.backoff_max, self.config.backoff_base * 2 ** (attempt - 1))
        delay = cap / 2 + self._rng.uniform(0, cap / 2)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.config.backoff_max))
        return delay

    def _send_once(self, messages: list[dict], params: dict[str, Any]) -> dict:
        """One HTTP attempt. Returns the response JSON, raises `_Retryable` or a final `LLMError`."""
        try:
            response = self._client.chat.completions.with_raw_response.create(
                model=self.config.model, messages=messages, **params
            )
            body = response.http_response.text
        except openai.RateLimitError as e:
            raise _Retryable("HTTP 429 rate limited", 429, _retry_after_seconds(e.response.headers)) from None
        except openai.APIStatusError as e:
            status = e.status_code
            if status >= 500:
                raise _Retryable(f"HTTP {status} {_short(e.message)}", status) from None
            raise LLMError("", f"HTTP {status} {_short(e.message)}", 1, status) from None
        except openai.APITimeoutError:
            raise _Retryable(f"timeout after {self.config.timeout}s") from None
        except openai.APIConnectionError as e:
            raise _Retryable(f"connection error: {_short(str(e.__cause__ or e))}") from None
        try:
            raw = json.loads(body)
            _first_text(raw)
        except (ValueError, KeyError, IndexError, TypeError) as e:
            raise _Retryable(f"malformed response body ({type(e).__name__}: {_short(str(e))})") from None
        return raw

    def complete_many(self, requests: Sequence[dict], desc: str = "") -> list[Completion | LLMError]:
        """Run `{"messages": [...], **params}` requests on a bounded thread pool; results keep input order.

        A failed request yields its `LLMError` in place instead of raising, so one bad request
        does not sink a batch.
        """

        def one(req: dict) -> Completion | LLMError:
            req = dict(req)
            messages = req.pop("messages")
            try:
                return self.complete(messages, **req)
            except LLMError as e:
                return e

        results: list[Completion | LLMError | None] = [None] * len(requests)
        workers = max(1, min(self.config.max_concurrency, len(requests) or 1))
        with (
            ThreadPoolExecutor(max_workers=workers, thread_name_prefix="llm") as pool,
            tqdm(total=len(requests), desc=desc or "llm", disable=not requests, leave=False) as bar,
        ):
            futures = {pool.submit(one, r): i for i, r in enumerate(requests)}
            for fut in as_completed(futures):
                results[futures[fut]] = fut.result()
                bar.update(1)
        return results  # type: ignore[return-value]


def _first_text(raw: Any) -> str:
    """The first choice's message content; raises on anything not shaped like a chat completion."""
    if not isinstance(raw, dict):
        raise TypeError("response is not a JSON object")
    content = raw["choices"][0]["message"]["content"]
    if not isinstance(content, str):
        raise TypeError("choices[0].message.content is not a string")
    return content


def _completion(raw: dict, key: str, cached: bool) -> Completion:
    return Completion(text=_first_text(raw), raw=raw, usage=dict(raw.get("usage") or {}), cached=cached, key=key)


def _short(text: str, limit: int = 200) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."

"""Requests to an OpenAI-compatible server: retries, timeouts, requests in flight, the key.

Why its own module: the served backend (semievol.model.served) decides *what* to ask; this decides
how to ask it reliably. A 429 or a 5xx is retried with exponential backoff (honouring
Retry-After), a connection error or timeout likewise; a 4xx other than 429 is the server
saying no and is raised at once. The API key is read from the environment variable the
config names, on every client construction, and is never stored, logged or exported.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any, Callable, Iterable

from semievol.errors import SemiEvolError, redact, remember_secret

RETRY_STATUSES = {408, 409, 425, 429, 500, 502, 503, 504}
MAX_ANSWER_BYTES = 64 * 2**20
"""The largest answer read from a server (a scoring answer is a few kilobytes)."""
class ServerError(SemiEvolError):
    """The server refused or failed a request (after retries): status and its message,
    credentials redacted."""

    def __init__(self, message: str, *, status: int | None = None, body: str = ""):
        super().__init__(message)
        self.status, self.body = status, redact(body)


def api_key(env_name: str) -> str | None:
    """The key from the environment variable `env_name` ('' = no key)."""
    if not env_name:
        return None
    value = os.environ.get(env_name)
    if not value:
        raise SemiEvolError(f"The server config asks for an API key in ${env_name}, which is "
                            f"not set: export {env_name}=... before running (keys are never "
                            "stored in the workspace).")
    remember_secret(value)
    return value


class ServerClient:
    """JSON over HTTP to one server, `concurrency` requests at a time."""

    def __init__(self, base_url: str, *, api_key_env: str = "", timeout: float = 120.0,
                 retries: int = 5, concurrency: int = 4, backoff: float = 0.5):
        import httpx

        self.base_url = base_url.rstrip("/")
        self.timeout, self.retries, self.backoff = timeout, retries, backoff
        self.concurrency = max(1, concurrency)
        headers = {"Content-Type": "application/json"}
        key = api_key(api_key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        self._http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout,
                                  limits=httpx.Limits(max_connections=self.concurrency))
        self._lock = threading.Lock()
        self._batch = threading.local()  # the batch (`map`) a worker thread serves
        self.requests = 0      # every HTTP request made, retries included
        self.retried = 0

    def close(self) -> None:
        self._http.close()

    def _count(self, retried: bool = False) -> None:
        with self._lock:
            self.requests += 1
            self.retried += retried

    def request(self, method: str, path: str, payload: dict | None = None, *,
                as_text: bool = False) -> Any:
        """The decoded JSON answer (or, with `as_text`, the answer as text: a Prometheus
        /metrics page); retries what is worth retrying, raises ServerError."""
        import httpx

        last, status = "", None
        for attempt in range(self.retries + 1):
            stop = getattr(self._batch, "stop", None)
            if stop is not None and stop.is_set():
                raise ServerError(f"{self.base_url}{path}: not sent, another request of the "
                                  "same batch failed first.")
            self._count(retried=attempt > 0)
            try:
                status, headers, body = self._exchange(method, path, payload)
            except (httpx.TimeoutException, httpx.TransportError, httpx.StreamError) as exc:
                last = f"{type(exc).__name__}: {exc}"
                status, wait = None, None
            else:
                text = body.decode("utf-8", errors="replace")
                if status < 400:
                    if as_text:
                        return text
                    try:
                        return json.loads(text)
                    except ValueError as exc:
                        raise ServerError(f"{self.base_url}{path} answered with something "
                                          f"that is not JSON: {text[:200]!r}") from exc
                last = redact(text)[:500]  # redacted before it is cut: no half a key
                if status not in RETRY_STATUSES:
                    raise ServerError(f"{self.base_url}{path} refused the request (HTTP "
                                      f"{status}): {last}", status=status, body=last)
                wait = _retry_after(headers.get("retry-after"))
            if attempt == self.retries:
                break
            # Exponential backoff with jitter, or what the server asked for.
            time.sleep(wait if wait is not None else
                       self.backoff * (2 ** attempt) * (0.5 + random.random() / 2))
        raise ServerError(f"{self.base_url}{path} failed after {self.retries + 1} attempts: "
                          f"{last}", status=status, body=last)

    def _exchange(self, method: str, path: str, payload: dict | None
                  ) -> tuple[int, Any, bytes]:
        """One request and its whole answer within `timeout` seconds in all: a server that
        sends its answer slowly is cut off at the deadline (a timeout per read would let
        it trickle for ever), and one that never answers times out."""
        import httpx

        deadline = time.monotonic() + self.timeout
        with self._http.stream(method, path, json=payload) as response:
            # Past the deadline the answer is closed under the reader, which then fails.
            watchdog = threading.Timer(max(0.0, deadline - time.monotonic()), response.close)
            watchdog.daemon = True
            watchdog.start()
            try:
                body = bytearray()
                for chunk in response.iter_bytes():
                    body += chunk
                    if len(body) > MAX_ANSWER_BYTES:
                        raise ServerError(f"{self.base_url}{path} sent an answer larger than "
                                          f"{MAX_ANSWER_BYTES // 2**20} MiB.")
            except (httpx.StreamError, httpx.TransportError) as exc:
                if time.monotonic() >= deadline:
                    raise httpx.ReadTimeout(f"no whole answer within {self.timeout:g} s") \
                        from exc
                raise
            finally:
                watchdog.cancel()
            if time.monotonic() > deadline:
                raise httpx.ReadTimeout(f"no whole answer within {self.timeout:g} s")
            return response.status_code, response.headers, bytes(body)

    def post(self, path: str, payload: dict) -> Any:
        return self.request("POST", path, payload)

    def get(self, path: str, *, as_text: bool = False) -> Any:
        """GET `path` (relative to base_url, or an absolute URL on the same server)."""
        return self.request("GET", path, as_text=as_text)

    def map(self, fn: Callable[[Any], Any], items: Iterable, *,
            done: Callable[[int], None] | None = None) -> list:
        """fn over items with `concurrency` in flight, results in order; `done(n)` after
        each finished item (progress)."""
        items = list(items)
        if self.concurrency == 1 or len(items) <= 1:
            out = []
            for n, item in enumerate(items, start=1):
                out.append(fn(item))
                if done:
                    done(n)
            return out
        results: list = [None] * len(items)
        finished = 0
        pool = ThreadPoolExecutor(max_workers=self.concurrency)
        stop = threading.Event()

        def one(item):
            self._batch.stop = stop
            return fn(item)

        try:
            futures = {pool.submit(one, item): i for i, item in enumerate(items)}
            for future in as_completed(futures):
                results[futures[future]] = future.result()
                finished += 1
                if done:
                    done(finished)
        except BaseException:
            # The first failure ends the batch: queued requests are dropped and the ones in
            # flight send no retry, instead of every item waiting out its own timeouts.
            stop.set()
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown()
        return results


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (seconds form only), capped at a minute."""
    try:
        return min(60.0, max(0.0, float(value))) if value else None
    except ValueError:
        return None

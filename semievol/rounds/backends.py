"""Which model answers for each part of a round: in this process or on a server.

A round has three models (base, warm-up, and once trained the round's own) and each can run
locally (a LazyBackend: weights load on first use) or on a configured OpenAI-compatible
server (semievol.model.served). Backends are keyed `role` or `role@server` (backend.backend_key);
a collaborator, the reflection, the eq. 6 entropy and evaluation each look theirs up.
"""

from __future__ import annotations

import functools
from pathlib import Path

from semievol.config import RoundConfig, ServerConfig
from semievol.errors import SemiEvolError
from semievol.model.backend import DeferredBackend, backend_key
from semievol.model.loading import adapter_digest, load_tokenizer, resolve_model_path
from semievol.model.local import LazyBackend
from semievol.model.served import ServedBackend, describe, probe_server
from semievol.rounds.record import Round
from semievol.workspace.store import Workspace

ROLES = ("base", "warmup", "final")


def servers_used(config: RoundConfig, steps: list[str]) -> dict[str, set[str]]:
    """server name -> the roles the steps will ask it for."""
    wanted: dict[str, set[str]] = {}
    if "label" in steps:
        for c in config.collaborators:
            if c.server:
                wanted.setdefault(c.server, set()).add(c.model)
        for server, role in ((config.served.reflection, config.served.reflection_model),
                             (config.served.entropy, "warmup")):
            if server:
                wanted.setdefault(server, set()).add(role)
    if "evaluate" in steps and config.served.evaluation:
        wanted.setdefault(config.served.evaluation, set()).update(ROLES)
    return wanted


def load_backends(ws: Workspace, rnd: Round, cache: dict | None = None) -> dict:
    """Every backend the round can use, none loaded or contacted yet: base, warm-up and
    (once trained) final in this process, and each configured server's. With a `cache`, one
    backend per model and adapter is shared by the steps of one run."""
    cache = {} if cache is None else cache
    out = {}
    adapters = {"base": None, "warmup": rnd.warmup_adapter, "final": rnd.final_adapter}
    for role, adapter in adapters.items():
        if role != "base" and adapter is None:
            continue
        local = ("local", role, adapter, repr(rnd.config.model))
        if local not in cache:
            cache[local] = LazyBackend(rnd.config.model, adapter)
        out[role] = cache[local]
        for server in rnd.config.servers:
            served = ("served", server.name, repr(server), role, adapter)
            if served not in cache:
                cache[served] = _LazyServed(ws, server, rnd, role, adapter)
            out[backend_key(role, server.name)] = cache[served]
    return out


def check_servers(ws: Workspace, rnd: Round, steps: list[str]) -> list[str]:
    """Before any work: every server the steps use answers, serves the model asked for and
    can serve the mode the task needs. Returns one line per server (what it can do)."""
    lines = []
    task = ws.require_task()
    by_name = {s.name: s for s in rnd.config.servers}
    for name, roles in servers_used(rnd.config, steps).items():
        server = by_name[name]
        caps = _probe(ws, server, rnd)
        mode = caps.resolve_mode(server)
        if mode == "chat" and task.kind == "choice" and task.answer_format != "letter":
            raise SemiEvolError(
                f"Server {name} answers in chat mode (no echo of prompt log-probabilities), "
                "which scores letter options only, and this task answers in words. Set the "
                "task's answer format to letter, or serve the model where completions echo "
                "log-probabilities (vLLM, llama-cpp-python).")
        for role in sorted(roles):
            adapter = {"warmup": rnd.warmup_adapter, "final": rnd.final_adapter}.get(role)
            later = {"warmup": "warmup", "final": "train"}.get(role)
            if role != "base" and adapter is None:
                if later not in steps:
                    continue  # nothing to serve for this role in these steps
                adapter = "(trained by this run)"  # can the server serve it at all?
            served_model(server, caps, role, adapter)  # refuses what it cannot serve
        approximate = (" (an approximation: options read from the first token's top "
                       "log-probabilities)" if mode == "chat" else "")
        lines.append(f"server {name}: {describe(caps)}; mode {mode}{approximate}")
    return lines


def probe_servers(ws: Workspace, config: RoundConfig) -> list[str]:
    """Probe every configured server afresh (and store what it can do); one line each,
    or a SemiEvolError naming the first that fails."""
    tokenizer = tokenizer_for(config.model.name_or_path)
    lines = []
    for server in config.servers:
        caps = probe_server(ws, server, tokenizer, refresh=True)
        lines.append(f"server {server.name}: {describe(caps)}; mode "
                     f"{caps.resolve_mode(server)}"
                     + "".join(f"\n  {note}" for note in caps.notes))
    return lines


def served_model(server: ServerConfig, caps, role: str, adapter) -> tuple[str, str | None]:
    """(the served name that answers for `role`, an adapter folder to load at run time)."""
    if role == "base" or adapter is None:
        return caps.model, None
    if server.adapter_loading == "vllm":
        return f"semievol-{adapter_digest(adapter)}", str(Path(adapter).resolve())
    if role == "warmup" and server.warmup_model:
        if caps.models and server.warmup_model not in caps.models:
            raise SemiEvolError(f"Server {server.name} does not serve the warm-up model "
                                f"{server.warmup_model!r}; it lists {', '.join(caps.models)}.")
        return server.warmup_model, None
    what = "warm-up" if role == "warmup" else "trained"
    raise SemiEvolError(
        f"Server {server.name} has no way to serve the round's {what} adapter: serve it "
        "(vLLM `--enable-lora --lora-modules NAME=PATH`, or a merged copy from `semievol "
        "export WORKSPACE --what merged`) and set the server's warmup_model to its name, or "
        "set adapter_loading to vllm, or run that part in this process.")


@functools.lru_cache(maxsize=4)
def tokenizer_for(name_or_path: str):
    """The model's tokenizer, loaded once per process (prompts are counted and rendered
    with it; no weights load)."""
    return load_tokenizer(resolve_model_path(name_or_path))


def _probe(ws: Workspace, server: ServerConfig, rnd: Round):
    return probe_server(ws, server, tokenizer_for(rnd.config.model.name_or_path))


class _LazyServed(DeferredBackend):
    """A ServedBackend made on first use (its probe is read from the workspace, where the
    preflight stored it): building the round's backends contacts no server."""

    def __init__(self, ws: Workspace, server: ServerConfig, rnd: Round, role: str, adapter):
        self._args = (ws, server, rnd, role, adapter)
        self.tokenizer = tokenizer_for(rnd.config.model.name_or_path)

    def _make(self):
        ws, server, rnd, role, adapter = self._args
        caps = _probe(ws, server, rnd)
        name, load = served_model(server, caps, role, adapter)
        return ServedBackend(server, caps, self.tokenizer, served_model=name,
                             adapter_digest=adapter_digest(adapter), load_adapter=load)

    @property
    def name(self) -> str:
        return self._made().name

    @property
    def approximate(self) -> bool:
        return self._made().approximate

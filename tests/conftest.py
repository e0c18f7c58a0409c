"""Fixtures shared by the whole suite.

- `FakeEmbedder` / `fake_embedder`: a deterministic hashed bag-of-words embedder (no model),
  so retrieval runs in milliseconds and texts sharing words are near each other.
- `workspace`: a fresh, empty workspace in `tmp_path`.
- `task`: the 3-label broadband classification task used by the small files below.
- `write_csv` (function and fixture): write a list of dicts as a UTF-8 CSV.
- `small_task_files`: labeled / unlabeled / test CSVs (id,text,label) about broadband support.
- `filled_workspace`: `workspace` with those files imported and indexed (FakeEmbedder, k=3).
- `pool`: `filled_workspace` with round 1 and nine stored pseudo-labels (SQL, no model);
  `ids_of`, `add_round`, `add_pseudo` write such rows.
- `tiny_model_dir` (session): a tiny random-weight Llama saved with the real bundled tokenizer.
"""

from __future__ import annotations

import csv
import hashlib
import os
import re
from pathlib import Path

import numpy as np
import pytest

from semievol.config import RoundConfig, TaskConfig
from semievol.saved_config import to_json
from semievol.workspace.store import Workspace, now

# A first round on a machine measures its speed before it starts (semievol.runs.calibrate);
# the suite's tiny models have no speed worth measuring, and every test would pay for it.
# tests/test_calibrate.py turns it on where it is the subject.
os.environ.setdefault("SEMIEVOL_MEASURE_SPEED", "0")

LABELS = ["billing", "outage", "equipment"]


# -- embedder ------------------------------------------------------------------------------
class FakeEmbedder:
    """Hashed bag of words -> L2-normalised float32 vectors of size `dim`. Deterministic
    across processes (sha1, not Python's salted `hash`); an empty text maps to a fixed unit
    vector so every row stays normalised."""

    name = "fake"

    def __init__(self, dim: int = 64):
        self.dim = dim
        self.calls: list[int] = []
        """Number of texts embedded by each call (tests use it to check caching)."""

    def embed(self, texts: list[str]) -> np.ndarray:
        self.calls.append(len(texts))
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in re.findall(r"[a-z0-9]+", str(text).lower()):
                bucket = int.from_bytes(hashlib.sha1(word.encode()).digest()[:4], "little")
                out[row, bucket % self.dim] += 1.0
            if not out[row].any():
                out[row, 0] = 1.0
        out /= np.linalg.norm(out, axis=1, keepdims=True)
        return out


@pytest.fixture
def fake_embedder() -> FakeEmbedder:
    return FakeEmbedder()


# -- workspace and task --------------------------------------------------------------------
@pytest.fixture
def workspace(tmp_path):
    """A fresh empty workspace at tmp_path/'ws' (closed after the test)."""
    ws = Workspace(tmp_path / "ws", create=True)
    yield ws
    ws.close()


@pytest.fixture
def task() -> TaskConfig:
    return TaskConfig(kind="choice", labels=list(LABELS), answer_format="words")


def write_csv(path: str | Path, rows: list[dict], *, fieldnames: list[str] | None = None) -> Path:
    """Write `rows` (dicts) as a UTF-8 CSV with a header; columns default to the first row's
    keys in order. Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fieldnames = fieldnames or list(rows[0].keys())
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=fieldnames)
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture(name="write_csv")
def write_csv_fixture():
    """The `write_csv(path, rows)` function, as a fixture."""
    return write_csv


# -- small broadband support task ----------------------------------------------------------
LABELED_TEXTS = {
    "billing": [
        "I was charged twice on my bill this month, please refund the extra payment",
        "Why did my monthly bill go up, the price rise was not explained",
        "My direct debit payment failed and now there is a late fee on the invoice",
        "Please explain the charge on my invoice and refund the overcharge",
    ],
    "outage": [
        "The internet is down and there is no connection since this morning",
        "Broadband keeps dropping every evening and the connection is very slow",
        "No internet in our whole street after the storm, is there an outage",
        "Connection drops during video calls and the speed is terrible",
    ],
    "equipment": [
        "The router has a red blinking light and will not power on",
        "My router is overheating and making a buzzing noise, I need a replacement router",
        "The wifi extender will not pair with the router",
        "Lost the power adapter for the router, can you send a new cable",
    ],
}
UNLABELED_TEXTS = [
    "Refund the double charge on my bill please",
    "Why is my invoice higher than last month",
    "Late fee on my payment is unfair",
    "Can I pay my bill by card instead of direct debit",
    "Charged for a month after I paid the invoice",
    "Internet down again, no connection at all",
    "Connection very slow tonight and keeps dropping",
    "Is there an outage in my area, no broadband",
    "Video calls freeze, the connection drops",
    "Speed test shows the internet is slow",
    "Router light is blinking red",
    "The router will not power on after the storm",
    "Need a replacement router, mine is broken",
    "Wifi extender lost pairing with the router",
    "Router power cable is damaged",
    "My bill shows a charge I do not recognise",
    "No internet since the power cut",
    "Router admin password does not work",
    "Refund for the days the connection was down",
    "The router makes a noise and gets hot",
]
TEST_ROWS = [
    ("Please refund the overcharge on my bill", "billing"),
    ("The price on my invoice went up", "billing"),
    ("Direct debit payment taken twice", "billing"),
    ("No connection to the internet today", "outage"),
    ("Broadband drops every hour", "outage"),
    ("Outage after the storm, internet is down", "outage"),
    ("Router blinking and will not power on", "equipment"),
    ("Replacement router needed, overheating", "equipment"),
    ("Extender will not connect to the router", "equipment"),
]


@pytest.fixture
def small_task_files(tmp_path) -> dict[str, Path]:
    """{'labeled': 12 rows (4 per class), 'unlabeled': 20 rows (label column empty),
    'test': 9 rows (3 per class)} CSVs with columns id,text,label in tmp_path/'files'."""
    folder = tmp_path / "files"
    labeled = [{"id": f"L{c}{i}", "text": text, "label": label}
               for c, (label, texts) in enumerate(LABELED_TEXTS.items())
               for i, text in enumerate(texts)]
    unlabeled = [{"id": f"U{i:02d}", "text": text, "label": ""}
                 for i, text in enumerate(UNLABELED_TEXTS)]
    test = [{"id": f"T{i}", "text": text, "label": label}
            for i, (text, label) in enumerate(TEST_ROWS)]
    return {"labeled": write_csv(folder / "labeled.csv", labeled),
            "unlabeled": write_csv(folder / "unlabeled.csv", unlabeled),
            "test": write_csv(folder / "test.csv", test)}


@pytest.fixture
def filled_workspace(workspace, task, small_task_files, fake_embedder):
    """`workspace` with the small files imported (question=text, answer=label, id=id; the
    unlabeled split imports no answers) and indexed with the FakeEmbedder at k=3."""
    from semievol.method.retrieval import index_workspace
    from semievol.workspace.imports import ColumnMapping, import_file

    for split in ("labeled", "unlabeled", "test"):
        mapping = ColumnMapping(question="text", id="id",
                                answer=None if split == "unlabeled" else "label")
        import_file(workspace, small_task_files[split], split, mapping=mapping, task=task)
    index_workspace(workspace, fake_embedder, k=3)
    return workspace


# -- a round with stored pseudo-labels (no model) -----------------------------------------
# Eight pseudo-labels: billing is the confident half, outage the uncertain half.
POOL_ENTROPIES = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]
POOL_LABELS = ["billing"] * 4 + ["outage"] * 4
POOL_PATHS = ["agreed", "reflected", "agreed", "reflected", "agreed", "reflected",
              "reflected", "agreed"]


def ids_of(ws, split: str) -> list[int]:
    return [r[0] for r in ws.query("SELECT id FROM items WHERE split=? ORDER BY id", (split,))]


def add_round(ws, number: int = 1) -> int:
    with ws.transaction() as conn:
        return conn.execute("INSERT INTO rounds(number, status, config, created_at) "
                            "VALUES(?,?,?,?)",
                            (number, "open", to_json(RoundConfig()), now())).lastrowid


def add_pseudo(ws, round_id: int, rows) -> None:
    """rows: (item_id, label, path, entropy, option_entropy[, selected])."""
    with ws.transaction() as conn:
        conn.executemany(
            "INSERT INTO pseudo_labels(round_id, item_id, label, path, agreement, entropy, "
            "option_entropy, selected) VALUES(?,?,?,?,?,?,?,?)",
            [(round_id, r[0], r[1], r[2], 1.0 if r[2] == "agreed" else 0.5, r[3], r[4],
              r[5] if len(r) > 5 else 0) for r in rows])


@pytest.fixture
def pool(filled_workspace):
    """Round 1 with the eight pseudo-labels above on the first eight unlabeled items (option
    entropies in the reverse order) and a ninth with no entropy, agreed.
    Returns (ws, round_id, item ids)."""
    ws = filled_workspace
    rid = add_round(ws)
    items = ids_of(ws, "unlabeled")[:9]
    add_pseudo(ws, rid, [(i, lab, path, e, 1.0 - e) for i, lab, path, e
                         in zip(items, POOL_LABELS, POOL_PATHS, POOL_ENTROPIES)]
               + [(items[8], "equipment", "agreed", None, None)])
    return ws, rid, items



def fake_adapter(ws, relative: str) -> str:
    """Files where an adapter would be (what the preflight checks is there), for tests whose
    steps never load it; returns the relative path to store in the round."""
    folder = ws.path / relative
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        (folder / name).write_text("{}")
    return relative


# -- tiny model ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def one_torch_thread():
    """A tiny model runs faster on one thread than on two busy ones (a shared machine); a
    module that trains or scores tiny models uses it for all its tests
    (`pytestmark = pytest.mark.usefixtures("one_torch_thread")`)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


TINY_ARCHITECTURES = ("llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3_text", "phi3")
"""One tiny model per supported architecture (semievol.model.architectures)."""


def tiny_architecture_config(model_type: str, tokenizer, **overrides):
    """A 2-layer, hidden-32 config of `model_type` over the bundled tokenizer's vocabulary:
    grouped-query attention (2 heads, 1 KV head), rows long enough for q8_0 blocks, and
    each architecture's own parts at their defaults (Qwen2's biases, Qwen3's and Gemma 3's
    Q/K norms, Gemma's soft-capping and sliding window, Phi-3's fused projections)."""
    import transformers

    classes = {"llama": "LlamaConfig", "mistral": "MistralConfig", "qwen2": "Qwen2Config",
               "qwen3": "Qwen3Config", "gemma2": "Gemma2Config",
               "gemma3_text": "Gemma3TextConfig", "phi3": "Phi3Config"}
    shape = dict(vocab_size=max(len(tokenizer), tokenizer.vocab_size), hidden_size=32,
                 num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                 intermediate_size=64, max_position_embeddings=1024,
                 bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                 pad_token_id=tokenizer.pad_token_id,
                 tie_word_embeddings=model_type not in ("mistral", "phi3"))
    if model_type in ("mistral", "qwen3", "gemma2", "gemma3_text"):
        shape["head_dim"] = 16
    if model_type.startswith("gemma"):
        shape["query_pre_attn_scalar"] = 16  # llama.cpp scales by the head size
    return getattr(transformers, classes[model_type])(**{**shape, **overrides})


@pytest.fixture(scope="session")
def byte_fallback_tokenizer_dir(tmp_path_factory) -> Path:
    """A SentencePiece-style tokenizer as Gemma, Mistral, Phi-3 and Llama 2 ship theirs
    (BPE with byte fallback, spaces as ▁ prepended by the normalizer, <0xNN> byte tokens),
    trained offline on the small task's texts with `tokenizers`, with the bundled ChatML
    template and special tokens."""
    from tokenizers import Tokenizer, decoders, models, normalizers, trainers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    from semievol.model.loading import bundled_model_dir

    texts = [t for ts in LABELED_TEXTS.values() for t in ts] + list(UNLABELED_TEXTS) + \
        [t for t, _ in TEST_ROWS] + ["Route the broadband support message to a team."]
    specials = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
    model = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    model.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"),
                                             normalizers.Replace(" ", "\u2581")])
    model.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(),
                                       decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    model.train_from_iterator(texts * 3, trainers.BpeTrainer(
        vocab_size=700, show_progress=False,
        special_tokens=specials + [f"<0x{i:02X}>" for i in range(256)]))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=model, bos_token="<s>",
                                        eos_token="<|im_end|>", unk_token="<unk>",
                                        pad_token="<|im_end|>")
    tokenizer.chat_template = AutoTokenizer.from_pretrained(bundled_model_dir()).chat_template
    path = tmp_path_factory.mktemp("byte_fallback_tokenizer")
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_architecture(tmp_path_factory):
    """`tiny_architecture(model_type, tokenizer_dir=None)`: a folder with a tiny random-weight
    model of that architecture (weights std 0.3, so its option scores are not flat) and the
    bundled tokenizer (or the one in `tokenizer_dir`) standing in for the model's own; built
    once per session."""
    from semievol.model.loading import bundled_model_dir, set_offline

    set_offline()
    built: dict[tuple, Path] = {}

    def build(model_type: str, tokenizer_dir: Path | None = None) -> Path:
        if (model_type, tokenizer_dir) in built:
            return built[model_type, tokenizer_dir]
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir or bundled_model_dir())
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(tiny_architecture_config(model_type, tokenizer))
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if "norm" not in name:
                    parameter.normal_(0.0, 0.3)
        path = tmp_path_factory.mktemp(f"tiny_{model_type}")
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)
        built[model_type, tokenizer_dir] = path
        return path

    return build


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A 2-layer, hidden-16 random-weight LlamaForCausalLM (seeded, tied embeddings) saved
    with the real bundled tokenizer (ChatML template, <|im_end|> as eos/pad)."""
    from semievol.model.loading import bundled_model_dir, set_offline

    set_offline()
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(bundled_model_dir())
    config = LlamaConfig(
        vocab_size=max(len(tokenizer), tokenizer.vocab_size), hidden_size=16,
        num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
        intermediate_size=32, max_position_embeddings=1024, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    path = tmp_path_factory.mktemp("tiny_model")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path

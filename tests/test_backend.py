"""The scoring/generation backend on the tiny random model, checked against naive full
forward passes (no KV cache, no padding)."""

from __future__ import annotations

import numpy as np
import pytest

from semievol.config import ModelConfig, TaskConfig
from semievol.task.formats import option_continuations

torch = pytest.importorskip("torch")

PROMPTS = [
    "A much longer prompt with many words in it, so that the batch needs left padding here",
    "Short one",
    "Is my router broken?",
]
CONTINUATIONS = [
    ["billing account", "outage", "the equipment is broken<|im_end|>"],   # 3 options
    ["x", "yy zz"],                                                         # 2 options
    ["router", "power cable thing", "a", "b"],                              # 4 options
]


def tiny_config(path) -> ModelConfig:
    return ModelConfig(name_or_path=str(path), device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def backend(tiny_model_dir):
    """The tiny model with larger random weights: at the default init (std 0.02) every
    token's log-probability is within ~0.1 of -log(V), too flat to tell right from wrong."""
    from semievol.model.local import load_backend

    b = load_backend(tiny_config(tiny_model_dir))
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in b.model.named_parameters():
            if "norm" not in name:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.3)
    return b


def naive_logprobs(backend, prompt: str, continuation: str) -> np.ndarray:
    """Log-probabilities of the continuation's tokens from one full forward, no cache."""
    tok = backend.tokenizer
    p = tok(prompt, add_special_tokens=False)["input_ids"]
    c = tok(continuation, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = backend.model(input_ids=torch.tensor([p + c]), use_cache=False).logits[0]
    logp = torch.log_softmax(logits.float(), dim=-1)
    return np.array([logp[len(p) - 1 + k, c[k]].item() for k in range(len(c))])


def assert_matches_naive(backend, prompts, continuations, result):
    assert len(result) == len(prompts)
    for prompt, conts, scores in zip(prompts, continuations, result):
        assert len(scores) == len(conts)
        for cont, score in zip(conts, scores):
            expected = naive_logprobs(backend, prompt, cont)
            assert score.shape == expected.shape
            np.testing.assert_allclose(score, expected, atol=1e-4, rtol=0)


def test_scores_equal_naive_forward_mixed_lengths_and_option_counts(backend):
    # All three prompts in one batch: different lengths (left padding), different numbers
    # of options, multi-token continuations of different lengths.
    result = backend.score_continuations(PROMPTS, CONTINUATIONS)
    assert_matches_naive(backend, PROMPTS, CONTINUATIONS, result)
    assert any(len(s) > 2 for scores in result for s in scores)  # multi-token really tested
    # The weights are not flat: options get clearly different scores.
    totals = [s.sum() for s in result[2]]
    assert max(totals) - min(totals) > 1.0


def test_scores_do_not_depend_on_batching(backend):
    from semievol.model.local import LocalBackend

    together = backend.score_continuations(PROMPTS, CONTINUATIONS)
    one_by_one = LocalBackend(backend.model, backend.tokenizer, name="x", batch_size=1)
    alone = one_by_one.score_continuations(PROMPTS, CONTINUATIONS)
    for a, b in zip(together, alone):
        for x, y in zip(a, b):
            np.testing.assert_allclose(x, y, atol=1e-4, rtol=0)


def test_small_batches_keep_the_input_order(backend):
    from semievol.model.local import LocalBackend

    prompts = PROMPTS + ["Another prompt of middling length here", "Hi"]
    conts = CONTINUATIONS + [["one", "two words"], ["ok"]]
    small = LocalBackend(backend.model, backend.tokenizer, name="x", batch_size=2)
    seen = []
    result = small.score_continuations(prompts, conts, progress=lambda d, t, m: seen.append((d, t)))
    assert_matches_naive(backend, prompts, conts, result)
    assert seen == [(2, 5), (4, 5), (5, 5)]


def test_option_distributions_sum_to_one_and_follow_the_scores(backend):
    dists = backend.option_distributions(PROMPTS, CONTINUATIONS)
    scores = backend.score_continuations(PROMPTS, CONTINUATIONS)
    for dist, conts, per_option in zip(dists, CONTINUATIONS, scores):
        assert dist.shape == (len(conts),)
        assert dist.sum() == pytest.approx(1.0, abs=1e-9)
        assert (dist >= 0).all()
        totals = np.array([s.sum() for s in per_option])
        np.testing.assert_allclose(np.log(dist) - np.log(dist).max(), totals - totals.max(),
                                   atol=1e-6)


def test_letter_continuations_need_only_the_prompt_forward(backend):
    from semievol.model.local import LocalBackend

    task = TaskConfig(kind="choice", labels=["billing", "outage", "equipment"],
                      answer_format="letter")
    letters = option_continuations(task, task.labels)
    assert letters == ["A", "B", "C"]
    conts = [letters] * len(PROMPTS)
    before = backend.calls
    result = backend.score_continuations(PROMPTS, conts)
    assert backend.calls == before + 1      # one batch, one forward
    assert all(len(s) == 1 for scores in result for s in scores)
    assert_matches_naive(backend, PROMPTS, conts, result)

    small = LocalBackend(backend.model, backend.tokenizer, name="x", batch_size=2)
    small.score_continuations(PROMPTS, conts)
    assert small.calls == 2                 # two batches
    # Multi-token options cost one extra small forward per option position.
    small.calls = 0
    small.score_continuations(PROMPTS[:2], [["billing account", "A"], ["yy zz"]])
    assert small.calls == 1 + 1             # prompt + option 0 (option 1 is one token)


def naive_greedy(backend, prompt: str, steps: int):
    tok = backend.tokenizer
    ids = tok(prompt, add_special_tokens=False)["input_ids"]
    new, logprobs = [], []
    for _ in range(steps):
        with torch.no_grad():
            logits = backend.model(input_ids=torch.tensor([ids + new]), use_cache=False).logits
        logp = torch.log_softmax(logits[0, -1].float(), dim=-1)
        token = int(logp.argmax())
        if token == tok.eos_token_id:
            break
        new.append(token)
        logprobs.append(logp[token].item())
    return tok.decode(new, skip_special_tokens=True).strip(), logprobs


def test_greedy_generation_matches_a_naive_decode(backend):
    out = backend.generate(PROMPTS[:2], temperature=0.0, max_new_tokens=4)
    assert len(out) == 2
    for prompt, (text, logprobs) in zip(PROMPTS[:2], out):
        expected_text, expected_lp = naive_greedy(backend, prompt, 4)
        assert isinstance(text, str) and text == expected_text
        assert len(logprobs) == len(expected_lp) > 0      # one log-probability per token
        np.testing.assert_allclose(logprobs, expected_lp, atol=1e-4)


def test_sampled_generation_is_deterministic_for_a_seed(backend):
    first = backend.generate(PROMPTS, temperature=1.0, seed=3, max_new_tokens=5)
    again = backend.generate(PROMPTS, temperature=1.0, seed=3, max_new_tokens=5)
    other = backend.generate(PROMPTS, temperature=1.0, seed=4, max_new_tokens=5)
    assert first == again
    assert [t for t, _ in first] != [t for t, _ in other]
    for text, logprobs in first:
        assert text and 1 <= len(logprobs) <= 5
        assert all(lp <= 0 and np.isfinite(lp) for lp in logprobs)


def test_lazy_backend_loads_weights_on_first_score(tiny_model_dir):
    from semievol.model.local import LazyBackend, LocalBackend, backend_name

    config = tiny_config(tiny_model_dir)
    lazy = LazyBackend(config)
    assert lazy._backend is None and lazy.calls == 0
    assert lazy.name == backend_name(config)
    assert lazy.tokenizer.padding_side == "left"     # prompts can be built without weights
    assert lazy._backend is None
    scores = lazy.score_continuations(["Hello"], [["A", "B"]])
    assert isinstance(lazy._backend, LocalBackend)
    assert lazy.calls == 1
    assert len(scores[0]) == 2

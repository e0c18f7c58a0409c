"""LoRA fine-tuning on the tiny model: outputs, answer-only loss, sampling, schedule,
resuming from a checkpoint, class balance by loss, continuing from an adapter."""

from __future__ import annotations

import json
import math
from collections import Counter

import pytest

from semievol.config import LoraConfig, ModelConfig, TaskConfig, TrainConfig
from semievol.errors import SemiEvolError
from semievol.task.formats import Example, build_messages, render_prompt
from semievol.training.finetune import TrainExample, lr_at, sample_order, tokenize, train_lora

torch = pytest.importorskip("torch")

TASK = TaskConfig(kind="choice", labels=["billing", "outage", "equipment"])
QUESTIONS = [("Charged twice on my bill", "billing"), ("Refund the late fee", "billing"),
             ("Why did my invoice go up this month", "billing"),
             ("Internet down since this morning", "outage")]
LORA = LoraConfig(r=2, alpha=4, dropout=0.0)


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from semievol.model.loading import load_tokenizer

    return load_tokenizer(str(tiny_model_dir))


@pytest.fixture(scope="module")
def examples(tokenizer):
    eot = tokenizer.eos_token
    return [TrainExample(render_prompt(tokenizer, build_messages(TASK, Example(q, TASK.labels))),
                         a + eot, a) for q, a in QUESTIONS]


def model_config(tiny_model_dir) -> ModelConfig:
    return ModelConfig(name_or_path=str(tiny_model_dir), device="cpu", dtype="float32")


def train_config(**overrides) -> TrainConfig:
    values = dict(max_steps=2, batch_size=2, checkpoint_every=0, learning_rate=1e-2,
                  class_balance="none")
    values.update(overrides)
    return TrainConfig(**values)


def adapter_tensors(folder) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "adapter_model.safetensors"))


# -- tokenisation: the answer, and only the answer, is the target -----------------------------
def test_tokenize_marks_where_the_answer_starts(tokenizer, examples):
    rows = tokenize(tokenizer, examples, max_length=256)
    assert len(rows) == len(examples)
    for (ids, start), e in zip(rows, examples):
        prompt = tokenizer(e.prompt, add_special_tokens=False)["input_ids"]
        answer = tokenizer(e.answer, add_special_tokens=False)["input_ids"]
        assert ids[:start] == prompt and ids[start:] == answer
        assert ids[-1] == tokenizer.eos_token_id   # the end of turn is learnt too


def test_prompt_content_never_enters_the_targets(tokenizer):
    short = TrainExample("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
                         "outage<|im_end|>", "outage")
    long = TrainExample("<|im_start|>user\nsomething else entirely, and much longer than the "
                        "other prompt<|im_end|>\n<|im_start|>assistant\n",
                        "outage<|im_end|>", "outage")
    (a, start_a), (b, start_b) = tokenize(tokenizer, [short, long], max_length=256)
    assert start_a != start_b and a[:start_a] != b[:start_b]
    assert a[start_a:] == b[start_b:]                # same targets whatever the prompt
    # Cut to fit: the prompt loses its beginning, the answer stays whole.
    (cut, start), = tokenize(tokenizer, [long], max_length=8)
    answer = tokenizer(long.answer, add_special_tokens=False)["input_ids"]
    assert len(cut) == 8 and cut[start:] == answer and cut[:start] == b[:start_b][-start:]


def naive_answer_losses(tiny_model_dir, tokenizer, examples):
    """Per example: the cross-entropies of its answer tokens, and of all its tokens."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    out = []
    for ids, start in tokenize(tokenizer, examples, max_length=128):
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids]), use_cache=False).logits[0]
        ce = torch.nn.functional.cross_entropy(logits[:-1].float(), torch.tensor(ids[1:]),
                                               reduction="none")
        out.append((ce[start - 1:].tolist(), ce.tolist()))
    return out


def test_first_step_loss_is_over_answer_tokens_only(tiny_model_dir, tokenizer, examples,
                                                     tmp_path):
    # LoRA starts with B = 0, so step 1 sees the base model; one batch holds every example.
    per_example = naive_answer_losses(tiny_model_dir, tokenizer, examples)
    answer_tokens = [t for answer, _ in per_example for t in answer]
    all_tokens = [t for _, every in per_example for t in every]
    expected = sum(answer_tokens) / len(answer_tokens)
    wrong = sum(all_tokens) / len(all_tokens)
    assert abs(expected - wrong) > 1e-3    # the tolerance below can tell them apart

    seen = []
    train_lora(examples, tmp_path / "plain", model=model_config(tiny_model_dir), lora=LORA,
               train=train_config(max_steps=1, batch_size=len(examples)),
               metric=lambda name, step, value: seen.append((name, step, value)))
    # The loss, then the rate the step used (one step of warm-up: the peak / 1).
    assert [(n, s) for n, s, _ in seen] == [("train_loss", 1), ("learning_rate", 1)]
    assert seen[0][2] == pytest.approx(expected, rel=1e-5)
    assert seen[1][2] == pytest.approx(train_config().learning_rate)

    # class_balance="loss": each token weighted by its example's inverse class frequency
    # (3 billing, 1 outage -> 4/6 and 4/2).
    weights = {"billing": 4 / 6, "outage": 4 / 2}
    num = sum(weights[e.label] * sum(answer) for e, (answer, _) in zip(examples, per_example))
    den = sum(weights[e.label] * len(answer) for e, (answer, _) in zip(examples, per_example))
    seen.clear()
    summary = train_lora(examples, tmp_path / "weighted", model=model_config(tiny_model_dir),
                         lora=LORA, train=train_config(max_steps=1, batch_size=len(examples),
                                                       class_balance="loss"),
                         metric=lambda name, step, value: name == "train_loss" and
                         seen.append(value))
    assert seen[0] == pytest.approx(num / den, rel=1e-5)
    assert seen[0] != pytest.approx(expected, rel=1e-5)
    assert math.isfinite(summary["final_loss"])


# -- what a run writes, resuming, continuing ----------------------------------------------
RESUMABLE = dict(max_steps=6, checkpoint_every=2, class_balance="sampler")


@pytest.fixture(scope="module")
def straight_run(tiny_model_dir, examples, tmp_path_factory):
    """An uninterrupted 6-step run: (output folder, summary, progress calls, metric calls)."""
    out = tmp_path_factory.mktemp("straight") / "adapter"
    progress, metrics = [], []
    summary = train_lora(examples, out, model=model_config(tiny_model_dir), lora=LORA,
                         train=train_config(**RESUMABLE),
                         progress=lambda d, t, m: progress.append((d, t)),
                         metric=lambda n, s, v: n == "train_loss" and metrics.append((n, s, v)))
    return out, summary, progress, metrics


def test_train_lora_writes_adapter_config_and_summary(tiny_model_dir, examples, straight_run):
    out, summary, progress, metrics = straight_run
    assert (out / "adapter_model.safetensors").is_file()
    assert (out / "adapter_config.json").is_file()
    assert not (out / "checkpoint").exists()      # checkpoints were written, then removed
    resolved = json.loads((out / "semievol_config.json").read_text())
    assert resolved["train"]["max_steps"] == 6 and resolved["train"]["class_balance"] == "sampler"
    assert resolved["lora"]["r"] == 2 and resolved["model"]["name_or_path"] == str(tiny_model_dir)
    assert resolved["examples"] == len(examples) and resolved["init_adapter"] is None
    saved = json.loads((out / "training.json").read_text())
    assert saved["steps"] == 6 and saved["resumed_from"] == 0 and len(saved["losses"]) == 6
    assert saved["final_loss"] == saved["losses"][-1] == summary["final_loss"]
    assert saved["losses"] == pytest.approx([v for _, _, v in metrics])
    assert all(math.isfinite(x) and x > 0 for x in saved["losses"])
    assert progress == [(s, 6) for s in range(1, 7)]
    assert [(n, s) for n, s, _ in metrics] == [("train_loss", s) for s in range(1, 7)]
    # The adapter learnt something: LoRA B starts at zero and moved.
    assert any("lora_B" in k and v.abs().max() > 1e-4 for k, v in adapter_tensors(out).items())


def test_empty_training_set_is_refused(tiny_model_dir, tmp_path):
    with pytest.raises(SemiEvolError, match="empty"):
        train_lora([], tmp_path / "none", model=model_config(tiny_model_dir), lora=LORA,
                   train=train_config())
    assert not (tmp_path / "none" / "adapter_model.safetensors").exists()


class Interrupted(Exception):
    pass


def stop_at(step: int):
    """A progress callback that interrupts the training once `step` has finished."""
    def progress(done, total, message):
        if done == step:
            raise Interrupted
    return progress


DROPOUT = LoraConfig(r=2, alpha=4, dropout=0.3)
"""With dropout the loss depends on the torch RNG: a resume is exact only if it is restored."""


def test_resume_after_an_interruption_is_exact(tiny_model_dir, examples, tmp_path):
    train = train_config(**RESUMABLE)
    straight = tmp_path / "straight"
    train_lora(examples, straight, model=model_config(tiny_model_dir), lora=DROPOUT, train=train)
    out = tmp_path / "resumable"
    first_losses = []
    with pytest.raises(Interrupted):
        train_lora(examples, out, model=model_config(tiny_model_dir), lora=DROPOUT, train=train,
                   progress=stop_at(4),
                   metric=lambda n, s, v: n == "train_loss" and first_losses.append(v))
    checkpoint = out / "checkpoint"
    # Nothing pickled: JSON for the state, safetensors for the tensors.
    assert sorted(p.name for p in checkpoint.iterdir()) == [
        "README.md", "adapter_config.json", "adapter_model.safetensors",
        "optimizer.safetensors", "state.json"]
    assert json.loads((checkpoint / "state.json").read_text())["step"] == 4
    assert not (out / "training.json").exists()
    assert len(first_losses) == 4   # step 4 finished (and was saved) before the stop

    steps = []
    summary = train_lora(examples, out, model=model_config(tiny_model_dir), lora=DROPOUT,
                         train=train,
                         metric=lambda n, s, v: n == "train_loss" and steps.append(s))
    saved = json.loads((out / "training.json").read_text())
    assert saved["resumed_from"] == 4 == summary["resumed_from"]
    assert saved["steps"] == 6 and len(saved["losses"]) == 6
    assert saved["losses"][:4] == first_losses
    assert steps == [5, 6]
    assert not checkpoint.exists()
    # Data order, optimizer and RNG restored: the resumed run is the uninterrupted one,
    # bit for bit (dropout included).
    assert saved["losses"] == json.loads((straight / "training.json").read_text())["losses"]
    resumed, direct = adapter_tensors(out), adapter_tensors(straight)
    assert resumed.keys() == direct.keys()
    for key in direct:
        torch.testing.assert_close(resumed[key], direct[key], atol=0, rtol=0)


PAYLOAD = """
import os, pickle
class Payload:
    def __reduce__(self):
        return (os.system, ("touch " + {marker!r},))
with open({target!r}, "wb") as f:
    pickle.dump(Payload(), f)
"""


def test_a_planted_pickle_in_a_checkpoint_never_runs(tiny_model_dir, examples, tmp_path,
                                                     capfd):
    import subprocess
    import sys

    out = tmp_path / "adapter"
    train = train_config(**RESUMABLE)
    with pytest.raises(Interrupted):
        train_lora(examples, out, model=model_config(tiny_model_dir), lora=LORA, train=train,
                   progress=stop_at(4))
    marker = tmp_path / "pwned"
    # A pickle payload planted as the old format's state.pt, and a forged state.json that
    # claims this training's fingerprint but points to nothing loadable.
    subprocess.run([sys.executable, "-c", PAYLOAD.format(marker=str(marker),
                    target=str(out / "checkpoint" / "state.pt"))], check=True)
    assert not marker.exists()
    summary = train_lora(examples, out, model=model_config(tiny_model_dir), lora=LORA,
                         train=train)
    assert not marker.exists()  # the payload was never unpickled
    assert summary["resumed_from"] == 4  # the real checkpoint beside it is still used
    assert "pickled files are never loaded" in capfd.readouterr().err
    # A checkpoint whose state.json does not match this training is not used at all.
    with pytest.raises(Interrupted):
        train_lora(examples, tmp_path / "other", model=model_config(tiny_model_dir), lora=LORA,
                   train=train, progress=stop_at(2))
    state = tmp_path / "other" / "checkpoint" / "state.json"
    forged = json.loads(state.read_text())
    forged["fingerprint"] = "0" * 64
    state.write_text(json.dumps(forged))
    assert train_lora(examples, tmp_path / "other", model=model_config(tiny_model_dir),
                      lora=LORA, train=train)["resumed_from"] == 0


def test_init_adapter_continues_from_an_adapter(tiny_model_dir, examples, straight_run,
                                                tmp_path):
    first = straight_run[0]
    start = adapter_tensors(first)
    # A vanishing learning rate: the continued adapter stays where the first one ended
    # (a fresh one would be at its B = 0 initialisation).
    continued = tmp_path / "continued"
    train_lora(examples, continued, model=model_config(tiny_model_dir), lora=LORA,
               train=train_config(max_steps=1, learning_rate=1e-9), init_adapter=first)
    after = adapter_tensors(continued)
    assert after.keys() == start.keys()
    assert any("lora_B" in k and v.abs().max() > 1e-4 for k, v in after.items())
    for key in start:
        torch.testing.assert_close(after[key], start[key], atol=1e-6, rtol=0)
    resolved = json.loads((continued / "semievol_config.json").read_text())
    assert resolved["init_adapter"] == str(first)


# -- sampling and schedule (pure) ----------------------------------------------------------
def test_balanced_sampling_draws_a_minority_class_as_often_as_the_majority():
    labels = ["majority"] * 90 + ["minority"] * 10
    order = sample_order(labels, steps=500, batch=8, balance=True, seed=0)
    assert len(order) == 4000
    counts = Counter(labels[i] for i in order)
    assert 0.45 < counts["minority"] / len(order) < 0.55
    assert sample_order(labels, 500, 8, balance=True, seed=0) == order      # seeded
    assert sample_order(labels, 500, 8, balance=True, seed=1) != order


def test_unbalanced_sampling_follows_epochs():
    labels = ["majority"] * 90 + ["minority"] * 10
    order = sample_order(labels, steps=25, batch=10, balance=False, seed=0)
    assert len(order) == 250
    assert sorted(order[:100]) == list(range(100))        # each epoch is a permutation
    assert sorted(order[100:200]) == list(range(100))
    assert len(set(order[200:])) == 50                    # a partial third epoch, no repeats
    assert order[:100] != list(range(100))                # shuffled
    assert Counter(labels[i] for i in order[:200])["minority"] == 20


def test_learning_rate_warms_up_then_decays_to_zero():
    peak, total, warmup = 1e-3, 100, 10
    rates = [lr_at(s, total, warmup, peak) for s in range(total)]
    assert rates[0] == pytest.approx(peak / warmup)
    assert all(a < b for a, b in zip(rates[:warmup], rates[1:warmup]))    # linear warm-up
    assert rates[warmup - 1] == pytest.approx(peak) and rates[warmup] == pytest.approx(peak)
    assert all(a >= b for a, b in zip(rates[warmup:], rates[warmup + 1:]))  # cosine decay
    middle = warmup + (total - warmup) // 2
    assert rates[middle] == pytest.approx(peak / 2)
    assert rates[-1] < peak * 1e-3
    assert lr_at(total, total, warmup, peak) == pytest.approx(0.0, abs=1e-12)
    assert lr_at(0, 5, 0, peak) == pytest.approx(peak)                   # no warm-up


# -- LoRA dropout: one mask per input ----------------------------------------------------------
def test_projections_of_one_input_share_a_dropout_mask_and_others_draw_their_own(tiny_model_dir):
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from semievol.training.lora_dropout import SharedInputDropout, share_dropout_masks

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir), PeftLoraConfig(
        r=2, lora_alpha=4, lora_dropout=0.5, target_modules="all-linear", task_type="CAUSAL_LM"))
    model.train()
    shared = share_dropout_masks(model)
    assert len(shared) == 2 * 2  # 2 layers x (attention: q/k/v/o, MLP: gate/up/down)
    assert all(isinstance(d, SharedInputDropout) for d in shared)
    seen = {}
    layer = model.get_base_model().model.layers[0]
    for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
        getattr(layer.self_attn, name).lora_A["default"].register_forward_hook(
            lambda m, args, out, name=name: seen.__setitem__(name, args[0].detach().clone()))
    for name in ("gate_proj", "up_proj", "down_proj"):
        getattr(layer.mlp, name).lora_A["default"].register_forward_hook(
            lambda m, args, out, name=name: seen.__setitem__(name, args[0].detach().clone()))
    torch.manual_seed(0)
    model(input_ids=torch.tensor([[5, 6, 7, 8, 9, 10]])).logits.sum().backward()
    zeros = {name: t == 0 for name, t in seen.items()}
    assert torch.equal(zeros["q_proj"], zeros["k_proj"]) and torch.equal(zeros["q_proj"],
                                                                         zeros["v_proj"])
    assert torch.equal(zeros["gate_proj"], zeros["up_proj"])
    assert 0 < zeros["q_proj"].float().mean() < 1  # a real mask, about half dropped
    # The same input twice in one step draws one mask; a new step draws a new one.
    for d in shared:
        d.forget()
    first = dict(seen)
    model(input_ids=torch.tensor([[5, 6, 7, 8, 9, 10]]))
    assert not torch.equal(first["q_proj"] == 0, seen["q_proj"] == 0)
    model.eval()  # no dropout at all in eval mode
    model(input_ids=torch.tensor([[5, 6, 7, 8, 9, 10]]))
    assert not (seen["q_proj"] == 0).any()


def test_bit_dropout_drops_at_rate_p_keeps_the_expectation_and_repeats_under_a_seed():
    from semievol.training.lora_dropout import LEVELS, bit_dropout

    x = torch.ones(400_000, requires_grad=True)
    torch.manual_seed(3)
    y = bit_dropout(x, 0.05)
    rate = round(0.05 * LEVELS) / LEVELS
    dropped = (y == 0).float().mean().item()
    assert abs(dropped - rate) < 0.002          # ~5 standard deviations of 400k draws
    assert abs(y.mean().item() - 1.0) < 0.003   # kept values scaled by 1 / (1 - rate)
    assert torch.allclose(y[y != 0], torch.tensor(1 / (1 - rate)))
    y.sum().backward()                          # the gradient is the same mask and scale
    assert torch.equal(x.grad, y.detach())
    torch.manual_seed(3)
    assert torch.equal(bit_dropout(torch.ones(400_000), 0.05), y.detach())
    assert not torch.equal(bit_dropout(torch.ones(400_000), 0.05), y.detach())
    assert bit_dropout(x, 0.0) is x
    torch.manual_seed(0)
    assert abs((bit_dropout(torch.ones(100_000), 0.5) == 0).float().mean().item() - 0.5) < 0.01


def test_the_fused_lora_forward_gives_peft_s_outputs_and_gradients(tiny_model_dir):
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from semievol.training.lora_forward import fuse_lora_forward

    def model_and_grads(fused: bool):
        torch.manual_seed(0)
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                               PeftLoraConfig(r=2, lora_alpha=4, lora_dropout=0.0,
                                              target_modules="all-linear",
                                              task_type="CAUSAL_LM"))
        for name, p in model.named_parameters():
            if "lora_B" in name:  # B starts at zero: give the adapter something to add
                torch.nn.init.normal_(p, std=0.5)
        model.train()
        if fused:
            assert fuse_lora_forward(model) == 2 * 7  # 2 layers x q/k/v/o/gate/up/down
        logits = model(input_ids=torch.tensor([[5, 6, 7, 8, 9, 10], [3, 4, 5, 6, 7, 8]])).logits
        logits.pow(2).mean().backward()
        return logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters()
                                 if p.requires_grad}

    plain_logits, plain_grads = model_and_grads(False)
    fused_logits, fused_grads = model_and_grads(True)
    assert torch.allclose(plain_logits, fused_logits, atol=1e-5)
    assert plain_grads.keys() == fused_grads.keys() and len(plain_grads) == 2 * 7 * 2
    for name in plain_grads:
        assert torch.allclose(plain_grads[name], fused_grads[name], rtol=1e-4, atol=1e-6), name
    assert any(g.abs().sum() > 0 for n, g in fused_grads.items() if "lora_A" in n)


def test_training_with_lora_dropout_runs_and_saves(tiny_model_dir, examples, tmp_path):
    summary = train_lora(examples, tmp_path / "a", model=model_config(tiny_model_dir),
                         lora=LoraConfig(r=2, alpha=4, dropout=0.3), train=train_config())
    assert summary["steps"] == 2 and math.isfinite(summary["final_loss"])
    assert (tmp_path / "a" / "adapter_model.safetensors").exists()


# -- long sequences: a micro-batch in pieces ---------------------------------------------------
def test_a_batch_of_long_sequences_runs_in_pieces_within_the_attention_cap():
    from semievol.training.finetune import memory_pieces

    rows = [([0] * n, n - 2) for n in (50, 1000, 400, 900, 60)]
    assert memory_pieces(rows, [0, 4, 2], cells=10 ** 6) == [[0, 4, 2]]  # fits: as it was
    pieces = memory_pieces(rows, [0, 1, 2, 3, 4], cells=10 ** 6)
    assert sorted(i for p in pieces for i in p) == [0, 1, 2, 3, 4]
    assert all(len(p) * len(rows[p[0]][0]) ** 2 <= 10 ** 6 for p in pieces if len(p) > 1)
    assert pieces[0] == [1]            # the longest first; one sequence is never split
    assert memory_pieces(rows, [1, 3], cells=10) == [[1], [3]]


def step_gradients(tiny_model_dir, examples, config):
    """(loss, tokens, the LoRA gradients) of one training step from a fresh start."""
    from semievol.training import finetune

    t = finetune.prepare(examples, model=model_config(tiny_model_dir), lora=LORA,
                         train=config, init_adapter=None, resume_from=None)
    seen, real = [], t.optimizer

    class Capture:  # stands in for the optimizer: keeps the gradients of the step
        param_groups = real.param_groups

        def step(self):
            seen.append([p.grad.clone() for p in t.params])

        def zero_grad(self, set_to_none=True):
            real.zero_grad(set_to_none=set_to_none)

    t.optimizer = Capture()
    loss, tokens = finetune.train_step(t, 0, config)
    return loss, tokens, seen[0]


def test_pieces_give_the_gradient_of_the_whole_batch(tiny_model_dir, examples, monkeypatch):
    from semievol.training import finetune

    config = train_config(batch_size=4, class_balance="loss")

    def gradients(pieces_of):
        monkeypatch.setattr(finetune, "memory_pieces", pieces_of)
        return step_gradients(tiny_model_dir, examples, config)

    whole = gradients(lambda rows, batch: [batch])
    single = gradients(lambda rows, batch: [[i] for i in batch])
    assert whole[0] == pytest.approx(single[0], rel=1e-5) and whole[1] == single[1]
    for a, b in zip(whole[2], single[2]):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-7)
    assert any(g.abs().sum() > 0 for g in whole[2])


def test_steps_come_from_the_epochs_but_never_fewer_than_min_steps():
    assert TrainConfig(epochs=2, batch_size=8).total_steps(51) == 40       # 13 by the epochs
    assert TrainConfig(epochs=2, batch_size=8).total_steps(400) == 100     # the epochs decide
    assert TrainConfig(epochs=2, batch_size=8, min_steps=0).total_steps(51) == 13
    assert TrainConfig(epochs=2, batch_size=4, grad_accum=2, min_steps=0).total_steps(51) == 13
    assert TrainConfig(max_steps=3).total_steps(400) == 3                  # max_steps wins
    with pytest.raises(SemiEvolError):
        TrainConfig(min_steps=-1)


def test_example_weights_scale_each_examples_loss(tiny_model_dir, examples):
    """Weight 0 is as if the example were not there; equal weights change nothing (the loss
    is a weighted mean); the weight enters the fingerprint only where it is not 1."""
    import dataclasses

    from semievol.training import finetune

    def step(exs, batch_size):
        loss, _, gradients = step_gradients(tiny_model_dir, exs,
                                            train_config(batch_size=batch_size))
        return loss, gradients

    def weighted(*weights):
        return [dataclasses.replace(e, weight=w) for e, w in zip(examples, weights)]

    half = step(weighted(1.0, 0.0, 1.0, 0.0), 4)
    alone = step([examples[0], examples[2]], 2)
    assert half[0] == pytest.approx(alone[0], rel=1e-5)
    for a, b in zip(half[1], alone[1]):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-7)
    plain, scaled = step(examples, 4), step(weighted(0.5, 0.5, 0.5, 0.5), 4)
    assert plain[0] == pytest.approx(scaled[0], rel=1e-5)
    nothing = step(weighted(0.0, 0.0, 0.0, 0.0), 4)  # no division by zero: no step at all
    assert nothing[0] == 0.0 and all(not g.abs().sum() for g in nothing[1])
    resolved = {"train": {}}
    assert finetune.fingerprint(resolved, examples) == finetune.fingerprint(
        resolved, weighted(1.0, 1.0, 1.0, 1.0))
    assert finetune.fingerprint(resolved, examples) != finetune.fingerprint(
        resolved, weighted(1.0, 0.5, 1.0, 1.0))

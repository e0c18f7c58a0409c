"""The context budget on long synthetic items, with the real (bundled) tokenizer: the
template, instruction and answer cue survive; demonstrations are dropped whole before the
item is touched; a long item is cut in the middle keeping its beginning and end; training
and scoring build the same prompt in the same budget."""

from __future__ import annotations

import pytest

from semievol.config import ModelConfig, TaskConfig
from semievol.model.prompts import DEFAULT_BUDGET_CAP, PromptBuilder, resolve_budget
from semievol.task.formats import Example, option_targets

TASK = TaskConfig(kind="choice", labels=["No", "Maybe", "Yes"],
                  instruction="Answer the research question from the abstract.")
START, END = "ABSTRACT-BEGINS-HERE", "QUESTION: does it work? Yes, No or Maybe?"


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from semievol.model.loading import load_tokenizer

    return load_tokenizer(str(tiny_model_dir))


def long_text(words: int) -> str:
    return f"{START} " + " ".join(f"finding{i % 97}" for i in range(words)) + f" {END}"


def demo(i: int, words: int = 60) -> Example:
    return Example(f"demo {i} " + long_text(words), TASK.labels, TASK.labels[i % 3])


def test_a_prompt_that_fits_is_left_whole(tokenizer):
    builder = PromptBuilder(TASK, tokenizer, 1024)
    prompt = builder.item(Example("short question", TASK.labels), [demo(0, 5), demo(1, 5)])
    assert (prompt.cut_tokens, prompt.demos_shown, prompt.demos_asked) == (0, 2, 2)
    assert prompt.tokens == builder.count(prompt.text) <= 1024


def test_demonstrations_are_dropped_whole_before_the_item_is_cut(tokenizer):
    builder = PromptBuilder(TASK, tokenizer, 600)
    item = Example(long_text(100), TASK.labels)
    prompt = builder.item(item, [demo(0), demo(1), demo(2)])
    assert prompt.cut_tokens == 0 and 0 < prompt.demos_shown < 3  # nearest kept, others out
    assert "demo 0 " in prompt.text and "demo 2 " not in prompt.text
    assert prompt.text.count(END) == prompt.demos_shown + 1  # demonstrations whole, never cut
    reserve = builder.choice_reserve(TASK.labels)
    assert prompt.tokens + reserve <= 600
    assert builder.stats.short_of_demos == 1 and builder.stats.cut == 0


def test_a_long_item_is_cut_in_the_middle_and_the_frame_survives(tokenizer):
    builder = PromptBuilder(TASK, tokenizer, 256)
    prompt = builder.item(Example(long_text(2000), TASK.labels), [demo(0)])
    assert prompt.demos_shown == 0 and prompt.cut_tokens > 1500
    text = prompt.text
    assert START in text and END in text                      # beginning and end kept
    assert "tokens cut here to fit the context budget" in text  # visibly
    assert TASK.instruction in text and "Answer with exactly one of: No, Maybe, Yes" in text
    assert text.endswith("<|im_start|>assistant\n")           # the answer cue is whole
    assert prompt.tokens + builder.choice_reserve(TASK.labels) <= 256
    # Every option's target still fits after the prompt.
    for target in option_targets(TASK, TASK.labels, tokenizer):
        assert prompt.tokens + builder.count(target) <= 256


def test_training_and_scoring_see_the_same_prompt_in_the_same_budget(tokenizer):
    example = Example(long_text(1500), TASK.labels)
    training = PromptBuilder(TASK, tokenizer, 300)
    prompt, target = training.training(example, "Maybe")
    scoring = PromptBuilder(TASK, tokenizer, 300).item(example)
    assert prompt.text == scoring.text  # the eq. 6 prompt is the training prompt
    assert prompt.tokens + training.count(target) <= 300
    assert target == "Maybe" + tokenizer.eos_token


def test_the_reflection_prompt_fits_too(tokenizer):
    builder = PromptBuilder(TASK, tokenizer, 256)
    prompt = builder.reflection(Example(long_text(1500), TASK.labels), ["No", "Yes", None])
    assert "Assistant 3: (no answer)" in prompt.text and END in prompt.text
    assert prompt.cut_tokens > 0 and prompt.tokens <= 256


def test_the_budget_defaults_from_the_model_window_capped(tiny_model_dir):
    assert resolve_budget(ModelConfig(name_or_path=str(tiny_model_dir))) == \
        min(1024, DEFAULT_BUDGET_CAP)   # the tiny model's window is 1,024
    assert resolve_budget(ModelConfig(name_or_path=str(tiny_model_dir),
                                      context_budget=300)) == 300

"""Prompts (system / demonstrations / question), reflection prompts, the chat template,
parsing of free-text answers and the answer checkers."""

from __future__ import annotations

import pytest

from semievol.config import TaskConfig
from semievol.task.answers import is_correct, normalize, parse_choice, parse_open
from semievol.task.formats import Example, build_messages, reflection_messages, render_prompt

LABELS = ["billing", "outage", "equipment"]
WORDS = TaskConfig(kind="choice", labels=LABELS, answer_format="words",
                   instruction="Classify the support ticket.")
LETTER = TaskConfig(kind="choice", labels=LABELS, answer_format="letter")
PER_ITEM = TaskConfig(kind="choice", labels=None, answer_format="words")
PER_ITEM_LETTER = TaskConfig(kind="choice", labels=None, answer_format="letter")

QUESTION = Example("My router is on fire", LABELS)
NEAREST = Example("Router will not power on", LABELS, "equipment")
SECOND = Example("Charged twice this month", LABELS, "billing")


def roles(messages):
    return [m["role"] for m in messages]


# -- build_messages ------------------------------------------------------------------------
def test_zero_shot_is_system_then_question():
    messages = build_messages(WORDS, QUESTION)
    assert roles(messages) == ["system", "user"]
    system = messages[0]["content"]
    assert system.startswith("Classify the support ticket.")
    assert "Answer with exactly one of: billing, outage, equipment." in system
    # A fixed label set is named in the system turn, not repeated under every question.
    assert messages[1]["content"] == "My router is on fire"


def test_demonstrations_become_turns_in_order_nearest_first():
    messages = build_messages(WORDS, QUESTION, [NEAREST, SECOND])
    assert roles(messages) == ["system", "user", "assistant", "user", "assistant", "user"]
    assert [m["content"] for m in messages[1:]] == [
        "Router will not power on", "equipment",
        "Charged twice this month", "billing",
        "My router is on fire"]
    # Same demonstrations in the other order give the other order of turns.
    swapped = build_messages(WORDS, QUESTION, [SECOND, NEAREST])
    assert [swapped[1]["content"], swapped[2]["content"]] == ["Charged twice this month", "billing"]


def test_with_answer_appends_the_assistant_turn():
    labeled = Example("Broadband keeps dropping", LABELS, "outage")
    messages = build_messages(WORDS, labeled, with_answer=True)
    assert roles(messages) == ["system", "user", "assistant"]
    assert messages[-1]["content"] == "outage"
    assert roles(build_messages(WORDS, labeled)) == ["system", "user"]


def test_letter_format_lists_options_and_answers_with_letters():
    messages = build_messages(LETTER, QUESTION, [NEAREST, SECOND], with_answer=False)
    assert "letter of the correct option" in messages[0]["content"]
    assert messages[1]["content"] == ("Router will not power on\n"
                                      "A. billing\nB. outage\nC. equipment")
    assert messages[2]["content"] == "C"      # equipment
    assert messages[4]["content"] == "A"      # billing
    assert messages[-1]["content"].endswith("A. billing\nB. outage\nC. equipment")
    answered = build_messages(LETTER, Example("No internet", LABELS, "outage"), with_answer=True)
    assert answered[-1]["content"] == "B"


def test_per_item_options_are_shown_in_the_user_turn():
    item = Example("Capital of France?", ["Berlin", "Paris", "Rome"], "Paris")
    demo = Example("Capital of Italy?", ["Madrid", "Rome"], "Rome")
    messages = build_messages(PER_ITEM, item, [demo], with_answer=True)
    assert "text of the correct option" in messages[0]["content"]
    assert messages[1]["content"] == "Capital of Italy?\nOptions:\n- Madrid\n- Rome"
    assert messages[2]["content"] == "Rome"
    assert messages[3]["content"] == "Capital of France?\nOptions:\n- Berlin\n- Paris\n- Rome"
    assert messages[4]["content"] == "Paris"
    lettered = build_messages(PER_ITEM_LETTER, item, [demo], with_answer=True)
    assert lettered[1]["content"] == "Capital of Italy?\nA. Madrid\nB. Rome"
    assert lettered[2]["content"] == "B" and lettered[4]["content"] == "B"


def test_open_task_asks_for_a_short_answer():
    task = TaskConfig(kind="open", checker="numeric")
    messages = build_messages(task, Example("2 + 2?", None, "4"), with_answer=True)
    assert "final number only" in messages[0]["content"]
    text = build_messages(TaskConfig(kind="open", checker="normalized"),
                          Example("Capital of France?", None, "Paris"), with_answer=True)
    assert "short final answer" in text[0]["content"]
    assert messages[1]["content"] == "2 + 2?" and messages[2]["content"] == "4"


def test_demonstrations_from_the_workspace_are_nearest_first(filled_workspace):
    from semievol.workspace.items import load_items

    item_id = filled_workspace.scalar("SELECT id FROM items WHERE split='unlabeled' ORDER BY id")
    ranked = [r["question"] for r in filled_workspace.query(
        "SELECT i.question FROM neighbours n JOIN items i ON i.id = n.neighbour_id "
        "WHERE n.item_id=? ORDER BY n.rank", (item_id,))]
    (item,) = load_items(filled_workspace, [item_id])
    assert len(ranked) == 3
    assert [d.question for d in item.demonstrations] == ranked
    messages = build_messages(filled_workspace.task, item.example, item.demonstrations[:2])
    assert [messages[1]["content"], messages[3]["content"]] == ranked[:2]
    assert messages[2]["content"] == item.demonstrations[0].answer


# -- reflection ----------------------------------------------------------------------------
def test_reflection_lists_every_collaborators_answer():
    messages = reflection_messages(WORDS, QUESTION, ["billing", "equipment", None, "equipment"])
    assert roles(messages) == ["system", "user"]
    content = messages[1]["content"]
    assert content.startswith("My router is on fire")
    for line in ("- Assistant 1: billing", "- Assistant 2: equipment",
                 "- Assistant 3: (no answer)", "- Assistant 4: equipment"):
        assert line in content
    assert "Assistant 5" not in content
    positions = [content.index(f"Assistant {n}:") for n in (1, 2, 3, 4)]
    assert positions == sorted(positions)


# -- chat template -------------------------------------------------------------------------
def test_render_prompt_with_the_real_tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    prompt = render_prompt(tokenizer, build_messages(WORDS, QUESTION, [NEAREST, SECOND]))
    assert prompt.endswith("<|im_start|>assistant\n")
    assert prompt.count("<|im_start|>assistant\n") == 3  # two demonstrations + the open turn
    assert "equipment<|im_end|>" in prompt and "billing<|im_end|>" in prompt
    assert prompt.index("Router will not power on") < prompt.index("Charged twice") \
        < prompt.index("My router is on fire")
    assert "Classify the support ticket." in prompt


# -- parsing -------------------------------------------------------------------------------
@pytest.mark.parametrize("text, expected", [
    ("B", "outage"), ("B.", "outage"), ("(C)", "equipment"), ("A) billing", "billing"),
    ("C: the router", "equipment"), ("  b", None),
    # A word answer in letter format is read as the word, not as its capital letter.
    ("Billing", "billing"), ("Equipment.", "equipment"),
    ("D", None),  # past the last option
])
def test_parse_choice_letters(text, expected):
    assert parse_choice(text, LABELS, "letter") == expected


@pytest.mark.parametrize("text, expected", [
    ("billing", "billing"), ("  Outage. ", "outage"), ("EQUIPMENT", "equipment"),
    ("It is an outage, not billing", "outage"),        # earliest mention wins
    ("billing or maybe an outage", "billing"),
    ("I have no idea", None), ("", None),
])
def test_parse_choice_words(text, expected):
    assert parse_choice(text, LABELS, "words") == expected


def test_parse_choice_prefers_an_exact_match_over_a_mention():
    options = ["not sure", "sure"]
    assert parse_choice("sure", options, "words") == "sure"
    assert parse_choice("Not sure.", options, "words") == "not sure"


@pytest.mark.parametrize("text, expected", [
    ("Paris", "Paris"), ("Answer: Paris\nBecause it is the capital", "Paris"),
    ("\n\n  Final answer - 42\n", "42"), ("answer:\nRome", "Rome"), ("", ""), ("  \n ", ""),
])
def test_parse_open(text, expected):
    assert parse_open(text) == expected


def test_normalize():
    assert normalize("  The Router!!  is   BROKEN. ") == "the router is broken"


# -- checkers ------------------------------------------------------------------------------
def test_is_correct_exact():
    task = TaskConfig(kind="open", checker="exact")
    assert is_correct(task, " Paris ", "Paris")
    assert not is_correct(task, "paris", "Paris")
    assert not is_correct(task, "Paris.", "Paris")
    assert not is_correct(task, None, "Paris")


def test_is_correct_normalized():
    task = TaskConfig(kind="open", checker="normalized")
    assert is_correct(task, "paris.", "Paris")
    assert is_correct(task, "New  York!", "new york")
    assert not is_correct(task, "Paris, France", "Paris")


def test_is_correct_numeric_with_tolerance():
    task = TaskConfig(kind="open", checker="numeric", tolerance=0.01)
    assert is_correct(task, "The answer is 1,000", "1000")
    assert is_correct(task, "101", "100")          # within 1 % of 100
    assert not is_correct(task, "102", "100")
    assert is_correct(task, "-0.005", "0")          # below 1: absolute tolerance 0.01
    assert not is_correct(task, "0.02", "0")
    assert is_correct(task, "3.14159", "3.14")
    assert not is_correct(task, "no number here", "3")
    assert not is_correct(task, None, "3")
    strict = TaskConfig(kind="open", checker="numeric")
    assert is_correct(strict, "42.0", "42") and not is_correct(strict, "42.001", "42")


def test_is_correct_choice():
    assert is_correct(WORDS, "Billing ", "billing")
    assert not is_correct(WORDS, "outage", "billing")
    assert not is_correct(WORDS, None, "billing")

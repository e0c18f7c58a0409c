"""Open-answer tasks: answers extracted per checker, agreement by the checker, no classes,
and an open round end to end on the tiny model."""

from __future__ import annotations

import re

import pytest
from conftest import FakeEmbedder, write_csv

from semievol.config import (CalibrationConfig, CollaboratorConfig, ModelConfig, RetrievalConfig,
                             RoundConfig, SelectionConfig, TaskConfig, TrainConfig)
from semievol.errors import SemiEvolError
from semievol.method.scoring import agreement
from semievol.task.answers import distinct_answers, extract_answer, is_correct, same_answer

NUMERIC = TaskConfig(kind="open", checker="numeric", instruction="Solve the word problem.")
TEXT = TaskConfig(kind="open", checker="normalized")
EXACT = TaskConfig(kind="open", checker="exact")


@pytest.mark.parametrize("text, expected", [
    ("The correct answer is: 27.", "27"),
    ("The answer is 10.", "10"),
    ("The correct answer is 19 apples is the sum of all possible answers.", "19"),
    ("Tom has 3 apples and buys 4, so he has 7.\n#### 7", "7"),
    ("Step 1: 12 + 30 = 42\nStep 2: 42 - 2 = 40", "40"),      # the last number
    ("So the total is \\boxed{1,250}", "1250"),
    ("She paid $1,234.50 in all.", "1234.5"),
    ("The temperature fell to −12 degrees.", "-12"),
    ("I think 4 or 5. Final answer: 5", "5"),
    ("It grew by 12% this year", "12"),
    ("3.0", "3"),
    ("1e3 grains", "1000"),
    ("No idea, sorry.", None),
    ("", None),
])
def test_numeric_extraction(text, expected):
    assert extract_answer(NUMERIC, text) == expected


@pytest.mark.parametrize("text, expected", [
    ("The answer is Paris.", "Paris"),
    ("Answer: **Paris**", "Paris"),
    ('"Paris"', "Paris"),
    ("The correct answer is the Eiffel Tower.\nBecause it is tall.", "the Eiffel Tower"),
    ("  neutral\n", "neutral"),
    ("", None),
])
def test_text_extraction(text, expected):
    assert extract_answer(TEXT, text) == expected


def test_exact_extraction_keeps_the_line_as_written():
    assert extract_answer(EXACT, "Answer: Paris, France\nmore") == "Paris, France"


def test_answers_compare_by_the_checker():
    assert same_answer(NUMERIC, "27", "27.0") and not same_answer(NUMERIC, "27", "28")
    assert same_answer(NUMERIC, "0.3333333", "0.33333333")  # within the tolerance
    assert same_answer(TEXT, "Paris", "paris.") and not same_answer(EXACT, "Paris", "paris")
    assert is_correct(NUMERIC, "1250", "1,250") and not is_correct(NUMERIC, None, "3")
    assert distinct_answers(NUMERIC, ["27", "27.0", "28", None, "27"]) == ["27", "28"]


def test_agreement_counts_by_value():
    same = lambda a, b: same_answer(NUMERIC, a, b)  # noqa: E731
    assert agreement(["27", "27.0", "27"], same) == ("27", 1.0, True)
    assert agreement(["27", "27.0", "30"], same)[:2] == ("27", pytest.approx(2 / 3))
    assert agreement(["27", "27.0", "27"]) == ("27", pytest.approx(2 / 3), False)  # as strings


def test_open_tasks_have_no_classes_in_selection():
    from semievol.curation.selection_state import for_task

    with pytest.raises(SemiEvolError, match="not classes"):
        for_task(SelectionConfig(policy="per_class"), NUMERIC)
    assert for_task(SelectionConfig(class_floor=0.3), NUMERIC).class_floor == 0.0


def test_a_reviewer_answer_is_read_by_the_checker(tmp_path):
    from semievol.curation.decisions import checked_open_label

    assert checked_open_label(NUMERIC, "1,250 apples") == "1250"
    with pytest.raises(SemiEvolError, match="has no number"):
        checked_open_label(NUMERIC, "many")


# -- an open round on the tiny model -------------------------------------------------------
PROBLEMS = [(a, b) for a in range(2, 9) for b in range(3, 9)]


def _problems(rows):
    return [{"id": f"P{a}x{b}", "text": f"Ann has {a} bags with {b} apples each. How many "
             f"apples does she have?", "answer": str(a * b)} for a, b in rows]


@pytest.fixture
def open_workspace(workspace, tmp_path):
    from semievol.method.retrieval import index_workspace
    from semievol.workspace.imports import ColumnMapping, import_file

    splits = {"labeled": PROBLEMS[:16], "unlabeled": PROBLEMS[16:28], "test": PROBLEMS[28:36]}
    for split, rows in splits.items():
        data = _problems(rows)
        if split == "unlabeled":
            data = [{**r, "answer": ""} for r in data]
        import_file(workspace, write_csv(tmp_path / f"{split}.csv", data), split, task=NUMERIC,
                    mapping=ColumnMapping(question="text", id="id",
                                          answer=None if split == "unlabeled" else "answer"))
    index_workspace(workspace, FakeEmbedder(), k=2)
    return workspace


def test_an_open_round_stores_numbers_and_no_classes(open_workspace, tiny_model_dir):
    import torch

    from semievol.rounds import steps
    from semievol.rounds.record import open_round

    torch.set_num_threads(1)
    ws = open_workspace
    config = RoundConfig(
        model=ModelConfig(name_or_path=str(tiny_model_dir), dtype="float32"),
        train=TrainConfig(max_steps=2, batch_size=4, class_balance="sampler"),
        calibration=CalibrationConfig(fraction=0.25, min_per_class=1),
        retrieval=RetrievalConfig(k=2),
        collaborators=[CollaboratorConfig("warmup", 0, 0.0, 0),
                       CollaboratorConfig("warmup", 0, 0.0, 1),
                       CollaboratorConfig("base", 2, 1.0, 2)])
    with ws.transaction():
        rnd = open_round(ws, config)
    results = steps.run_steps(ws, rnd.number, ["warmup", "label", "select", "train",
                                               "evaluate"], confirm="test",
                              embedder=FakeEmbedder())
    assert "class balance 'sampler' is off" in results["warmup"]["note"]
    assert "by_class" not in results["select"]
    answers = [r[0] for r in ws.query("SELECT answer FROM responses WHERE answer IS NOT NULL")]
    assert all(re.fullmatch(r"-?\d+(\.\d+)?(e[-+]?\d+)?", a) for a in answers), answers
    labels = [r[0] for r in ws.query("SELECT label FROM pseudo_labels")]
    assert all(x == "" or re.fullmatch(r"-?\d+(\.\d+)?(e[-+]?\d+)?", x) for x in labels)
    # The two greedy collaborators see the same prompt: they agree, by value, on every item
    # where both answered.
    rows = ws.query("SELECT item_id, collaborator, answer FROM responses WHERE collaborator < 2")
    by_item = {}
    for r in rows:
        by_item.setdefault(r["item_id"], {})[r["collaborator"]] = r["answer"]
    both = [i for i, a in by_item.items() if a.get(0) is not None and a.get(0) == a.get(1)]
    if both:
        shares = {r[0]: r[1] for r in ws.query("SELECT item_id, agreement FROM pseudo_labels")}
        assert all(shares[i] >= 2 / 3 - 1e-9 for i in both)
    report = results["evaluate"]["round"]
    assert report["macro_f1"] is None and 0.0 <= report["accuracy"] <= 1.0

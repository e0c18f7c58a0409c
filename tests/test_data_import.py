"""Importing task files: CSV / JSONL / Parquet, column mapping, and all-or-nothing validation
that reports every bad row by number."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from semievol.config import TaskConfig
from semievol.errors import SemiEvolError
from semievol.workspace.imports import ColumnMapping, import_file, parse_options, resolve_answer
from semievol.workspace.items import options_of

TEXT_MAP = ColumnMapping(question="text", answer="label", id="id")
OPTIONS_MAP = ColumnMapping(question="question", answer="answer", options="options", id="id")
PER_ITEM = TaskConfig(kind="choice", labels=None, answer_format="letter")


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def options_records():
    """Per-item options with the answer given as text, a letter, a 1-based digit (as text and
    as a JSON number) and text in another case."""
    return [
        {"id": "q1", "question": "Which colour is the sky?", "options": ["blue", "green", "red"],
         "answer": "blue"},
        {"id": "q2", "question": "Pick the even number", "options": ["3", "4", "7"],
         "answer": "B"},
        {"id": "q3", "question": "Which is a fruit?", "options": ["car", "apple"],
         "answer": "2"},
        {"id": "q4", "question": "Which is a metal?", "options": ["wood", "glass", "iron"],
         "answer": 3},
        {"id": "q5", "question": "Capital of France?", "options": ["Paris", "Rome"],
         "answer": "paris"},
        {"id": "q6", "question": "Second letter?", "options": ["x", "y", "z"], "answer": "b"},
    ]


EXPECTED_ANSWERS = {"q1": "blue", "q2": "4", "q3": "apple", "q4": "iron", "q5": "Paris",
                    "q6": "y"}


def stored(ws):
    return {r["external_id"]: dict(r) for r in ws.query("SELECT * FROM items ORDER BY id")}


def expect_refusal(ws, *args, **kwargs) -> SemiEvolError:
    """import_file must raise SemiEvolError and leave every table untouched."""
    before = ws.table_counts()
    task_before = ws.get_setting("task")
    with pytest.raises(SemiEvolError) as info:
        import_file(ws, *args, **kwargs)
    assert ws.table_counts() == before
    assert ws.get_setting("task") == task_before
    return info.value


def assert_rows_named(error: SemiEvolError, rows: list[int], word: str = "row"):
    """Every bad row is in `problems` and in the message, and nothing else is flagged."""
    text = str(error)
    flagged = sorted({int(p.split(":")[0].split()[1]) for p in error.problems})
    assert flagged == sorted(rows), error.problems
    for number in rows:
        assert f"{word} {number}:" in text


# -- successful imports --------------------------------------------------------------------
def test_csv_with_label_set(workspace, task, small_task_files):
    report = import_file(workspace, small_task_files["labeled"], "labeled", mapping=TEXT_MAP,
                         task=task)
    assert report.rows == 12 and report.split == "labeled" and report.import_id == 1
    assert workspace.task == task
    items = stored(workspace)
    assert len(items) == 12
    assert items["L00"]["answer"] == "billing" and items["L00"]["options"] is None
    assert items["L00"]["source_row"] == 1 and items["L23"]["source_row"] == 12
    assert {i["answer"] for i in items.values()} == set(task.labels)
    assert all(i["import_id"] == 1 for i in items.values())
    row = workspace.query("SELECT * FROM items WHERE external_id='L10'")[0]
    assert options_of(row, workspace.task) == task.labels
    imp = workspace.query("SELECT file, split, rows, mapping FROM imports")[0]
    assert (imp["file"], imp["split"], imp["rows"]) == ("labeled.csv", "labeled", 12)
    assert json.loads(imp["mapping"])["question"] == "text"

    # Later imports use the workspace's task; unlabeled answers are not needed.
    import_file(workspace, small_task_files["unlabeled"], "unlabeled",
                mapping=ColumnMapping(question="text", answer=None, id="id"))
    import_file(workspace, small_task_files["test"], "test", mapping=TEXT_MAP, task=task)
    assert workspace.split_counts() == {"labeled": 12, "unlabeled": 20, "test": 9,
                                        "calibration": 0}
    assert workspace.scalar("SELECT COUNT(*) FROM items WHERE split='unlabeled' "
                            "AND answer IS NOT NULL") == 0


def test_label_answers_match_case_and_spacing_and_say_so(workspace, task, tmp_path,
                                                         write_csv):
    path = write_csv(tmp_path / "l.csv", [
        {"id": "a", "text": "t1", "label": "BILLING"},
        {"id": "b", "text": "t2", "label": " outage "},
        {"id": "c", "text": "t3", "label": "equipment"},
    ])
    report = import_file(workspace, path, "labeled", mapping=TEXT_MAP, task=task)
    assert {k: v["answer"] for k, v in stored(workspace).items()} == {
        "a": "billing", "b": "outage", "c": "equipment"}
    assert any("1 answer(s) matched a label only ignoring case" in n and "'BILLING'" in n
               for n in report.notes)


def test_letters_and_numbers_name_labels_only_in_a_letter_task(workspace, task, tmp_path,
                                                                write_csv):
    path = write_csv(tmp_path / "l.csv", [
        {"id": "c", "text": "t3", "label": "3"},
        {"id": "d", "text": "t4", "label": "A"},
    ])
    before = workspace.table_counts()
    with pytest.raises(SemiEvolError) as refused:
        import_file(workspace, path, "labeled", mapping=TEXT_MAP, task=task)
    assert all("letter-format task" in p for p in refused.value.problems)
    assert workspace.table_counts() == before
    letters = TaskConfig(kind="choice", labels=task.labels, answer_format="letter")
    import_file(workspace, path, "labeled", mapping=TEXT_MAP, task=letters)
    assert {k: v["answer"] for k, v in stored(workspace).items()} == {
        "c": "equipment", "d": "billing"}


def test_jsonl_with_per_item_options(workspace, tmp_path):
    path = write_jsonl(tmp_path / "q.jsonl", options_records())
    import_file(workspace, path, "labeled", mapping=OPTIONS_MAP, task=PER_ITEM)
    items = stored(workspace)
    assert {k: v["answer"] for k, v in items.items()} == EXPECTED_ANSWERS
    assert json.loads(items["q2"]["options"]) == ["3", "4", "7"]
    row = workspace.query("SELECT * FROM items WHERE external_id='q1'")[0]
    assert options_of(row, workspace.task) == ["blue", "green", "red"]


def test_csv_with_json_options_column(workspace, tmp_path, write_csv):
    rows = [{**r, "options": json.dumps(r["options"]), "answer": str(r["answer"])}
            for r in options_records()]
    path = write_csv(tmp_path / "q.csv", rows)
    import_file(workspace, path, "labeled", mapping=OPTIONS_MAP, task=PER_ITEM)
    assert {k: v["answer"] for k, v in stored(workspace).items()} == EXPECTED_ANSWERS


def test_parquet_with_list_and_json_options(workspace, tmp_path):
    records = options_records()
    for r in records:
        r["answer"] = str(r["answer"])
    path = tmp_path / "q.parquet"
    pd.DataFrame.from_records(records).to_parquet(path)  # options as a real list column
    import_file(workspace, path, "labeled", mapping=OPTIONS_MAP, task=PER_ITEM)
    items = stored(workspace)
    assert {k: v["answer"] for k, v in items.items()} == EXPECTED_ANSWERS
    assert json.loads(items["q1"]["options"]) == ["blue", "green", "red"]

    unlabeled = pd.DataFrame({"id": ["u1", "u2"], "question": ["a?", "b?"],
                              "options": [json.dumps(["x", "y"]), json.dumps(["p", "q", "r"])]})
    unlabeled.to_parquet(tmp_path / "u.parquet")
    import_file(workspace, tmp_path / "u.parquet", "unlabeled",
                mapping=ColumnMapping(question="question", answer=None, options="options",
                                      id="id"))
    assert json.loads(stored(workspace)["u2"]["options"]) == ["p", "q", "r"]


def test_parquet_with_label_set_and_integer_ids(workspace, task, tmp_path):
    path = tmp_path / "l.parquet"
    pd.DataFrame({"id": [10, 11, 12], "text": ["x", "y", "z"],
                  "label": ["billing", "outage", "equipment"]}).to_parquet(path)
    import_file(workspace, path, "labeled", mapping=TEXT_MAP, task=task)
    assert sorted(stored(workspace)) == ["10", "11", "12"]


def test_open_task_from_jsonl(workspace, tmp_path):
    path = write_jsonl(tmp_path / "open.jsonl", [
        {"question": "2 + 2?", "answer": 4},
        {"question": "Capital of Italy?", "answer": "Rome"},
        {"question": "Unanswered?", "answer": "later", "extra": "ignored"},
    ])
    task = TaskConfig(kind="open", checker="numeric")
    import_file(workspace, path, "labeled", task=task)
    items = workspace.query("SELECT external_id, question, answer, options FROM items ORDER BY id")
    assert [tuple(r) for r in items] == [
        ("open.jsonl:labeled:1", "2 + 2?", "4", None),
        ("open.jsonl:labeled:2", "Capital of Italy?", "Rome", None),
        ("open.jsonl:labeled:3", "Unanswered?", "later", None),
    ]
    assert workspace.task.kind == "open"


def test_tsv_and_utf8_bom(workspace, task, tmp_path):
    path = tmp_path / "l.tsv"
    path.write_bytes("\ufeffid\ttext\tlabel\nx\tcafé, bill\tbilling\ny\tno net\toutage\n"
                     .encode("utf-8"))
    import_file(workspace, path, "labeled", mapping=TEXT_MAP, task=task)
    assert stored(workspace)["x"]["question"] == "café, bill"


def test_parse_options_and_resolve_answer_units():
    assert parse_options('["a", "b"]') == ["a", "b"]
    for bad in ("a,b", '["only"]', '{"a": 1}', '["a", "a"]', '["a", ""]', None, 3.0,
                ["a", 2], "[1, 2, null]", '["a", null]'):
        assert parse_options(bad) is None, bad  # options are non-empty strings, no null
    options = ["red", "green", "blue"]
    assert resolve_answer("Green", options) == "green"
    assert resolve_answer("c", options) is None and resolve_answer("1", options) is None
    assert resolve_answer("c", options, letters=True) == "blue"
    assert resolve_answer("1", options, letters=True) == "red"
    for bad in ("D", "4", "0", "purple", ""):
        assert resolve_answer(bad, options, letters=True) is None, bad


# -- refusals: SemiEvolError, every problem named, nothing written --------------------------
def test_missing_columns_are_all_named(workspace, task, tmp_path, write_csv):
    path = write_csv(tmp_path / "l.csv", [{"id": "a", "body": "x", "gold": "billing"}])
    error = expect_refusal(workspace, path, "labeled", mapping=TEXT_MAP, task=task)
    message = str(error)
    assert "'text'" in message and "'label'" in message
    assert "id, body, gold" in message  # the columns the file does have
    assert "--question-col" in message


def test_choice_without_labels_needs_options_column(workspace, tmp_path, write_csv):
    path = write_csv(tmp_path / "l.csv", [{"question": "q", "answer": "a"}])
    error = expect_refusal(workspace, path, "labeled", task=PER_ITEM)
    assert "options column" in str(error)


def test_empty_questions(workspace, task, tmp_path, write_csv):
    path = write_csv(tmp_path / "l.csv", [
        {"id": "a", "text": "fine", "label": "billing"},
        {"id": "b", "text": "", "label": "billing"},
        {"id": "c", "text": "fine", "label": "outage"},
        {"id": "d", "text": "   ", "label": "outage"},
    ])
    error = expect_refusal(workspace, path, "labeled", mapping=TEXT_MAP, task=task)
    assert_rows_named(error, [2, 4])
    assert all("empty question" in p for p in error.problems)
    assert "2 problem(s)" in str(error) and "nothing was imported" in str(error)


def test_answers_outside_label_set(workspace, task, tmp_path, write_csv):
    path = write_csv(tmp_path / "l.csv", [
        {"id": "a", "text": "t", "label": "refunds"},
        {"id": "b", "text": "t", "label": "billing"},
        {"id": "c", "text": "t", "label": "4"},
        {"id": "d", "text": "t", "label": ""},
    ])
    error = expect_refusal(workspace, path, "labeled", mapping=TEXT_MAP, task=task)
    assert_rows_named(error, [1, 3, 4])
    message = str(error)
    assert "'refunds' is not among the options (billing, outage, equipment)" in message
    assert "row 4: empty answer" in message


def test_answers_outside_item_options(workspace, tmp_path):
    records = options_records()
    records[1]["answer"] = "E"        # letter past the 3 options
    records[2]["answer"] = "5"        # digit past the 2 options
    records[4]["answer"] = "Berlin"   # text not among them
    path = write_jsonl(tmp_path / "q.jsonl", records)
    error = expect_refusal(workspace, path, "labeled", mapping=OPTIONS_MAP, task=PER_ITEM)
    assert_rows_named(error, [2, 3, 5])
    assert "'Berlin' is not among the options (Paris, Rome)" in str(error)


def test_malformed_options(workspace, tmp_path, write_csv):
    path = write_csv(tmp_path / "q.csv", [
        {"id": "a", "question": "q", "options": '["x", "y"]', "answer": "x"},
        {"id": "b", "question": "q", "options": "x, y", "answer": "x"},
        {"id": "c", "question": "q", "options": '["only"]', "answer": "only"},
        {"id": "d", "question": "q", "options": '{"x": 1}', "answer": "x"},
        {"id": "e", "question": "q", "options": '["x", "x"]', "answer": "x"},
    ])
    error = expect_refusal(workspace, path, "labeled", mapping=OPTIONS_MAP, task=PER_ITEM)
    assert_rows_named(error, [2, 3, 4, 5])
    assert all("malformed options" in p and "JSON list" in p for p in error.problems)


def test_duplicate_ids_within_file(workspace, task, tmp_path, write_csv):
    path = write_csv(tmp_path / "l.csv", [
        {"id": "a", "text": "t", "label": "billing"},
        {"id": "b", "text": "t", "label": "billing"},
        {"id": "a", "text": "t", "label": "outage"},
        {"id": "c", "text": "t", "label": "outage"},
        {"id": "b", "text": "t", "label": "outage"},
        {"id": "", "text": "t", "label": "outage"},
    ])
    error = expect_refusal(workspace, path, "labeled", mapping=TEXT_MAP, task=task)
    assert_rows_named(error, [3, 5, 6])
    message = str(error)
    assert "row 3: duplicate id 'a' (also row 1)" in message
    assert "row 5: duplicate id 'b' (also row 2)" in message
    assert "row 6: empty id" in message


def test_duplicate_ids_against_workspace(workspace, task, small_task_files, tmp_path,
                                        write_csv):
    import_file(workspace, small_task_files["labeled"], "labeled", mapping=TEXT_MAP, task=task)
    import_file(workspace, small_task_files["unlabeled"], "unlabeled",
                mapping=ColumnMapping(question="text", answer=None, id="id"))
    path = write_csv(tmp_path / "more.csv", [
        {"id": "L00", "text": "t", "label": "billing"},
        {"id": "NEW", "text": "t", "label": "billing"},
        {"id": "U05", "text": "t", "label": "outage"},
    ])
    error = expect_refusal(workspace, path, "labeled", mapping=TEXT_MAP)
    assert_rows_named(error, [1, 3])
    assert "'L00' is already in the workspace" in str(error)
    assert "'U05' is already in the workspace" in str(error)


def test_undecodable_text(workspace, task, tmp_path):
    path = tmp_path / "cp1252.csv"
    path.write_bytes(b"id,text,label\n"
                     b"a,caf\xe9 bill,billing\n"
                     b"b,fine,outage\n"
                     b"c,na\xefve router,equipment\n")
    error = expect_refusal(workspace, path, "labeled", mapping=TEXT_MAP, task=task)
    assert "not UTF-8" in str(error) and "iconv" in str(error)
    assert_rows_named(error, [2, 4], word="line")


@pytest.mark.parametrize("name", ["tickets.xlsx", "tickets.txt", "tickets"])
def test_unknown_file_type(workspace, task, tmp_path, name):
    path = tmp_path / name
    path.write_text("id,text,label\na,t,billing\n")
    error = expect_refusal(workspace, path, "labeled", mapping=TEXT_MAP, task=task)
    assert "Unknown file type" in str(error) and ".jsonl" in str(error)


def test_file_over_size_bound(workspace, task, small_task_files):
    error = expect_refusal(workspace, small_task_files["labeled"], "labeled", mapping=TEXT_MAP,
                           task=task, max_bytes=100)
    assert "import bound" in str(error) and "split it" in str(error)


def test_file_not_found(workspace, task, tmp_path):
    error = expect_refusal(workspace, tmp_path / "nope.csv", "labeled", task=task)
    assert "File not found" in str(error)


def test_malformed_jsonl_lines(workspace, tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text('{"question": "ok", "answer": "1"}\n'
                    '{"question": "broken", "answer": \n'
                    '\n'
                    '["a", "list"]\n'
                    '{"question": "ok too", "answer": "2"}\n'
                    "not json at all\n", encoding="utf-8")
    error = expect_refusal(workspace, path, "labeled", task=TaskConfig(kind="open"))
    assert_rows_named(error, [2, 4, 6], word="line")
    assert "expected a JSON object, got list" in str(error)


def test_empty_file_and_unknown_split(workspace, task, tmp_path):
    path = tmp_path / "empty.csv"
    path.write_text("id,text,label\n")
    assert "no data rows" in str(expect_refusal(workspace, path, "labeled", mapping=TEXT_MAP,
                                                task=task))
    assert "split must be" in str(expect_refusal(workspace, path, "calibration",
                                                 mapping=TEXT_MAP, task=task))


def test_first_import_needs_a_task(workspace, small_task_files):
    error = expect_refusal(workspace, small_task_files["labeled"], "labeled", mapping=TEXT_MAP)
    assert "no task" in str(error) and "--labels" in str(error)


def test_task_mismatch_on_second_import(workspace, task, small_task_files):
    import_file(workspace, small_task_files["labeled"], "labeled", mapping=TEXT_MAP, task=task)
    other = TaskConfig(kind="choice", labels=["billing", "outage"], answer_format="words")
    error = expect_refusal(workspace, small_task_files["test"], "test", mapping=TEXT_MAP,
                           task=other)
    assert "task" in str(error) and "new workspace" in str(error)
    assert workspace.task == task
    # The same task again is accepted.
    import_file(workspace, small_task_files["test"], "test", mapping=TEXT_MAP,
                task=TaskConfig(kind="choice", labels=list(task.labels)))
    assert workspace.split_counts()["test"] == 9


def test_many_problems_are_capped_but_counted(workspace, task, tmp_path, write_csv):
    rows = [{"id": str(i), "text": "", "label": "billing"} for i in range(250)]
    error = expect_refusal(workspace, write_csv(tmp_path / "l.csv", rows), "labeled",
                           mapping=TEXT_MAP, task=task)
    assert len(error.problems) == 200
    assert "250 problem(s)" in str(error) and "50 more not shown" in str(error)

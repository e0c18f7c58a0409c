"""A domain expert's first round on their own data: what the labels can teach is said before
any compute (curation.sufficiency), the calibration hold-out spares a class with few labels,
a round on such labels waits for a recorded confirmation, and a pseudo-label class mix that
departs from the labels is named before training."""

from __future__ import annotations

import pytest
from conftest import LABELS, write_csv

from semievol.config import CalibrationConfig, RoundConfig, TaskConfig
from semievol.curation.calibration import hold_out
from semievol.curation.sufficiency import class_mix_shift, label_warnings, short_classes
from semievol.errors import SemiEvolError
from semievol.rounds.guards import confirmations
from semievol.runs import launch
from semievol.workspace.imports import ColumnMapping, import_file


def test_a_class_with_a_handful_of_labels_is_short():
    found = short_classes({"neutral": 38, "positive": 24, "negative": 2},
                          {"negative": 24, "neutral": 90})
    assert [c["label"] for c in found] == ["negative"]
    assert found[0]["add"] == 6
    assert found[0]["message"].startswith("negative: 2 labeled examples (test has 24): add "
                                          "about 6 before a round")
    assert short_classes({"a": 8, "b": 40, "c": 40}) == []  # 8 or more is never short
    assert short_classes({"a": 1, "b": 3, "c": 2}) == []  # few everywhere: an even share
    assert short_classes({}) == []


def test_a_pseudo_label_mix_far_from_the_labels_is_named():
    shift = class_mix_shift({"positive": 17, "neutral": 38, "negative": 9},
                            {"positive": 72, "neutral": 20, "negative": 8})
    assert [c["label"] for c in shift] == ["positive", "neutral"]
    assert shift[0]["pseudo_share"] == pytest.approx(0.72)
    assert class_mix_shift({"a": 10, "b": 10}, {"a": 11, "b": 9}) == []
    assert class_mix_shift({"a": 10}, {}) == []


@pytest.fixture
def few_negatives(workspace, tmp_path):
    """64 labeled: 2 billing, 31 outage, 31 equipment; 20 unlabeled; 9 test."""
    rows = [{"id": f"L{i}", "text": f"my bill is wrong, case {i}", "label": "billing"}
            for i in range(2)]
    rows += [{"id": f"L{i}", "text": f"no internet again, case {i}", "label": "outage"}
             for i in range(2, 33)]
    rows += [{"id": f"L{i}", "text": f"router broken, case {i}", "label": "equipment"}
             for i in range(33, 64)]
    write_csv(tmp_path / "labeled.csv", rows)
    write_csv(tmp_path / "unlabeled.csv", [{"id": f"U{i}", "text": f"help please {i}"}
                                           for i in range(20)])
    write_csv(tmp_path / "test.csv", [{"id": f"T{i}", "text": f"test text {i}",
                                       "label": LABELS[i % 3]} for i in range(9)])
    task = TaskConfig(labels=list(LABELS))
    for split in ("labeled", "unlabeled", "test"):
        import_file(workspace, tmp_path / f"{split}.csv", split, task=task,
                    mapping=ColumnMapping(question="text", id="id",
                                          answer=None if split == "unlabeled" else "label"))
    return workspace


def test_the_hold_out_spares_a_class_with_few_labels(few_negatives):
    ws = few_negatives
    assert [w["label"] for w in label_warnings(ws)] == ["billing"]
    held = hold_out(ws, CalibrationConfig(fraction=0.2))
    by_split = dict(ws.query("SELECT split, COUNT(*) FROM items WHERE answer='billing' AND "
                             "split != 'test' "
                             "GROUP BY split"))
    assert by_split == {"labeled": 2}  # both stay in training
    assert held == ws.scalar("SELECT COUNT(*) FROM items WHERE split='calibration'") > 0


def test_round_one_waits_for_a_recorded_confirmation(few_negatives):
    ws = few_negatives
    config = RoundConfig()
    with pytest.raises(SemiEvolError, match="too few labeled examples") as refused:
        launch.register(ws, "round", config=config)
    assert any(p.startswith("billing: 2 labeled examples") for p in refused.value.problems)
    assert ws.scalar("SELECT COUNT(*) FROM rounds") == 0  # refused before any change
    assert ws.scalar("SELECT COUNT(*) FROM runs") == 0
    launch.register(ws, "round", config=config, confirm="ann", pid=1)
    recorded = confirmations(ws, ws.scalar("SELECT id FROM rounds"))
    assert [(c["kind"], c["reviewer"]) for c in recorded] == [("few_labels", "ann")]


def test_the_cli_says_which_class_is_short_at_import(workspace, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    write_csv(tmp_path / "l.csv", [{"text": f"text {i}", "label": label} for i, label in
                                   enumerate(["billing"] + ["outage"] * 20 + ["equipment"] * 20)])
    result = subprocess.run(
        [sys.executable, "-m", "semievol", "import", str(workspace.path), str(tmp_path / "l.csv"),
         "--split", "labeled", "--question-col", "text", "--answer-col", "label", "--kind",
         "choice", "--labels", ",".join(LABELS)],
        cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "warning: billing: 1 labeled example: add about 6 before a round" in result.stdout


def test_after_a_regression_the_next_action_is_the_best_round(filled_workspace):
    from test_round_scores import add_rounds

    from semievol.views.status import round_label, round_rows
    from semievol.views.workflow import round_state

    ws = filled_workspace
    add_rounds(ws, {(1, "round"): 0.81, (2, "warmup"): 0.80, (2, "round"): 0.68})
    state = round_state(ws)
    assert state["best_round"] == 1 and state["page"] == "export"
    assert "the best is round 1 (81.0% on test)" in state["action"]
    assert "Export round 1" in state["action"] and "start round 3" not in state["action"]
    assert state["command"].endswith("--round 1")
    rows = {r["number"]: r for r in round_rows(ws)}
    assert rows[1]["best"] and not rows[2]["best"]
    assert round_label(rows[1]) == "Round 1 (done) · 81.0% on test · best"
    add_rounds(ws, {(3, "round"): 0.9})  # a better round after it: the usual next step
    assert "start round 4" in round_state(ws)["action"]


def test_max_steps_below_the_minimum_takes_asking_for(filled_workspace):
    import subprocess
    import sys
    from pathlib import Path

    def run(*flags):
        return subprocess.run(
            [sys.executable, "-m", "semievol", "warmup", str(filled_workspace.path),
             "--background", *flags], cwd=Path(__file__).resolve().parents[1],
            capture_output=True, text=True, timeout=120)

    refused = run("--max-steps", "10")
    assert refused.returncode == 2
    assert "--max-steps 10 is below the 40-step minimum" in refused.stderr
    assert "add --min-steps 10" in refused.stderr and "Traceback" not in refused.stderr
    assert filled_workspace.scalar("SELECT COUNT(*) FROM rounds") == 0


def test_the_dataset_export_keeps_the_users_column_names(few_negatives, tmp_path):
    import csv

    from semievol.export.dataset import export_dataset, user_columns

    ws = few_negatives
    hold_out(ws, CalibrationConfig(fraction=0.2))
    ws.conn.execute("INSERT INTO rounds(number, status, config, created_at) "
                    "VALUES(1, 'open', '{}', 0)")
    assert user_columns(ws) == {"id": "id", "question": "text", "options": "options",
                                "answer": "label"}
    written = export_dataset(ws, 1, tmp_path)
    with open(written["csv"], newline="", encoding="utf-8") as fh:
        table = list(csv.DictReader(fh))
    assert list(table[0]) == ["id", "text", "options", "label", "source"]
    held = ws.scalar("SELECT COUNT(*) FROM items WHERE split='calibration'")
    assert [r["source"] for r in table].count("calibration") == held == written["calibration"]
    assert all(r["label"] for r in table)  # the calibration rows carry their gold labels


def test_app_errors_name_pages_not_commands(few_negatives, tmp_path):
    """What the app shows of an error (SemiEvolError.app) names a page or a box; the CLI's
    message keeps its command and flag."""
    from semievol.curation.decisions import record_decisions
    from semievol.rounds.record import get_round
    from semievol.workspace.store import Workspace

    caught = []
    for attempt in (lambda: launch.register(few_negatives, "round", config=RoundConfig()),
                    lambda: get_round(few_negatives),
                    lambda: record_decisions(few_negatives, [1], "accept", reviewer=" "),
                    lambda: Workspace(tmp_path / "fresh", create=True).require_task()):
        with pytest.raises(SemiEvolError) as error:
            attempt()
        caught.append(error.value)
    assert "--confirm" in str(caught[0])  # the CLI's wording
    for exc in caught:
        assert exc.app and "semievol " not in exc.app and " --" not in exc.app, exc.app
    assert "confirmation box on Round setup" in caught[0].app


def test_the_status_reads_training_as_soon_as_its_run_starts(workspace):
    from conftest import add_round

    from semievol.views.workflow import state_of

    rid = add_round(workspace)
    workspace.conn.execute("UPDATE rounds SET status='awaiting_review' WHERE id=?", (rid,))
    from semievol.rounds.record import get_round

    rnd = get_round(workspace, 1)
    assert state_of(workspace.path, rnd, [], None)["status_name"] == "awaiting review"
    training = {"id": 9, "kind": "train", "round_id": rid}
    state = state_of(workspace.path, rnd, [training], None)
    assert state["status_name"] == "training" and state["page"] == "runs"
    labeling = {"id": 8, "kind": "label", "round_id": rid}
    assert state_of(workspace.path, rnd, [labeling], None)["status_name"] == "awaiting review"

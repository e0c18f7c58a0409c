"""The engine through the real `semievol` command line, in subprocesses.

One workspace (imported and indexed in this process with the fake embedder) goes through
warm-up, labeling and selection with the tiny model; the tests after that share it: a
cached re-label, the calibration report, a background training run that is refused a twin,
killed and resumed in the foreground, and the export of what it trained. The steps that
want an embedder find every item already embedded, so the bundled one is never loaded.
"""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import (LABELED_TEXTS, LABELS, TEST_ROWS, UNLABELED_TEXTS, FakeEmbedder, add_pseudo,
                      add_round, write_csv)

from semievol.saved_config import to_dict
from semievol.workspace.store import Workspace

ROOT = Path(__file__).resolve().parents[1]
# One torch thread per process: a tiny model is faster so, above all on a busy machine.
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
UNLABELED_LIMIT = 8
COLLABORATORS = "base:0:1.0:0,warmup:2:1.0:1"


def semievol(*args, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
    """`semievol ARGS` in a subprocess; `timeout` guards against a hang, it measures nothing."""
    result = subprocess.run([sys.executable, "-m", "semievol", *map(str, args)], cwd=ROOT,
                            env=ENV, capture_output=True, text=True, timeout=timeout)
    if check:
        assert result.returncode == 0, (f"{args[:2]}: rc {result.returncode}\n"
                                        f"{result.stdout}\n{result.stderr[-3000:]}")
    return result


def wait_for(predicate, *, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def build_workspace(path: Path, files: Path) -> Path:
    """The small broadband task imported and indexed in-process (fake embedder, k=3)."""
    from semievol.config import TaskConfig
    from semievol.method.retrieval import index_workspace
    from semievol.workspace.imports import ColumnMapping, import_file

    rows = {
        "labeled": [{"id": f"L{c}{i}", "text": t, "label": label}
                    for c, (label, texts) in enumerate(LABELED_TEXTS.items())
                    for i, t in enumerate(texts)],
        "unlabeled": [{"id": f"U{i:02d}", "text": t, "label": ""}
                      for i, t in enumerate(UNLABELED_TEXTS)],
        "test": [{"id": f"T{i}", "text": t, "label": label}
                 for i, (t, label) in enumerate(TEST_ROWS)]}
    task = TaskConfig(kind="choice", labels=list(LABELS), answer_format="words")
    with Workspace(path, create=True) as ws:
        for split, data in rows.items():
            import_file(ws, write_csv(files / f"{split}.csv", data), split, task=task,
                        mapping=ColumnMapping(question="text", id="id",
                                              answer=None if split == "unlabeled" else "label"))
        index_workspace(ws, FakeEmbedder(), k=3)
    return path


def run_row(path: Path, run_id: int) -> dict:
    with Workspace(path) as ws:
        return dict(ws.query("SELECT * FROM runs WHERE id=?", (run_id,))[0])


def runs_lines(path: Path) -> dict[int, str]:
    """`semievol runs` output: run id -> its line (and its error line, if any)."""
    lines, current = {}, None
    for line in semievol("runs", path).stdout.splitlines():
        match = re.match(r"\s*(\d+)\s", line)
        if match:
            current = int(match.group(1))
            lines[current] = line
        elif current is not None:
            lines[current] += "\n" + line
    return lines


# -- the shared workspace, step by step ----------------------------------------------------
@pytest.fixture(scope="module")
def warmed(tmp_path_factory, tiny_model_dir) -> Path:
    folder = tmp_path_factory.mktemp("engine_cli")
    ws_path = build_workspace(folder / "ws", folder / "files")
    result = semievol("warmup", ws_path, "--model", tiny_model_dir, "--dtype", "float32",
                      "--max-steps", 2, "--min-steps", 0, "--batch-size", 4,
                      "--calibration", 0.25, "--unlabeled-limit", UNLABELED_LIMIT,
                      "--collaborators", COLLABORATORS)
    assert result.stdout.startswith("warmup: trained on ")  # one line in words, not a dict
    assert "{" not in result.stdout.splitlines()[0]
    return ws_path


@pytest.fixture(scope="module")
def first_label(warmed) -> subprocess.CompletedProcess:
    return semievol("label", warmed)


@pytest.fixture(scope="module")
def selected(first_label, warmed) -> Path:
    out = semievol("select", warmed).stdout
    assert out.startswith("select: ") and "pseudo-label(s) selected" in out.splitlines()[0]
    assert "{" not in out.splitlines()[0]
    return warmed


@pytest.fixture(scope="module")
def resumed(selected, tmp_path_factory) -> dict:
    """Background training (endless: it runs until killed), a refused twin, SIGKILL once a
    checkpoint is on disk, then the same training resumed in the foreground to a finish a
    few steps past the checkpoint. Returns what each stage showed."""
    from semievol.rounds.record import get_round

    ws_path = selected
    with Workspace(ws_path) as ws:
        config = to_dict(get_round(ws, 1).config)
    folder = tmp_path_factory.mktemp("configs")
    config["train"].update(max_steps=1_000_000, checkpoint_every=2)
    endless = folder / "endless.yaml"
    endless.write_text(yaml.safe_dump(config))
    checkpoint = ws_path / "adapters" / "round1" / "final" / "checkpoint"
    whole = ("adapter_config.json", "adapter_model.safetensors", "optimizer.safetensors",
             "state.json")
    seen: dict = {}

    # The tiny random model's evidence warns against training: refused until confirmed.
    with Workspace(ws_path) as ws:
        before = ws.table_counts()
    seen["unconfirmed"] = semievol("train", ws_path, "--background", "--config", endless,
                                   check=False)
    with Workspace(ws_path) as ws:
        seen["counts_after_unconfirmed"] = (before, ws.table_counts())
    started = semievol("train", ws_path, "--background", "--config", endless, "--confirm",
                       "--reviewer", "ann")
    run_id = int(re.search(r"Started run (\d+) \(train\)", started.stdout).group(1))
    seen["run_id"] = run_id
    killed = False
    try:
        def training():
            row = run_row(ws_path, run_id)
            assert row["status"] == "running", (row["status"], row["error"])
            return (row["pid"] and (row["progress"] or 0) > 0
                    and (checkpoint / "state.json").exists())
        wait_for(training, timeout=240, what="a checkpoint of the background training")
        pid = seen["pid"] = run_row(ws_path, run_id)["pid"]

        # (c) a second background run on the same round while the first one runs
        seen["twin"] = semievol("train", ws_path, "--background", check=False)
        with Workspace(ws_path) as ws:
            seen["runs_after_twin"] = [r[0] for r in ws.query("SELECT id FROM runs ORDER BY id")]

        # Freeze the group at a moment a whole checkpoint is on disk, then kill it.
        def frozen_with_checkpoint():
            os.killpg(pid, signal.SIGSTOP)
            if all((checkpoint / name).exists() for name in whole):
                return True
            os.killpg(pid, signal.SIGCONT)
            return False
        wait_for(frozen_with_checkpoint, timeout=60, what="a whole checkpoint")
        os.killpg(pid, signal.SIGKILL)
        killed = True
        wait_for(lambda: not _alive(pid), timeout=30, what="the killed process to go")
        seen["checkpoint_step"] = json.loads((checkpoint / "state.json").read_text())["step"]
        seen["runs_after_kill"] = runs_lines(ws_path)
    finally:
        pid = run_row(ws_path, run_id)["pid"]
        if not killed and pid and _alive(pid):  # a failure above: stop the endless run
            os.killpg(pid, signal.SIGKILL)

    config["train"]["max_steps"] = seen["checkpoint_step"] + 3
    finite = folder / "finite.yaml"
    finite.write_text(yaml.safe_dump(config))
    seen["foreground"] = semievol("train", ws_path, "--config", finite)
    seen["runs_after_resume"] = runs_lines(ws_path)
    return seen


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


# -- tests ---------------------------------------------------------------------------------
def test_warmup_stores_the_command_line_config(warmed, tiny_model_dir):
    from semievol.rounds.record import get_round

    with Workspace(warmed) as ws:
        rnd = get_round(ws, 1)
        assert rnd.config.model.name_or_path == str(tiny_model_dir)
        assert (rnd.config.train.max_steps, rnd.config.train.batch_size) == (2, 4)
        assert (rnd.config.calibration.fraction, rnd.config.unlabeled_limit) == \
            (0.25, UNLABELED_LIMIT)
        assert [c.label for c in rnd.config.collaborators] == ["base/k0/t1/s0", "warmup/k2/t1/s1"]
        assert (Path(rnd.warmup_adapter) / "adapter_config.json").exists()
        assert ws.split_counts()["calibration"] == 6  # 2 of each class's 4
        runs = ws.query("SELECT kind, status, round_id FROM runs ORDER BY id")
        assert [tuple(r) for r in runs[:1]] == [("warmup", "succeeded", rnd.id)]


def test_label_twice_the_second_is_all_cache(first_label, warmed):
    pool = UNLABELED_LIMIT + 6
    first = first_label.stdout
    assert f"label: {pool} item(s); responses computed {2 * pool}, cached 0" in first
    assert int(re.search(r"model calls (\d+)", first).group(1)) > 0

    second = semievol("label", warmed).stdout
    assert f"responses computed 0, cached {2 * pool}" in second
    assert "already stored " + str(pool) in second
    assert re.search(r"model calls 0\b", second), second
    with Workspace(warmed) as ws:
        assert ws.scalar("SELECT COUNT(*) FROM responses") == 2 * pool
        assert ws.scalar("SELECT COUNT(*) FROM pseudo_labels") == pool
        kinds = [tuple(r) for r in ws.query("SELECT kind, status FROM runs WHERE kind='label'")]
        assert kinds == [("label", "succeeded")] * 2


def test_calibration_prints_precision(selected):
    from semievol.curation.calibration import calibration_report
    from semievol.views.sampled import sampled_percent

    out = semievol("calibration", selected).stdout
    with Workspace(selected) as ws:
        report = calibration_report(ws, 1)
    assert report["n"] == 6
    lines = out.splitlines()
    for name in ("all", "selected", "agreed", "reflected"):
        line = next(x for x in lines if x.startswith(name + " "))
        r = report[name]  # 6 calibration items: too few for a percentage, said as a need
        assert line.endswith("precision " + sampled_percent(r["precision"], r["n"], r["interval"],
                                                            need="needs at least"))
        assert "%" not in line and "needs at least 10" in line
    assert f"coverage of the selection: {report['coverage_selected']:.3f}" in out


def test_training_against_the_evidence_needs_a_confirmation(resumed, selected):
    refused = resumed["unconfirmed"]
    assert refused.returncode == 2 and "evidence warns against training" in refused.stderr
    assert "Traceback" not in refused.stderr
    before, after = resumed["counts_after_unconfirmed"]
    assert before == after  # refused before anything changed
    with Workspace(selected) as ws:
        rows = ws.query("SELECT reviewer FROM confirmations")
        assert rows and {r[0] for r in rows} == {"ann"}  # recorded with the round


def test_a_second_background_run_on_the_round_is_refused(resumed):
    twin = resumed["twin"]
    assert twin.returncode == 2, twin.stdout + twin.stderr
    message = twin.stderr
    assert f"Run {resumed['run_id']} (train, pid {resumed['pid']}) is already writing round 1" \
        in message
    assert "semievol cancel " in message and str(resumed["run_id"]) in message
    assert "Started run" not in twin.stdout
    assert resumed["runs_after_twin"][-1] == resumed["run_id"]  # no row for the refused one


def test_killed_training_resumes_from_its_checkpoint(resumed, selected):
    run_id, step = resumed["run_id"], resumed["checkpoint_step"]
    killed = resumed["runs_after_kill"][run_id]
    assert " train " in killed and " failed " in killed and "the process died" in killed

    assert step >= 2 and step % 2 == 0
    final = selected / "adapters" / "round1" / "final"
    summary = json.loads((final / "training.json").read_text())
    assert summary["resumed_from"] == step > 0
    assert summary["steps"] == step + 3 and len(summary["losses"]) == step + 3
    assert (final / "adapter_config.json").exists() and not (final / "checkpoint").exists()
    line = next(x for x in resumed["foreground"].stdout.splitlines() if x.startswith("train: "))
    assert f"resumed from step {step}" in line and "{" not in line  # one line, in words

    after = resumed["runs_after_resume"]
    assert " failed " in after[run_id]
    newer = [line for i, line in after.items() if i > run_id]
    assert len(newer) == 1 and " train " in newer[0] and " succeeded " in newer[0]
    new_id = max(after)
    with Workspace(selected) as ws:
        steps = [r[0] for r in ws.query("SELECT step FROM metrics WHERE run_id=? AND "
                                        "name='train_loss' ORDER BY step", (new_id,))]
        assert steps == [step + 1, step + 2, step + 3]  # only what the resumed run trained
        # Stored relative to the workspace (it may be moved), resolved by the library.
        assert ws.scalar("SELECT final_adapter FROM rounds WHERE number=1") == \
            str(final.relative_to(ws.path))
        from semievol.rounds.record import get_round
        assert get_round(ws, 1).final_adapter == str(final)


def test_export_dataset_and_adapter(resumed, selected, tmp_path):
    from semievol.curation.training_set import training_items
    from semievol.export.dataset import calibration_items, user_columns

    out = semievol("export", selected, "--what", "dataset,adapter", "--out", tmp_path).stdout
    paths = dict(line.split(": ", 1) for line in out.splitlines())
    assert set(paths) == {"jsonl", "csv", "parquet", "dataset", "adapter"}
    with Workspace(selected) as ws:
        trained, held_out = training_items(ws, 1), calibration_items(ws)
        expected = trained + held_out  # the held-out labels too, marked as such
        external = dict(ws.query("SELECT id, external_id FROM items"))
        columns = user_columns(ws)
    assert {it["source"] for it in trained} == {"gold", "pseudo"}
    assert held_out and {it["source"] for it in held_out} == {"calibration"}

    rows = [json.loads(line) for line in Path(paths["jsonl"]).read_text().splitlines()]
    assert [r["id"] for r in rows] == [external[it["item_id"]] for it in expected]
    for row, item in zip(rows, expected):
        roles = [m["role"] for m in row["messages"]]
        assert roles[0] == "system" and roles[-2:] == ["user", "assistant"]
        assert item["question"] in row["messages"][-2]["content"]
        assert row["messages"][-1]["content"].strip() == item["answer"]
        assert row["source"] == item["source"]
    with open(paths["csv"], newline="", encoding="utf-8") as fh:
        table = list(csv.DictReader(fh))
    assert [(r[columns["id"]], r[columns["answer"]], r["source"]) for r in table] == \
        [(external[it["item_id"]], it["answer"], it["source"]) for it in expected]

    adapter = Path(paths["adapter"])
    assert adapter == tmp_path / "adapter_round1"
    assert (adapter / "adapter_config.json").exists()
    assert (adapter / "adapter_model.safetensors").exists()
    assert not any(p.name.startswith("checkpoint") for p in adapter.iterdir())
    card = (adapter / "README.md").read_text()
    assert "library_name: peft" in card and "## Prompt" in card


def test_decide_checks_the_label_and_records_the_reviewer(filled_workspace):
    ws = filled_workspace
    item = ws.scalar("SELECT id FROM items WHERE external_id='U03'")
    bad = semievol("decide", ws.path, item, "--action", "relabel", "--label", "phone",
                   "--reviewer", "ann", check=False)
    assert bad.returncode == 2
    assert "'phone' is not an option" in bad.stderr and ", ".join(LABELS) in bad.stderr
    assert ws.scalar("SELECT COUNT(*) FROM decisions") == 0

    no_pseudo_label = semievol("decide", ws.path, "U03", "--external", "--action", "accept",
                               "--reviewer", "ann", check=False)
    assert no_pseudo_label.returncode == 2 and "no pseudo-label yet" in no_pseudo_label.stderr
    add_pseudo(ws, add_round(ws), [(item, "billing", "agreed", 0.1, 0.1)])
    good = semievol("decide", ws.path, "U03", "--external", "--action", "accept",
                    "--reviewer", "ann", "--note", "looks right")
    assert "Recorded accept for 1 item(s) by ann" in good.stdout
    rows = [dict(r) for r in ws.query("SELECT item_id, action, label, reviewer, note "
                                      "FROM decisions")]
    assert rows == [{"item_id": item, "action": "accept", "label": None, "reviewer": "ann",
                     "note": "looks right"}]

"""bench/teacher_server.py, the quality bench's simulated stronger collaborator: its draws
are right about `accuracy` of the time and calibrated, and the served-model client reads its
option distributions exactly (probe, echo with token ids) from a real prompt."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from semievol.config import ServerConfig, TaskConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from teacher_server import TeacherServer, teacher_config  # noqa: E402

OPTIONS = ["negative", "neutral", "positive"]


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from semievol.model.loading import load_tokenizer

    return load_tokenizer(str(tiny_model_dir))


def items(n: int) -> dict:
    return {f"Sentence {i}: the quarter's results were {'good' if i % 3 else 'bad'}.":
            (OPTIONS, OPTIONS[i % 3]) for i in range(n)}


def test_the_teacher_is_right_about_its_accuracy_and_calibrated(tokenizer):
    known = items(3000)
    with TeacherServer(known, tokenizer, accuracy=0.9) as teacher:
        draws = [(teacher.answer_of(q), truth) for q, (_, truth) in known.items()]
        again = teacher.answer_of(next(iter(known)))
    right = np.array([picked == truth for (picked, _), truth in draws])
    confidence = np.array([probs.max() for (_, probs), _ in draws])
    assert abs(right.mean() - 0.9) < 0.03
    assert again == draws[0][0]  # the same question, the same answer
    for low, high in ((0.5, 0.8), (0.8, 0.9), (0.9, 1.0)):  # calibrated within each band
        band = (confidence >= low) & (confidence < high)
        assert band.sum() > 100
        assert abs(right[band].mean() - confidence[band].mean()) < 0.06
    for (picked, probs), _ in draws:  # the picked option is the most likely one
        assert OPTIONS[int(np.argmax(probs))] == picked and probs.sum() == pytest.approx(1)
    with pytest.raises(ValueError):
        TeacherServer(known, tokenizer, accuracy=0.0)


def test_the_served_client_reads_the_teachers_distribution(tokenizer, workspace):
    from semievol.model.prompts import PromptBuilder
    from semievol.model.served import ServedBackend, probe_server
    from semievol.task.formats import Example, option_targets

    task = TaskConfig(kind="choice", labels=OPTIONS, answer_format="words",
                      instruction="Classify the sentiment.")
    known = items(5)
    question = next(iter(known))
    with TeacherServer(known, tokenizer, accuracy=0.6, seed=3) as teacher:
        _, server = teacher_config(teacher.url)
        caps = probe_server(workspace, server, tokenizer)
        assert "echo" in caps.modes and caps.token_ids and caps.model == "teacher"
        backend = ServedBackend(server, caps, tokenizer, served_model=caps.model)
        prompt = PromptBuilder(task, tokenizer, 512).item(Example(question, OPTIONS)).text
        got = backend.option_distributions(
            [prompt], [option_targets(task, OPTIONS, tokenizer)])[0]
        np.testing.assert_allclose(got, teacher.answer_of(question)[1], rtol=1e-6)
        # an unknown text scores every option alike: the teacher knows only its items
        other = PromptBuilder(task, tokenizer, 512).item(Example("Unknown.", OPTIONS)).text
        flat = backend.option_distributions([other], [option_targets(task, OPTIONS,
                                                                       tokenizer)])[0]
        np.testing.assert_allclose(flat, [1 / 3] * 3)
    assert isinstance(server, ServerConfig) and server.mode == "echo"


@pytest.mark.usefixtures("one_torch_thread")
def test_a_served_base_model_settles_the_disagreements(filled_workspace, fake_embedder,
                                                       tiny_model_dir, tokenizer):
    """Reflection by the teacher's base model (served.reflection_model base): every item the
    collaborators disagree on takes the teacher's answer, not the student's."""
    import json

    from test_engine_round import tiny_config

    from semievol.config import CollaboratorConfig, ServedConfig
    from semievol.rounds import steps
    from semievol.rounds.record import get_round, open_round

    ws = filled_workspace
    known = {r["question"]: (json.loads(r["options"]) if r["options"] else ws.require_task()
                             .labels, r["answer"] or ws.require_task().labels[0])
             for r in ws.query("SELECT question, options, answer FROM items")}
    with TeacherServer(known, tokenizer, accuracy=0.5, seed=1) as teacher:
        collaborator, server = teacher_config(teacher.url)
        config = tiny_config(
            tiny_model_dir, servers=[server], unlabeled_limit=8,
            collaborators=[CollaboratorConfig("warmup", 0, 1.0, 0), collaborator],
            served=ServedConfig(reflection=server.name, reflection_model="base"))
        rnd = open_round(ws, config)
        steps.step_warmup(ws, rnd, embedder=fake_embedder)
        steps.step_label(ws, get_round(ws, rnd.number))
        answers = {q: teacher.answer_of(q)[0] for q in known}
    rows = ws.query("SELECT i.question, p.label, p.path FROM pseudo_labels p "
                    "JOIN items i ON i.id = p.item_id WHERE p.round_id=?", (rnd.id,))
    reflected = [r for r in rows if r["path"] == "reflected"]
    assert rows and reflected  # a random student and a 50 % teacher disagree on some
    assert all(r["label"] == answers[r["question"]] for r in reflected)
    # agreed items are the teacher's answer too: it is one of the two that agree
    assert all(r["label"] == answers[r["question"]] for r in rows)

"""semievol.profiling: stages nest and add up; without an active profiler nothing is kept."""

from semievol.profiling import Profiler, count_tokens, stage


def test_stages_nest_and_tokens_reach_every_open_stage():
    profiler = Profiler()
    with profiler.active():
        with stage("label"):
            with stage("collaborator 1"):
                count_tokens(10)
            with stage("collaborator 1"):
                count_tokens(5, training=True)
    rows = {r["path"]: r for r in profiler.rows()}
    assert set(rows) == {"label", "label / collaborator 1"}
    assert rows["label / collaborator 1"]["calls"] == 2
    assert rows["label"]["forward_tokens"] == 10
    assert rows["label"]["train_tokens"] == 5
    assert rows["label"]["wall"] >= rows["label / collaborator 1"]["wall"]


def test_inactive_profiler_records_nothing():
    profiler = Profiler()
    with stage("label"):
        count_tokens(10)
    assert profiler.rows() == []

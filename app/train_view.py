"""The Train and evaluate page: what the latest round will train on, one-click training and
evaluation (background runs), the results side by side, and the next round.

Plain functions first (`training_counts`, `evaluation_reports`, `comparison_frame`,
`per_class_frame`, `distribution_frame`; tested directly), then `show_*` functions.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from common import launch_with_feedback, literal
from semievol import jobs
from semievol.errors import SemiEvolError
from semievol.evaluate import evaluation_split, stored_evaluation
from semievol.rounds import Round, get_round
from semievol.selection_state import applied_selection
from semievol.store import Workspace
from semievol.guards import collapse_message, confirmations
from semievol.round_scores import regression
from semievol.rounds import FINISHED
from semievol.training_set import SOURCES, decisions_since_freeze, training_items

SETUP_PAGE = "pages/2_Round_setup.py"
VARIANTS = ("base", "base+demos", "warmup", "round")
VARIANT_NAMES = {"base": "base (zero-shot)", "base+demos": "base + demonstrations",
                 "warmup": "warm-up adapter", "round": "round adapter"}


# -- reads --------------------------------------------------------------------------------
def has_selection(ws: Workspace, rnd: Round) -> bool:
    """Whether a selection was applied to the round (by the select step or the Selection page)."""
    return applied_selection(ws, rnd.id) is not None


def training_counts(ws: Workspace, rnd: Round) -> pd.DataFrame:
    """Training items per class (rows) and source (gold / human / pseudo), with a total."""
    items = training_items(ws, rnd.number)
    frame = pd.DataFrame([(it["answer"], it["source"]) for it in items],
                         columns=["class", "source"])
    table = pd.crosstab(frame["class"], frame["source"]) if len(frame) else pd.DataFrame()
    table = table.reindex(columns=list(SOURCES), fill_value=0)
    labels = (ws.task.labels if ws.task else None) or []
    order = [x for x in labels if x in table.index] + sorted(
        x for x in table.index if x not in labels)
    table = table.reindex(order).fillna(0).astype(int)
    table.columns.name = None
    table["total"] = table.sum(axis=1)
    return table.rename_axis("class").reset_index()


def evaluation_reports(ws: Workspace, rnd: Round) -> dict[str, dict]:
    """The stored test report of each model variant (base ones belong to no round)."""
    out = {}
    split = evaluation_split(ws) or "test"
    for variant in VARIANTS:
        round_id = None if variant in ("base", "base+demos") else rnd.id
        report = stored_evaluation(ws, round_id, variant, split)
        if report is not None:
            out[variant] = report
    return out


def comparison_frame(reports: dict[str, dict]) -> pd.DataFrame:
    rows = [{"model": VARIANT_NAMES[v], "accuracy": r.get("accuracy"),
             "macro-F1": r.get("macro_f1"), "majority baseline": r.get("majority_baseline"),
             "test items": r.get("n")} for v, r in reports.items()]
    return pd.DataFrame(rows, columns=["model", "accuracy", "macro-F1", "majority baseline",
                                       "test items"])


def per_class_frame(report: dict) -> pd.DataFrame:
    rows = [{"class": label, **{k: values.get(k) for k in
                                ("precision", "recall", "f1", "support", "predicted")}}
            for label, values in (report.get("per_class") or {}).items()]
    return pd.DataFrame(rows, columns=["class", "precision", "recall", "f1", "support",
                                       "predicted"])


def distribution_frame(report: dict) -> pd.DataFrame:
    """Predicted vs gold count per class (long format: class, kind, items)."""
    per_class = report.get("per_class") or {}
    rows = [{"class": label, "kind": "gold", "items": v.get("support", 0)}
            for label, v in per_class.items()]
    rows += [{"class": label, "kind": "predicted", "items": count}
             for label, count in (report.get("predicted_distribution") or {}).items()]
    return pd.DataFrame(rows, columns=["class", "kind", "items"])




# -- rendering ----------------------------------------------------------------------------
def _launch(ws: Workspace, step: str, done_message: str) -> None:
    launch_with_feedback(ws, step, done_message)


def show_training(ws: Workspace, rnd: Round, busy: dict | None) -> None:
    from common import show_train_action

    st.subheader("Training set")
    counts = training_counts(ws, rnd)
    totals = counts[list(SOURCES)].sum() if len(counts) else pd.Series(0, index=list(SOURCES))
    frozen = rnd.status in ("training", "trained", "done")
    if frozen:
        st.markdown(f"Round {rnd.number} trained on **{int(totals.sum())}** item(s), frozen when "
                    f"its training started: {int(totals['gold'])} labeled, "
                    f"{int(totals['human'])} human-labeled, {int(totals['pseudo'])} selected "
                    "pseudo-labels.")
        later = decisions_since_freeze(ws, rnd.id)
        if later:
            st.info(f"{later} decision(s) were made after this round started training: they "
                    f"count for round {rnd.number + 1}, not for these numbers.",
                    icon=":material/lock:")
    else:
        if not has_selection(ws, rnd):
            st.warning(f"Round {rnd.number} has no selection yet: it selects when its round "
                       "runs (Round setup), or apply one on the Selection page. Until then "
                       "only the labeled set would be trained on.")
        st.markdown(f"Round {rnd.number} would train on **{int(totals.sum())}** item(s): "
                    f"{int(totals['gold'])} labeled, {int(totals['human'])} human-labeled, "
                    f"{int(totals['pseudo'])} selected pseudo-labels.")
    if len(counts):
        st.dataframe(counts, hide_index=True)
    if rnd.final_adapter:
        check = regression(ws, rnd)
        if check and check["message"]:
            st.error(check["message"], icon=":material/trending_down:")
        else:
            st.success(f"Round {rnd.number} is trained: `{rnd.final_adapter}`.")
    for confirmed in confirmations(ws, rnd.id):
        st.caption(f"Confirmed by {literal(confirmed['reviewer'])} before training: "
                   f"{literal(confirmed['message'])}")
    show_train_action(ws, {"id": rnd.id, "number": rnd.number, "status": rnd.status},
                      key="train")


def show_live(ws: Workspace, run: dict) -> None:
    """Progress and loss of a running run of this round (polled every 2 s)."""
    from runs_view import POLL_SECONDS, show_loss

    def body():
        current = jobs.get_run(ws, run["id"])
        if current["status"] != "running":
            st.rerun()
        progress = min(max(current["progress"] or 0.0, 0.0), 1.0)
        st.progress(progress, text=f"Run {current['id']} ({current['kind']}): "
                                   f"{100 * progress:.0f}% · {current['message'] or ''}")
        show_loss(ws, current)

    st.fragment(body, run_every=POLL_SECONDS)()


def show_evaluate_button(ws: Workspace, rnd: Round, busy: dict | None) -> None:
    st.subheader("Evaluation")
    split = evaluation_split(ws)
    if split is None:
        st.warning("The workspace has no test items: import a test file on the Workspace page "
                   "to evaluate.")
        return
    if split != "test":
        st.caption("No test file: models are measured on the calibration slice (held out of "
                   "training), a small and rough estimate.")
    if not rnd.warmup_adapter:
        st.caption("Evaluation compares the warm-up adapter too: run the warm-up step first.")
    if not rnd.final_adapter:
        st.caption("Not trained yet: evaluating now measures base and warm-up only (the round "
                   "is finished by an evaluation after training).")
    if st.button("Evaluate", key="evaluate", disabled=not rnd.warmup_adapter or busy is not None):
        _launch(ws, "evaluate", f"evaluating round {rnd.number}")


def show_results(ws: Workspace, rnd: Round) -> None:
    reports = evaluation_reports(ws, rnd)
    if not reports:
        st.info("No evaluation yet for this round.")
        return
    import plotly.express as px

    for variant, report in reports.items():
        message = collapse_message(report, VARIANT_NAMES[variant].capitalize())
        if message and variant in ("warmup", "round"):
            st.warning(literal(message), icon=":material/warning:")
    table = comparison_frame(reports)
    st.dataframe(table, hide_index=True, column_config={
        c: st.column_config.NumberColumn(c, format="%.3f")
        for c in ("accuracy", "macro-F1", "majority baseline")})
    long = table.melt(id_vars="model", value_vars=["accuracy", "macro-F1"], var_name="metric")
    figure = px.bar(long, x="model", y="value", color="metric", barmode="group",
                    range_y=[0, 1], title="Test accuracy and macro-F1")
    baseline = next((r.get("majority_baseline") for r in reports.values()
                     if r.get("majority_baseline") is not None), None)
    if baseline is not None:
        figure.add_hline(y=baseline, line_dash="dash",
                         annotation_text=f"majority baseline {baseline:.2f}")
    figure.update_layout(height=360, margin=dict(t=40, b=10))
    st.plotly_chart(figure, key="eval_bars")

    variant = st.selectbox("Model variant", list(reports), key="eval_variant",
                           index=len(reports) - 1, format_func=VARIANT_NAMES.get)
    report = reports[variant]
    per_class = per_class_frame(report)
    if per_class.empty:
        st.caption("No per-class report (an open-answer task).")
        return
    left, right = st.columns(2)
    with left:
        st.markdown("**Per class**")
        st.dataframe(per_class, hide_index=True, column_config={
            c: st.column_config.NumberColumn(c, format="%.3f")
            for c in ("precision", "recall", "f1")})
        distribution = distribution_frame(report)
        bars = px.bar(distribution, x="class", y="items", color="kind", barmode="group",
                      title="Predicted vs gold classes")
        bars.update_layout(height=320, margin=dict(t=40, b=10))
        st.plotly_chart(bars, key="eval_distribution")
    with right:
        labels = list(per_class["class"])
        heatmap = px.imshow(report["confusion"], x=labels, y=labels, text_auto=True,
                            color_continuous_scale="Blues",
                            labels={"x": "predicted", "y": "gold", "color": "items"},
                            title=f"Confusion matrix: {VARIANT_NAMES[variant]}")
        heatmap.update_xaxes(side="bottom")
        heatmap.update_layout(height=420, margin=dict(t=40, b=10))
        st.plotly_chart(heatmap, key="eval_confusion")
    unanswered = (report.get("predicted_distribution") or {}).get("(none)")
    if unanswered:
        st.caption(f"{unanswered} test item(s) got no valid answer (counted wrong, in no "
                   "confusion column).")


def show_next_round(ws: Workspace, rnd: Round, busy: dict | None) -> None:
    if rnd.status not in FINISHED:
        return
    st.subheader("Next round")
    nxt = next_round_start(ws, rnd)
    st.markdown(f"Round {rnd.number + 1} will start from **{nxt}**, over the unlabeled items "
                "not selected yet, with the same settings (change them, and where to start "
                "from, on Round setup). It warms up, labels and selects, then waits for your "
                "review.")
    check = regression(ws, rnd)
    worse = bool(check and check["message"])
    if st.button("Start next round", type="secondary" if worse else "primary",
                 key="next_round", disabled=busy is not None,
                 help="Warm-up, label and select in one run; then it waits for review."):
        launch_with_feedback(ws, "round", f"round {rnd.number + 1} (up to review)")


def next_round_start(ws: Workspace, rnd: Round) -> str:
    """In words, where the round after `rnd` starts (round_scores.start_adapter)."""
    from semievol.round_scores import adapter_scores, describe

    if rnd.config.start_from != "best":
        return f"round {rnd.number}'s trained adapter (start from: previous)"
    scores = adapter_scores(ws, before_round=rnd.number + 1)
    if not scores:
        return f"round {rnd.number}'s trained adapter (nothing evaluated yet)"
    best = max(reversed(scores), key=lambda s: s["accuracy"])
    return f"{describe(best)}, the best so far"


def show_train_and_evaluate(ws: Workspace) -> None:
    try:
        rnd = get_round(ws)
    except SemiEvolError:
        st.info("No round yet: set up and launch round 1 on the Round setup page.")
        st.page_link(SETUP_PAGE, label="Open Round setup", icon=":material/settings:")
        return
    from common import show_round_state

    show_round_state(ws, here="train")
    running = jobs.running_runs(ws, rnd.id)
    busy = running[0] if running else None
    if busy is not None:
        st.info(f"Run {busy['id']} ({busy['kind']}) is working on this round.")
        show_live(ws, busy)
    show_training(ws, rnd, busy)
    show_evaluate_button(ws, rnd, busy)
    show_results(ws, rnd)
    show_next_round(ws, rnd, busy)

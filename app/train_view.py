"""The Train and evaluate page: what the latest round will train on, one-click training and
evaluation (background runs), the results side by side, and the next round.

Everything shown is read once per render by `semievol.views.train.train_page`; plain
functions turn it into frames (tested directly), then `show_*` functions render.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st
from common import launch_with_feedback, literal, show_round_state, show_train_action

from semievol.runs import jobs
from semievol.runs.progress import run_clock
from semievol.views.train import VARIANT_NAMES, TrainPage, train_page
from semievol.workspace.store import Workspace

SETUP_PAGE = "pages/2_Round_setup.py"


# -- frames (tested directly) --------------------------------------------------------------
def training_frame(page: TrainPage) -> pd.DataFrame:
    """Training items per class (rows) and source (gold / human / pseudo), with a total."""
    return pd.DataFrame(page.training_table(),
                        columns=["class", "gold", "human", "pseudo", "total"])


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
def show_training(ws: Workspace, page: TrainPage) -> None:
    rnd = page.round
    st.subheader("Training set")
    counts = page.counts
    summary = (f"{sum(counts.values())}** item(s)" + (", frozen when its training started"
                                                       if page.frozen else "")
               + f": {counts['gold']} labeled, {counts['human']} human-labeled, "
               f"{counts['pseudo']} selected pseudo-labels.")
    if page.frozen:
        st.markdown(f"Round {rnd.number} trained on **{summary}")
        if page.later_decisions:
            st.info(f"{page.later_decisions} decision(s) were made after this round started "
                    f"training: they count for round {rnd.number + 1}, not for these numbers.",
                    icon=":material/lock:")
    else:
        if not page.selected:
            st.warning(f"Round {rnd.number} has no selection yet: it selects when its round "
                       "runs (Round setup), or apply one on the Selection page. Until then "
                       "only the labeled set would be trained on.")
        st.markdown(f"Round {rnd.number} would train on **{summary}")
    frame = training_frame(page)
    if len(frame):
        st.dataframe(frame, hide_index=True)
    if rnd.final_adapter:
        if page.regression and page.regression["message"]:
            st.error(page.regression["message"], icon=":material/trending_down:")
        else:
            st.success(f"Round {rnd.number} is trained: {literal(rnd.final_adapter)}.")
    for confirmed in page.confirmations:
        st.caption(f"Confirmed by {literal(confirmed['reviewer'])} before training: "
                   f"{literal(confirmed['message'])}")
    show_train_action(ws, page.action, key="train")


def show_live(ws: Workspace, run: dict) -> None:
    """Progress and loss of a running run of this round (polled every 2 s)."""
    from runs_view import POLL_SECONDS, show_loss

    def body():
        current = jobs.get_run(ws, run["id"])
        if current["status"] != "running":
            st.rerun()
        progress = min(max(current["progress"] or 0.0, 0.0), 1.0)
        st.progress(progress, text=f"Run {current['id']} ({current['kind']}): "
                                   f"{100 * progress:.0f}% · {current['message'] or ''} · "
                                   f"{run_clock(current)}")
        show_loss(ws, current)

    st.fragment(body, run_every=POLL_SECONDS)()


def show_evaluate_button(ws: Workspace, page: TrainPage) -> None:
    rnd = page.round
    st.subheader("Evaluation")
    if page.split is None:
        st.warning("The workspace has no test items: import a test file on the Workspace page "
                   "to evaluate.")
        return
    if page.split != "test":
        st.caption("No test file: models are measured on the calibration slice (held out of "
                   "training), a small and rough estimate.")
    if not rnd.warmup_adapter:
        st.caption("Evaluation compares the warm-up adapter too: run the warm-up step first.")
    if not rnd.final_adapter:
        st.caption("Not trained yet: evaluating now measures base and warm-up only (the round "
                   "is finished by an evaluation after training).")
    if st.button("Evaluate", key="evaluate",
                 disabled=not rnd.warmup_adapter or page.busy is not None):
        launch_with_feedback(ws, "evaluate", f"evaluating round {rnd.number}")


def show_results(page: TrainPage) -> None:
    reports = page.reports
    if not reports:
        st.info("No evaluation yet for this round.")
        return
    import plotly.express as px

    for message in page.collapsed().values():
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


def show_next_round(ws: Workspace, page: TrainPage) -> None:
    rnd = page.round
    if page.next_start is None:
        return
    st.subheader("Next round")
    st.markdown(f"Round {rnd.number + 1} will start from **{page.next_start['summary']}**, "
                "over the unlabeled items not selected yet, with the same settings (change "
                "them, and where to start from, on Round setup). It warms up, labels and "
                "selects, then waits for your review.")
    worse = bool(page.regression and page.regression["message"])
    if st.button("Start next round", type="secondary" if worse else "primary",
                 key="next_round", disabled=page.busy is not None,
                 help="Warm-up, label and select in one run; then it waits for review."):
        launch_with_feedback(ws, "round", f"round {rnd.number + 1} (up to review)")


def show_train_and_evaluate(ws: Workspace) -> None:
    page = train_page(ws)
    if page.round is None:
        st.info("No round yet: set up and launch round 1 on the Round setup page.")
        st.page_link(SETUP_PAGE, label="Open Round setup", icon=":material/settings:")
        return
    show_round_state(ws, here="train", state=page.state)
    if page.busy is not None:
        st.info(f"Run {page.busy['id']} ({page.busy['kind']}) is working on this round.")
        show_live(ws, page.busy)
    show_training(ws, page)
    show_evaluate_button(ws, page)
    show_results(page)
    show_next_round(ws, page)

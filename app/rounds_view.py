"""The Rounds page: every round side by side (accuracy, pseudo-label volume, estimated
precision) and the lineage of one item.

`round_table`, `accuracy_frame`, `volume_frame`, `precision_frame` and `lineage_table` turn
semievol.views.lineage's dicts into frames (tested directly); `show_*` render them.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st
from common import literal

from semievol.views.lineage import MODELS, find_item, item_lineage, round_summaries
from semievol.views.sampled import enough, sampled_percent
from semievol.workspace.store import Workspace


def _precision(stats: dict | None) -> str:
    """A calibration precision in words: n and interval beside it, nothing below the
    minimum sample (views.sampled's one rule)."""
    if not stats:
        return "–"
    return sampled_percent(stats["precision"], stats["n"], stats["interval"],
                           need="needs at least")


def _audit(found: dict) -> str:
    if found["precision"] is None and not found["reviewed"]:
        return "–"
    return sampled_percent(found["precision"], found["reviewed"], found["precision_interval"])


def round_table(summaries: list[dict]) -> pd.DataFrame:
    """One row per round: the columns a reviewer compares side by side."""
    rows = []
    for s in summaries:
        acc = s["accuracy"]
        rows.append({
            "round": s["number"], "status": s["status_name"],
            **{f"acc {m}": acc[m] for m in MODELS},
            "pseudo-labels": s["pseudo_labels"], "agreed": s["agreed"],
            "reflected": s["reflected"], "selected": s["selected"],
            "decisions": s["decisions"], "accepted": s["accepted"], "rejected": s["rejected"],
            "relabeled": s["relabeled"],
            "calib. precision (selected)": _precision(s["calibration_selected"]),
            "calib. precision (all)": _precision(s["calibration_all"]),
            "audited precision": _audit(s["audit"]),
            "selection": s["selection"]["rule"] if s["selection"] else "not applied",
            "warning": s["regression"] or "",
            "adapter": s["final_adapter"] or "",
        })
    return pd.DataFrame(rows)


def accuracy_frame(summaries: list[dict]) -> pd.DataFrame:
    """Long form (round, model, accuracy) of the evaluated models; base and base+demos are
    evaluated once and repeated on every round as reference lines."""
    rows = [{"round": s["number"], "model": m, "accuracy": s["accuracy"][m]}
            for s in summaries for m in MODELS if s["accuracy"][m] is not None]
    return pd.DataFrame(rows, columns=["round", "model", "accuracy"])


def volume_frame(summaries: list[dict]) -> pd.DataFrame:
    rows = [{"round": s["number"], "kind": kind, "items": s[key]} for s in summaries
            for kind, key in (("produced", "pseudo_labels"), ("selected", "selected"))]
    return pd.DataFrame(rows, columns=["round", "kind", "items"])


def precision_frame(summaries: list[dict]) -> pd.DataFrame:
    """Estimated precision of the selected pseudo-labels per round, with interval bounds and
    the sample it rests on: from the calibration slice and, where reviewers audited, from
    the audit queue. An estimate from fewer items than views.sampled.MIN_SAMPLE is no point:
    one audited item plotted as 100 % says nothing but looks like everything."""
    rows = []
    for s in summaries:
        cal = s["calibration_selected"]
        if cal and enough(cal["n"]) and cal["precision"] is not None:
            rows.append({"round": s["number"], "estimate": "calibration",
                         "precision": cal["precision"], "low": cal["interval"][0],
                         "high": cal["interval"][1], "n": cal["n"]})
        found = s["audit"]
        if found["precision"] is not None and enough(found["reviewed"]):
            low, high = found["precision_interval"]
            rows.append({"round": s["number"], "estimate": "audit",
                         "precision": found["precision"], "low": low, "high": high,
                         "n": found["reviewed"]})
    return pd.DataFrame(rows, columns=["round", "estimate", "precision", "low", "high", "n"])


def lineage_table(rows: list[dict]) -> pd.DataFrame:
    """One row per round of `item_lineage`, answers and decisions flattened to text."""
    out = []
    for r in rows:
        out.append({
            "round": r["round"],
            "collaborators": "; ".join(f"{a['name']}: {a['answer']}" for a in r["answers"]),
            "pseudo-label": r["pseudo_label"], "path": r["path"], "entropy": r["entropy"],
            "option entropy": r["option_entropy"],
            "policy": r["policy"] or "not applied", "threshold": r["threshold"],
            "selected": r["selected"],
            "decisions": "; ".join(
                f"{d['action']}{' → ' + d['label'] if d['label'] else ''} by {d['reviewer']}"
                for d in r["decisions"]),
            "labeled by": r["labeled_by"] or "", "trained into": r["adapter"] or ""})
    return pd.DataFrame(out)


# -- rendering ----------------------------------------------------------------------------
def show_rounds(ws: Workspace) -> None:
    summaries = round_summaries(ws)
    if not summaries:
        st.info("No round yet: launch round 1 on the **Round setup** page. Each round's "
                "accuracy, pseudo-labels and estimated precision will line up here.")
        return
    for s in summaries:
        if s["regression"]:
            st.error(s["regression"], icon=":material/trending_down:")
    st.dataframe(round_table(summaries), hide_index=True)
    import plotly.express as px

    left, right = st.columns(2)
    accuracy = accuracy_frame(summaries)
    if accuracy.empty:
        left.info("No evaluation yet: the evaluate step measures each model on the test split.")
    else:
        figure = px.line(accuracy, x="round", y="accuracy", color="model", markers=True,
                         title="Test accuracy", category_orders={"model": list(MODELS)})
        figure.update_layout(height=320, margin=dict(t=40, b=10), yaxis_tickformat=".0%",
                             xaxis_dtick=1)
        left.plotly_chart(figure, key="rounds_accuracy")
    volume = px.bar(volume_frame(summaries), x="round", y="items", color="kind",
                    barmode="group", title="Pseudo-labels produced and selected")
    volume.update_layout(height=320, margin=dict(t=40, b=10), xaxis_dtick=1)
    right.plotly_chart(volume, key="rounds_volume")
    precision = precision_frame(summaries)
    if precision.empty:
        st.caption("No precision estimate yet: it comes from the calibration slice once a "
                   "selection is applied, or from the audit queue on the Selection page, "
                   "each from at least 10 items.")
        return
    # The two estimates of a round side by side, not on top of each other.
    precision["x"] = precision["round"] + precision["estimate"].map(
        {"calibration": -0.08, "audit": 0.08})
    figure = px.scatter(precision, x="x", y="precision", color="estimate",
                        labels={"x": "round", "n": "items"},
                        hover_data={"round": True, "x": False, "n": True},
                        error_y=precision["high"] - precision["precision"],
                        error_y_minus=precision["precision"] - precision["low"],
                        title="Estimated precision of the selected pseudo-labels (95% interval)")
    figure.update_layout(height=320, margin=dict(t=40, b=10), yaxis_tickformat=".0%",
                         yaxis_range=[0, 1.05], xaxis_tickvals=[s["number"] for s in summaries],
                         xaxis_range=[summaries[0]["number"] - 0.5,
                                      summaries[-1]["number"] + 0.5])
    st.plotly_chart(figure, key="rounds_precision")


def show_lineage(ws: Workspace) -> None:
    key = st.text_input("Item id (external id, or the internal number)", key="lineage_item",
                        placeholder="e.g. U05").strip()
    if not key:
        st.caption("Enter an item id to see every round it went through.")
        return
    item = find_item(ws, key)
    if item is None:
        st.warning(f"No item {literal(repr(key))} in this workspace.")
        return
    st.markdown(f"**{literal(item['external_id'])}** ({item['split']})"
                + (f" · gold answer **{literal(item['answer'])}**" if item["answer"] else ""))
    st.text(item["question"])
    rows = item_lineage(ws, item["id"])
    if not rows:
        st.info("No round has pseudo-labeled this item"
                + (" (labeled items train every round directly; test items are never trained "
                   "on)." if item["split"] in ("labeled", "test") else " yet."))
        return
    st.dataframe(lineage_table(rows), hide_index=True)

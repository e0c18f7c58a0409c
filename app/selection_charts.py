"""The Selection page's plots: the entropy histograms with the threshold, and the
calibration slice's precision against coverage with the previewed selection on it."""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from semievol.views.sampled import sampled_percent
from semievol.views.selection import Preview


def calibration_point(preview: Preview) -> tuple[float, float] | None:
    """(coverage, precision) of the previewed selection on the calibration items: the
    current threshold's point on the precision-coverage curve."""
    stats = preview.calibration
    if not stats["n"] or stats["selected"]["precision"] is None:
        return None
    return stats["coverage"], stats["selected"]["precision"]


def _share(stats: dict) -> str:
    return sampled_percent(stats["precision"], stats["n"], stats["interval"],
                           need="needs at least")



def log_axis(scores: pd.Series) -> bool:
    """Whether the scores pile up near zero (the median below a tenth of the maximum), so
    that a log axis shows them apart."""
    positive = scores[scores > 0]
    return len(positive) > 1 and positive.median() < 0.1 * positive.max()


def show_histograms(frame: pd.DataFrame, threshold: float | None, score: str,
                    per_class: dict[str, float] | None = None, *,
                    classes: bool = True) -> None:
    import plotly.express as px

    pool = frame[(frame["split"] == "unlabeled") & frame["score"].notna()].copy()
    if pool.empty:
        st.info(f"No {score} scores stored for this round's pool.")
        return
    logged = log_axis(pool["score"])
    floor = pool.loc[pool["score"] > 0, "score"].min() if logged else 0.0
    # On a log axis the bins are even in log space (a zero score sits at the smallest one).
    pool["x"] = np.log10(pool["score"].clip(lower=floor)) if logged else pool["score"]

    def at(value):
        return float(np.log10(max(value, floor))) if logged else value

    axis = f"log10 {score} (lower = more confident)" if logged else \
        f"{score} (lower = more confident)"
    left, right = st.columns(2)
    second = (right, "pseudo_label", "by pseudo-label") if classes else \
        (right, "selected", "by selection")  # open answers are not classes
    for column, colour, title in ((left, "path", "by agreement"), second):
        figure = px.histogram(pool, x="x", color=colour, nbins=40, barmode="stack",
                              title=f"Entropy ({score}) {title}",
                              labels={"x": axis, "pseudo_label": "class"})
        if threshold is not None:
            figure.add_vline(x=at(threshold), line_dash="dash", line_color="black",
                             annotation_text="threshold", annotation_position="top right")
        elif per_class and colour == "pseudo_label":
            for label, value in per_class.items():
                figure.add_vline(x=at(value), line_dash="dot", annotation_text=str(label))
        figure.update_layout(height=320, margin=dict(t=40, b=10))
        column.plotly_chart(figure, key=f"histogram_{colour}")
    st.caption("The unlabeled pool" + (", on a log axis: most scores sit near zero" if logged
                                       else "") + ". Percentiles are taken over the pool and "
               "the calibration items together, as if the calibration items were unlabeled.")


def show_calibration(preview: Preview, score: str) -> None:
    stats = preview.calibration
    if not stats["n"]:
        st.info("No calibration items in this round: round 1 holds out a slice of the labeled "
                "set (calibration fraction in the round setup) to measure precision here.")
        return
    cols = st.columns(2)
    cols[0].metric("Calibration precision, all", _share(stats["all"]))
    cols[1].metric("Calibration precision, selected", _share(stats["selected"]))
    if stats["n"] < preview.trust_min_items:
        st.warning(f"Too few items to trust: {stats['n']} calibration items (under "
                   f"{preview.trust_min_items}) give an interval as wide as the one above. "
                   "Raise the "
                   "calibration fraction on Round setup for the next workspace or round 1, or "
                   "audit more items below.", icon=":material/help:")
    curve = preview.curve
    if not curve.get("threshold"):
        return
    import plotly.graph_objects as go

    figure = go.Figure(go.Scatter(
        x=curve["coverage"], y=curve["precision"], mode="lines+markers", name="curve",
        customdata=np.c_[curve["threshold"], curve["count"]],
        hovertemplate="coverage %{x:.0%}<br>precision %{y:.0%}<br>threshold %{customdata[0]:.4f}"
                      "<br>%{customdata[1]} kept<extra></extra>"))
    point = calibration_point(preview)
    if point is not None:
        figure.add_trace(go.Scatter(x=[point[0]], y=[point[1]], mode="markers", name="current",
                                    marker=dict(size=14, symbol="star", color="crimson")))
    figure.update_layout(title=f"Precision against coverage on {stats['n']} calibration items",
                         xaxis_title="coverage (share kept)", yaxis_title="precision",
                         xaxis_tickformat=".0%", yaxis_tickformat=".0%", height=340,
                         margin=dict(t=40, b=10))
    st.plotly_chart(figure, key="calibration_curve")

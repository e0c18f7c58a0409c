"""The Selection page: preview a selection policy over stored entropies, see its calibration
evidence, the leakage guard and the audit queue, and apply it.

Plain functions (`selection_frame`, `class_table`, `slider_range`, `audit_table`) turn
library reads into frames; `show_*` render them (the plots: selection_charts). Nothing here loads a
model: moving a slider only re-reads stored entropies (selection_state.compute_selection).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

from common import flash, show_error
from selection_charts import show_calibration, show_histograms
from semievol import audit
from semievol.config import SELECTION_POLICIES, SelectionConfig
from semievol.errors import SemiEvolError
from semievol.guards import leakage_flags, training_warnings
from semievol.items import label_counts
from semievol.pseudo_labels import available_scores, score_range
from semievol.rounds import round_overview
from semievol.selection_state import (applied_selection, apply_selection, class_thresholds,
                                      compute_selection, preview_rows, selection_in_force)
from semievol.store import Workspace

POLICY_HELP = {
    "percentile": "keep entropy at or below the θ-th percentile (paper: 50)",
    "per_class": "the θ-th percentile within each class (keeps class balance)",
    "agreement_only": "keep the items where every collaborator agreed",
    "absolute": "keep entropy at or below a fixed threshold",
}
PAGES = Path(__file__).resolve().parent / "pages"


# -- reads --------------------------------------------------------------------------------
def slider_range(ws: Workspace, round_id: int, score: str) -> tuple[float, float]:
    """(min, max) of the round's scores for the threshold slider, widened when they are
    all equal (or absent)."""
    found = score_range(ws, round_id, score)
    if found is None:
        return 0.0, 1.0
    low, high = found
    return (low, high) if high > low else (low, low + 1e-3)


def selection_frame(ws: Workspace, round_id: int, config: SelectionConfig) -> pd.DataFrame:
    """One row per pseudo-label of the round (unlabeled and calibration) under `config`
    (selection_state.preview_rows), with the result's summary and calibration evidence in
    `frame.attrs`."""
    result = compute_selection(ws, round_id, config)
    frame = pd.DataFrame(preview_rows(result),
                         columns=["item_id", "id", "split", "pseudo_label", "label", "path",
                                  "agreement", "score", "selected", "source", "gold",
                                  "correct"])
    frame.attrs["summary"] = result.summary()
    frame.attrs["calibration"] = result.calibration()
    frame.attrs["class_thresholds"] = class_thresholds(result.rows, config)
    return frame


def agreement_table(frame: pd.DataFrame) -> pd.DataFrame:
    """For an open task (its answers are not classes): by how many collaborators agreed,
    the pool and what the selection would train."""
    pool = frame[frame["split"] == "unlabeled"].copy()
    pool["agreeing"] = pool["agreement"].map(
        lambda a: "no answer" if a is None or pd.isna(a) else f"{a:.0%} agree")
    rows = []
    for share, group in sorted(pool.groupby("agreeing"), key=lambda g: g[0], reverse=True):
        chosen = group[group["selected"]]
        rows.append({"collaborators": share, "pool": len(group), "would train": len(chosen),
                     "of which human": int(chosen["source"].isin(["accepted",
                                                                  "relabeled"]).sum())})
    return pd.DataFrame(rows, columns=["collaborators", "pool", "would train",
                                       "of which human"])


def class_table(ws: Workspace, frame: pd.DataFrame) -> pd.DataFrame:
    """Per class: gold labeled items, this round's pool size, what the selection would train
    (all, and how many of those a human accepted or relabeled)."""
    pool = frame[frame["split"] == "unlabeled"]
    chosen = pool[pool["selected"]]
    gold = {r["label"]: r["items"] for r in label_counts(ws, ("labeled",))}
    task = ws.task
    classes = list(task.labels) if task and task.labels else []
    classes += [c for c in sorted(set(pool["label"]) | set(gold)) if c not in classes]
    rows = [{"class": c, "labeled (gold)": gold.get(c, 0),
             "pool": int((pool["pseudo_label"] == c).sum()),
             "would train": int((chosen["label"] == c).sum()),
             "of which human": int(((chosen["label"] == c)
                                   & chosen["source"].isin(["accepted", "relabeled"])).sum())}
            for c in classes]
    return pd.DataFrame(rows, columns=["class", "labeled (gold)", "pool", "would train",
                                       "of which human"])


def review_page() -> str | None:
    """The Review page's path for st.page_link, when that page exists."""
    found = sorted(PAGES.glob("*Review*.py"))
    return f"pages/{found[0].name}" if found else None


def audit_table(ws: Workspace, round_id: int, n_per_bin: int) -> pd.DataFrame:
    """The audit queue with each item's bin, pseudo-label, score and current decision."""
    rows = [{**r, "decision": r["decision"] or ""}
            for r in audit.audit_rows(ws, round_id, n_per_bin)]
    return pd.DataFrame(rows, columns=["id", "bin", "score", "pseudo_label", "question",
                                       "decision"])


# -- rendering ----------------------------------------------------------------------------
def _fmt(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def choose_round(ws: Workspace) -> dict | None:
    """The round selector; None (with an empty state shown) when there is nothing to select."""
    rounds = round_overview(ws)
    if not rounds:
        st.info("No round yet: set up and launch round 1 on the **Round setup** page; its "
                "pseudo-labels appear here once the label step has run.")
        return None
    by_id = {r["id"]: r for r in rounds}
    chosen = st.selectbox("Round", list(by_id), key="selection_round",
                          format_func=lambda i: f"Round {by_id[i]['number']} "
                                                f"({by_id[i]['pseudo_labels']} pseudo-labels)")
    rnd = by_id[chosen]
    if not rnd["pseudo_labels"] + rnd["calibration_labels"]:
        st.info(f"Round {rnd['number']} has no pseudo-labels yet: run its label step "
                "(`semievol label WORKSPACE`), then come back to choose the threshold.")
        return None
    return rnd


def policy_controls(ws: Workspace, round_id: int, *,
                    disabled: bool = False) -> SelectionConfig | None:
    """Policy, θ, absolute threshold and score widgets (keyed per round, starting from the
    round's applied selection); returns the SelectionConfig they describe."""
    start = selection_in_force(ws, round_id)[0]
    scores = available_scores(ws, round_id)
    cols = st.columns([2, 1])
    open_task = bool(ws.task and ws.task.kind == "open")
    # An open task's answers are not classes: no per-class policy, no class floor.
    policies = [p for p in SELECTION_POLICIES if not (open_task and p == "per_class")]
    policy = cols[0].radio("Policy", policies, horizontal=True,
                           index=policies.index(start.policy) if start.policy in policies
                           else 0,
                           format_func=lambda p: p.replace("_", " "),
                           key=f"selection_policy_{round_id}", disabled=disabled,
                           help="; ".join(f"{k}: {v}" for k, v in POLICY_HELP.items()))
    score = cols[1].radio("Score", scores, horizontal=True,
                          index=scores.index(start.score) if start.score in scores else 0,
                          key=f"selection_score_{round_id}", disabled=disabled,
                          help="nll: mean token NLL of the pseudo-response under the warm-up "
                               "model (paper eq. 6); option_entropy: entropy of the options.")
    low, high = slider_range(ws, round_id, score)
    cols = st.columns(2)
    theta = cols[0].slider("Keep the most confident θ % (percentile)", 0.0, 100.0,
                           float(start.theta), step=1.0,
                           help="50 keeps the most confident half (the paper's setting); "
                                "lower keeps fewer, surer pseudo-labels.",
                           key=f"selection_theta_{round_id}",
                           disabled=disabled or policy not in ("percentile", "per_class"))
    default = start.threshold if start.threshold is not None else (low + high) / 2
    threshold = cols[1].slider(f"Absolute threshold ({score})", low, high,
                               float(min(max(default, low), high)), step=(high - low) / 200,
                               format="%.4f", key=f"selection_threshold_{round_id}_{score}",
                               disabled=disabled or policy != "absolute")
    floor = st.slider("Keep at least this share of every class", 0.0, 1.0,
                      float(start.class_floor), step=0.05, format="%.2f",
                      key=f"selection_floor_{round_id}",
                      disabled=disabled or policy == "agreement_only" or open_task,
                      help="Off for open tasks (their answers are not classes). "
                           "The most confident items of a class the policy would drop are "
                           "kept up to this share, so no class the pool has is left out of "
                           "training (0 = the policy alone).")
    try:
        return SelectionConfig(policy=policy, theta=float(theta), threshold=float(threshold)
                               if policy == "absolute" else None, score=score,
                               class_floor=float(floor))
    except SemiEvolError as exc:
        show_error(exc)
        return None


def show_counts(ws: Workspace, frame: pd.DataFrame) -> None:
    summary = frame.attrs["summary"]
    cols = st.columns(4)
    cols[0].metric("Selected to train", summary["selected"])
    cols[1].metric("Unlabeled pool", summary["pool"])
    cols[2].metric("Threshold", _fmt(summary["threshold"]))
    cols[3].metric("Leakage excluded", summary["excluded_leakage"])
    human = summary["human"]
    cols = st.columns(3)
    cols[0].metric("Accepted by a reviewer", human["accepted"])
    cols[1].metric("Rejected by a reviewer", human["rejected"])
    cols[2].metric("Relabeled by a reviewer", human["relabeled"])
    if ws.task and ws.task.kind == "open":
        st.markdown("**What would be trained, by agreement** (an open task's answers are "
                    "not classes; the labeled set and earlier rounds' selections are trained "
                    "on too)")
        st.dataframe(agreement_table(frame), hide_index=True)
        return
    st.markdown("**What would be trained, by class** (this round's pool; the labeled set and "
                "earlier rounds' selections are trained on too)")
    st.dataframe(class_table(ws, frame), hide_index=True)


def show_leakage(ws: Workspace, round_id: int) -> None:
    flags = leakage_flags(ws, round_id)
    if not flags:
        st.caption("No pseudo-labeled item is flagged as a near-duplicate of a test item (the "
                   "guard runs in the select step: `semievol select WORKSPACE`).")
        return
    st.markdown(f"**{len(flags)} item(s) nearly duplicate a test item** and are left out of "
                "training unless a reviewer accepts them.")
    st.dataframe(pd.DataFrame(flags), hide_index=True)


def show_audit(ws: Workspace, round_id: int) -> None:
    if applied_selection(ws, round_id) is None:
        st.info("Apply a selection first: the audit samples what the applied policy keeps.")
        return
    n_per_bin = int(st.number_input("Items per entropy bin", min_value=1, max_value=50,
                                    value=audit.DEFAULT_PER_BIN, key="audit_per_bin"))
    table = audit_table(ws, round_id, n_per_bin)
    if table.empty:
        st.info("The applied selection keeps no unlabeled pseudo-labels: nothing to audit.")
        return
    hint = ("Check these on the **Review** page: accept a correct pseudo-label, reject or "
            "relabel a wrong one (bins go from most to least confident).")
    st.markdown(hint)
    page = review_page()
    if page:
        st.page_link(page, label="Open the Review page", icon=":material/rate_review:")
    st.dataframe(table, hide_index=True)
    estimate = audit.audit_estimate(ws, round_id, n_per_bin)
    cols = st.columns(3)
    cols[0].metric("Audited", f"{estimate['reviewed']} of {estimate['queue']}")
    if estimate["error_rate"] is None:
        cols[1].metric("Estimated error rate", "–")
        st.caption("No audited item has a decision yet.")
        return
    low, high = estimate["interval"]
    cols[1].metric("Estimated error rate", f"{estimate['error_rate']:.0%}",
                   help=estimate["method"])
    cols[2].metric("95% interval", f"{low:.0%}–{high:.0%}")
    note = "" if estimate["complete"] else (" Some bins have no verdict yet: the interval "
                                            "counts them as anywhere from 0% to 100% wrong.")
    st.caption(f"Over {estimate['selected']} policy-selected item(s); about "
               f"{estimate['expected_wrong']:.1f} wrong among those no reviewer decided.{note}")


def show_apply(ws: Workspace, rnd: dict, config: SelectionConfig) -> None:
    if rnd["final_adapter"]:
        st.info(f"Round {rnd['number']} is already trained: its selection is kept as it was "
                "trained on. Change the selection of the next round instead.")
        return
    if not st.button("Apply this selection", type="primary", key="apply_selection"):
        st.caption("Training uses the applied selection; the preview above changes nothing.")
        return
    try:
        summary = apply_selection(ws, rnd["id"], config)
    except (SemiEvolError, ValueError) as exc:
        show_error(exc)
        return
    human = summary["human"]
    flash(f"Applied to round {rnd['number']}: {summary['selected']} of {summary['pool']} "
          f"pseudo-label(s) selected for training ({human['accepted']} accepted, "
          f"{human['relabeled']} relabeled, {human['rejected']} rejected by reviewers; "
          f"{summary['excluded_leakage']} left out for leakage).")
    st.rerun()


def show_selection(ws: Workspace) -> None:
    from common import show_glossary, show_round_state, show_train_action

    show_round_state(ws, here="selection")
    rnd = choose_round(ws)
    if rnd is None:
        return
    trained = rnd["status"] in ("training", "trained", "done")
    if trained:
        st.info(f"Round {rnd['number']} has started training: its selection is what it "
                "trained on and the controls are read-only. Change the selection of the next "
                "round instead.", icon=":material/lock:")
    show_glossary()
    config = policy_controls(ws, rnd["id"], disabled=trained)
    if config is None:
        return
    try:
        frame = selection_frame(ws, rnd["id"], config)
    except (SemiEvolError, ValueError) as exc:
        show_error(exc)
        return
    show_counts(ws, frame)
    if not trained:
        show_apply(ws, rnd, config)
        for warning in training_warnings(ws, rnd["id"]):
            st.warning(warning["message"], icon=":material/warning:")
        show_train_action(ws, rnd, key="selection_train")
    st.subheader("Entropy")
    show_histograms(frame, frame.attrs["summary"]["threshold"], config.score,
                    frame.attrs["class_thresholds"], classes=ws.task.kind == "choice")
    st.subheader("Calibration")
    show_calibration(ws, rnd["id"], frame, config.score)
    st.subheader("Leakage guard")
    show_leakage(ws, rnd["id"])
    st.subheader("Audit queue")
    show_audit(ws, rnd["id"])

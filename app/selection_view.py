"""The Selection page: preview a selection policy over stored entropies, see its calibration
evidence, the leakage guard and the audit queue, and apply it.

Everything shown is read through semievol.views.selection (where the controls start, the
preview of a config, the audit queue); plain functions (`selection_frame`, `class_table`,
`agreement_table`, `audit_table`) turn it into frames, `show_*` render them (the plots:
selection_charts). Nothing here loads a model: moving a slider only re-reads stored scores.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st
from common import allow, flash, show_error, user_errors
from selection_charts import show_calibration, show_histograms

from semievol.config import (SELECTION_POLICIES, SELECTION_WEIGHTINGS, SelectionConfig,
                             takes_theta)
from semievol.curation.selection_state import apply_selection, keep_for_next_rounds
from semievol.errors import SemiEvolError
from semievol.views import selection as view
from semievol.views.sampled import MIN_SAMPLE, enough, sampled_percent
from semievol.views.status import round_label, round_rows
from semievol.views.train import train_action
from semievol.workspace.store import Workspace

POLICY_HELP = {
    "percentile": "keep entropy at or below the θ-th percentile (paper: 50)",
    "per_class": "the θ-th percentile within each class (keeps class balance)",
    "agreement_only": "keep the items where every collaborator agreed",
    "absolute": "keep entropy at or below a fixed threshold",
    "teach": "keep what the warm-up model can still learn: items the other collaborators "
             "agree on and it is less sure of than they are (θ % of them, largest gap first)",
}
PAGES = Path(__file__).resolve().parent / "pages"


# -- frames -------------------------------------------------------------------------------
def selection_frame(preview: view.Preview) -> pd.DataFrame:
    """One row per pseudo-label of the round (unlabeled and calibration) under the previewed
    config."""
    return pd.DataFrame(preview.rows,
                        columns=["item_id", "id", "split", "pseudo_label", "label", "path",
                                 "agreement", "score", "selected", "source", "gold",
                                 "correct"])


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


def class_table(preview: view.Preview, frame: pd.DataFrame) -> pd.DataFrame:
    """Per class: gold labeled items, this round's pool size, what the selection would train
    (all, and how many of those a human accepted or relabeled)."""
    pool = frame[frame["split"] == "unlabeled"]
    chosen = pool[pool["selected"]]
    gold = preview.gold
    classes = list(preview.labels)
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


def audit_table(rows: list[dict]) -> pd.DataFrame:
    """The audit queue with each item's bin, pseudo-label, score and current decision."""
    return pd.DataFrame([{**r, "decision": r["decision"] or ""} for r in rows],
                        columns=["id", "bin", "score", "pseudo_label", "question", "decision"])


# -- rendering ----------------------------------------------------------------------------
def _fmt(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def choose_round(ws: Workspace) -> dict | None:
    """The round selector; None (with an empty state shown) when there is nothing to select."""
    rounds = round_rows(ws)
    if not rounds:
        st.info("No round yet: set up and launch round 1 on the **Round setup** page; its "
                "pseudo-labels appear here once the label step has run.")
        return None
    by_id = {r["id"]: r for r in rounds}
    chosen = st.selectbox("Round", list(by_id), key="selection_round",
                          format_func=lambda i: f"{round_label(by_id[i])} · "
                                                f"{by_id[i]['pseudo_labels']} pseudo-labels")
    rnd = by_id[chosen]
    if not rnd["pseudo_labels"] + rnd["calibration_labels"]:
        st.info(f"Round {rnd['number']} has no pseudo-labels yet: run its label step "
                "on the **Round setup** page, then come back to choose the threshold.")
        return None
    return rnd


def policy_controls(ws: Workspace, round_id: int, *,
                    disabled: bool = False) -> SelectionConfig | None:
    """Policy, θ, absolute threshold and score widgets (keyed per round, starting from the
    round's applied selection); returns the SelectionConfig they describe."""
    start_at = view.controls(ws, round_id)
    start, scores, open_task = start_at.start, start_at.scores, start_at.open_task
    cols = st.columns([2, 1])
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
                          help="nll: how unsure the warm-up model is of the pseudo-label itself "
                               "(paper eq. 6); option_entropy: how spread its probabilities "
                               "are over the options.")
    low, high = start_at.ranges[score]
    cols = st.columns(2)
    theta = cols[0].slider("Keep θ % (percentile)", 0.0, 100.0,
                           float(start.theta), step=1.0,
                           help="percentile and per class: 50 keeps the most confident half "
                                "(the paper's setting); lower keeps fewer, surer "
                                "pseudo-labels. teach: 100 keeps every item the warm-up "
                                "model can still learn, lower the ones it is least sure of.",
                           key=f"selection_theta_{round_id}",
                           disabled=disabled or not takes_theta(policy))
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
    weighting = st.radio("Pseudo-label loss weight", SELECTION_WEIGHTINGS, horizontal=True,
                         index=SELECTION_WEIGHTINGS.index(start.weighting),
                         key=f"selection_weighting_{round_id}", disabled=disabled,
                         help="none: every kept pseudo-label counts in full. confidence: its "
                              "loss is weighted by the collaborators' confidence in it (their "
                              "mean probability of it), so a doubtful one teaches less "
                              "instead of being dropped; with θ 100 nothing is dropped. A "
                              "reviewer's accept or relabel counts in full.")
    try:
        return SelectionConfig(policy=policy, theta=float(theta), threshold=float(threshold)
                               if policy == "absolute" else None, score=score,
                               class_floor=float(floor), weighting=weighting)
    except SemiEvolError as exc:
        show_error(exc)
        return None


def comparison_frame(preview: view.Preview) -> pd.DataFrame:
    """Every policy on the same scores, one row each (the previewed one marked)."""
    rows = []
    for row in preview.comparison:
        student, cal = row["student"], row["calibration"]
        rows.append({"policy": ("▶ " if row["current"] else "") + row["describe"],
                     "selected": row["selected"],
                     "already the warm-up's answer": f"{student['same']} of {student['known']}"
                     if student["known"] else "–",
                     "calibration precision": sampled_percent(
                         cal["precision"], cal["n"], cal["interval"], need="needs at least")})
    return pd.DataFrame(rows, columns=["policy", "selected", "already the warm-up's answer",
                                       "calibration precision"])


def show_comparison(preview: view.Preview) -> None:
    with st.expander("Every policy on these scores"):
        st.caption("Computed from the stored scores with this θ, score and class floor; "
                   "nothing is applied. A selection the warm-up model already answers "
                   "teaches it little.")
        st.dataframe(comparison_frame(preview), hide_index=True)


def show_counts(preview: view.Preview, frame: pd.DataFrame) -> None:
    summary = preview.summary
    cols = st.columns(4)
    cols[0].metric("Selected to train", summary["selected"])
    cols[1].metric("Unlabeled pool", summary["pool"])
    cols[2].metric("Threshold", _fmt(summary["threshold"]))
    cols[3].metric("Leakage excluded", summary["excluded_leakage"])
    human = summary["human"]
    by_policy = summary["selected"] - human["accepted"] - human["relabeled"]
    # One sentence that adds up: the walk read "Selected to train 179" beside "151 + 28".
    st.markdown(f"**{summary['selected']}** of the pool's {summary['pool']} item(s) go to "
                f"training = {by_policy} kept by the policy + {human['accepted']} accepted + "
                f"{human['relabeled']} relabeled by a reviewer; {human['rejected']} rejected "
                "by a reviewer.")
    student = summary.get("student")
    if student and student["known"]:
        st.caption(f"The warm-up model already answers {student['same']} of these "
                   f"{student['known']} ({student['share']:.0%}) the same way on its own: "
                   "training on them repeats what it knows; the rest is what it can learn.")
    if summary.get("mean_weight") is not None:
        st.caption(f"Weighted by the collaborators' confidence: the pseudo-labels kept by the "
                   f"policy train with a mean loss weight of {summary['mean_weight']:.2f} "
                   "(a reviewer's accept or relabel counts in full).")
    show_comparison(preview)
    cols = st.columns(3)
    cols[0].metric("Accepted by a reviewer", human["accepted"])
    cols[1].metric("Rejected by a reviewer", human["rejected"])
    cols[2].metric("Relabeled by a reviewer", human["relabeled"])
    if "by_class" not in summary:  # an open task
        st.markdown("**What would be trained, by agreement** (an open task's answers are "
                    "not classes; the labeled set and earlier rounds' selections are trained "
                    "on too)")
        st.dataframe(agreement_table(frame), hide_index=True)
        return
    st.markdown("**What would be trained, by class** (this round's pool; the labeled set and "
                "earlier rounds' selections are trained on too)")
    st.dataframe(class_table(preview, frame), hide_index=True)


def show_leakage(preview: view.Preview) -> None:
    flags = preview.leakage
    if not flags:
        st.caption("No pseudo-labeled item is flagged as a near-duplicate of a test item (the "
                   "guard runs in the round's select step).")
        return
    st.markdown(f"**{len(flags)} item(s) nearly duplicate a test item** and are left out of "
                "training unless a reviewer accepts them.")
    st.dataframe(pd.DataFrame(flags), hide_index=True)


def show_audit(ws: Workspace, round_id: int) -> None:
    n_per_bin = int(st.number_input("Items per entropy bin", min_value=1, max_value=50,
                                    value=view.DEFAULT_PER_BIN, key="audit_per_bin"))
    found = view.audit(ws, round_id, n_per_bin)
    if found is None:
        st.info("Apply a selection first: the audit samples what the applied policy keeps.")
        return
    table = audit_table(found["rows"])
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
    estimate = found["estimate"]
    cols = st.columns(2)
    cols[0].metric("Audited", f"{estimate['reviewed']} of {estimate['queue']}")
    if not enough(estimate["reviewed"]) or estimate["error_rate"] is None:
        cols[1].metric("Estimated error rate", sampled_percent(None, estimate["reviewed"]))
        st.caption(f"An error rate from fewer than {MIN_SAMPLE} audited items could be "
                   "anything: decide on more items of the queue.")
        return
    cols[1].metric("Estimated error rate", sampled_percent(
        estimate["error_rate"], estimate["reviewed"], estimate["interval"]),
        help=estimate["method"])
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
        allow(ws, "settings")
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


def show_keep(ws: Workspace, rnd: dict, config: SelectionConfig) -> None:
    """"Use these settings for the next rounds": the applied selection becomes the one new
    rounds start from (a tuned threshold no longer falls back silently in round 2)."""
    found = view.next_rounds(ws, rnd["id"])
    applied, kept = found["applied"], found["kept"]
    if kept is not None:
        st.caption(f"New rounds start from {kept[0].describe()}, kept from round {kept[1]}.")
    if applied is None:
        return
    if applied != config:
        st.caption("The controls differ from the applied selection: apply them first to "
                   "use them for the next rounds.")
        return
    if kept is not None and kept[0] == applied:
        return
    if st.button("Use these settings for the next rounds", key="keep_selection",
                 icon=":material/fast_forward:",
                 help=f"New rounds will select by {applied.describe()} instead of the round "
                      "config's rule."):
        with user_errors():
            allow(ws, "settings")
            kept_config = keep_for_next_rounds(ws, rnd["id"])
            flash(f"New rounds will select by {kept_config.describe()} (from round "
                  f"{rnd['number']}).")
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
        preview = view.preview(ws, rnd["id"], config)
    except (SemiEvolError, ValueError) as exc:
        show_error(exc)
        return
    frame = selection_frame(preview)
    show_counts(preview, frame)
    if not trained:
        show_apply(ws, rnd, config)
    show_keep(ws, rnd, config)
    if not trained:
        for warning in preview.warnings:
            st.warning(warning["message"], icon=":material/warning:")
        show_train_action(ws, train_action(ws, rnd["id"], rnd["number"], rnd["status"]),
                          key="selection_train")
    st.subheader("Entropy")
    show_histograms(frame, preview.summary["threshold"], config.score,
                    preview.class_thresholds, classes="by_class" in preview.summary)
    st.subheader("Calibration")
    show_calibration(preview, config.score)
    st.subheader("Leakage guard")
    show_leakage(preview)
    st.subheader("Audit queue")
    show_audit(ws, rnd["id"])

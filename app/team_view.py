"""The Team page: how far reviewers agree with each other and with the collaborators, each
reviewer's pace and accuracy, and, in team mode, the overlap share and the conflicts a lead
adjudicates.

Reads semievol.views.team's page model once per render; writes through
semievol.team.handout (`set_overlap_share`, `adjudicate`), the functions `semievol overlap`
and `semievol adjudicate` call.
"""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
import streamlit as st
from common import allow, current_account, flash, literal, user_errors

from semievol.team.handout import adjudicate, set_overlap_share
from semievol.views.team import TeamPage
from semievol.workspace.store import Workspace


def _number(value, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def pair_frame(agreement: dict) -> pd.DataFrame:
    """One row per pair of reviewers: items both rated, agreed, Cohen's kappa."""
    return pd.DataFrame([{"reviewers": f"{p['a']} · {p['b']}", "items": p["items"],
                          "agreed": p["agreed"], "kappa": _number(p["kappa"])}
                         for p in agreement["pairs"]],
                        columns=["reviewers", "items", "agreed", "kappa"])


def class_frame(agreement: dict) -> pd.DataFrame:
    return pd.DataFrame([{"class": c["class"], "items": c["items"],
                          "alpha": _number(c["alpha"])} for c in agreement["classes"]],
                        columns=["class", "items", "alpha"])


def reviewer_frame(pace: dict, accuracy: dict) -> pd.DataFrame:
    """One row per reviewer: decisions, median seconds, decisions an hour, accuracy on
    items with a known answer."""
    rows = []
    for who, p in pace.items():
        acc = accuracy.get(who)
        rows.append({"reviewer": who, "decisions": p["decisions"],
                     "median seconds": _number(p["median_seconds"], 1),
                     "per hour": _number(p["per_hour"], 0),
                     "accuracy on known answers": (f"{acc['accuracy']:.0%} of {acc['items']}"
                                                   if acc else "no known answer yet")})
    return pd.DataFrame(rows, columns=["reviewer", "decisions", "median seconds", "per hour",
                                       "accuracy on known answers"])


def collaborator_figure(rows: list[dict]) -> go.Figure | None:
    """Reviewers (rows) against collaborators (columns): the share of the items a reviewer
    labeled on which the collaborator gave the same answer."""
    rows = [r for r in rows if r["items"]]
    if not rows:
        return None
    reviewers = sorted({r["reviewer"] for r in rows})
    collaborators = sorted({r["collaborator"] for r in rows})
    cell = {(r["reviewer"], r["collaborator"]): r for r in rows}
    z = [[cell[w, c]["agreement"] if (w, c) in cell else None for c in collaborators]
         for w in reviewers]
    text = [[f"{cell[w, c]['agreement']:.0%} of {cell[w, c]['items']}" if (w, c) in cell
             else "" for c in collaborators] for w in reviewers]
    figure = go.Figure(go.Heatmap(z=z, x=[f"collaborator {c}" for c in collaborators],
                                  y=reviewers, zmin=0, zmax=1, text=text,
                                  texttemplate="%{text}", colorscale="Blues",
                                  colorbar={"title": "agree"}))
    figure.update_layout(height=120 + 40 * len(reviewers), margin={"t": 30, "b": 10})
    return figure


def show_agreement(page: TeamPage) -> None:
    found = page.agreement
    between = found["reviewers"]
    if not found["pace"]:
        st.info("No decisions yet: agreement shows once reviewers have decided.")
        return
    st.subheader("Between reviewers")
    cols = st.columns(2)
    cols[0].metric("Krippendorff's alpha", _number(between["alpha"]),
                   help="Agreement beyond chance over all reviewers (1 = perfect, 0 = "
                        "chance), on items two or more reviewers rated: "
                        f"{between['items']} here. n/a: too few such items, or one class.")
    cols[1].metric("Items rated by two or more", between["items"])
    left, right = st.columns(2)
    left.markdown("**Cohen's kappa per pair**")
    left.dataframe(pair_frame(between), hide_index=True)
    right.markdown("**Alpha per class** (one class against the rest)")
    right.dataframe(class_frame(between), hide_index=True)
    st.subheader("Reviewers and collaborators")
    st.caption("On the items a reviewer labeled (rejects name no label), how often each "
               "collaborator gave the same answer: where the model agrees with the experts.")
    figure = collaborator_figure(found["collaborators"])
    if figure is None:
        st.caption("No labeled item has collaborator answers yet.")
    else:
        st.plotly_chart(figure, key="team_collaborators")
    st.subheader("Pace and accuracy")
    st.caption("Known answers: a lead's adjudication, or a gold answer in the workspace.")
    st.dataframe(reviewer_frame(found["pace"], found["accuracy"]), hide_index=True)


def _save_overlap(ws_path: str) -> None:
    with user_errors(), Workspace(ws_path) as ws:
        allow(ws, "team")
        share = st.session_state["team_overlap"] / 100
        set_overlap_share(ws, share)
        st.toast(f"Overlap set to {share:.0%}.", icon=":material/done:")


def show_overlap(ws: Workspace, page: TeamPage) -> None:
    st.subheader("Overlap")
    st.session_state.setdefault("team_overlap", round(page.overlap * 100))
    st.slider("Share of items reviewed by two reviewers (%)", 0, 100, key="team_overlap",
              help="Each of these items goes to two reviewers, neither seeing the other's "
                   "decision; a disagreement waits for a lead below.")
    st.button("Save overlap", key="team_overlap_save", on_click=_save_overlap,
              args=(str(ws.path),))
    progress = page.progress
    if progress:
        st.caption(f"Round {progress['round']}: {progress['done']} of {progress['total']} "
                   "items have every review they need.")


def _adjudicate(ws_path: str, item_id: int, choice: str, label: str | None) -> None:
    with user_errors(), Workspace(ws_path) as ws:
        allow(ws, "adjudicate")
        account = current_account(ws)
        adjudicate(ws, item_id, choice, lead=account.name, label=label)
        flash(f"Adjudicated: {choice}" + (f" as {literal(label)}" if label else "") + ".")


def show_conflicts(ws: Workspace, page: TeamPage) -> None:
    st.subheader(f"Conflicts ({len(page.conflicts)})")
    st.caption("Reviewers disagreed: the item is left out of training until you decide. "
               f"What trains ({literal(page.rule)} rule): {literal(page.rule_text)}.")
    if not page.conflicts:
        st.caption("No conflict waits for a lead.")
        return
    task = ws.task
    for c in page.conflicts[:20]:
        with st.container(border=True):
            st.markdown(f"**Item {literal(c['external_id'])}** · pseudo-label "
                        f"{literal(c['pseudo_label'] or '(none)')}")
            st.text(c["question"])
            for d in c["decisions"]:
                label = f" → {d['label']}" if d["action"] == "relabel" else ""
                st.markdown(f"- {literal(d['reviewer'])}: {d['action']}{literal(label)}")
            options = list(task.labels or []) if task else []
            row = st.container(horizontal=True)
            key = f"conflict_{c['item_id']}"
            row.button("Accept the pseudo-label", key=f"{key}_accept", on_click=_adjudicate,
                       args=(str(ws.path), c["item_id"], "accept", None),
                       disabled=c["pseudo_label"] is None)
            row.button("Reject", key=f"{key}_reject", on_click=_adjudicate,
                       args=(str(ws.path), c["item_id"], "reject", None))
            for option in options:
                row.button(f"Relabel: {option}", key=f"{key}_relabel_{option}",
                           on_click=_adjudicate,
                           args=(str(ws.path), c["item_id"], "relabel", option))
    if len(page.conflicts) > 20:
        st.caption(f"{len(page.conflicts) - 20} more after these: they show as these are "
                   "settled (or list them with `semievol conflicts`).")

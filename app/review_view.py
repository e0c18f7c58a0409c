"""The Review page: a round's pseudo-labeled items, filtered, sorted and paged; one item's
demonstrations, collaborator answers, reflection and history; decisions on one item or on
everything the filter shows.

Every read is a query in `semievol.views.review` (paged in SQL); every decision goes through
`decisions.record_decisions` at once. `st.session_state` holds only this view's widgets
(round, filters, page, chosen item, the action form), all under keys starting `review_`.
"""

from __future__ import annotations

import hashlib
import math
from datetime import datetime

import pandas as pd
import streamlit as st
from common import allow, literal, may_here, reviewer_name, show_verdict, user_errors

from semievol.curation.decisions import ACTIONS, label_reading, record_decisions
from semievol.views.review import (PATHS, ReviewFilter, count_items, filtered_item_ids,
                                   item_detail, review_page, round_facets)
from semievol.views.status import round_label, round_rows
from semievol.views.train import train_action
from semievol.workspace.store import Workspace

PAGE_SIZES = (25, 50, 100)
ANY = "(any)"
PATH_CHOICES = (ANY, *PATHS)
DECISION_CHOICES = {ANY: None, "undecided": "none", "accepted": "accept",
                    "rejected": "reject", "relabeled": "relabel", "any decision": "any"}
SELECTED_CHOICES = {ANY: None, "selected": True, "not selected": False}
SORT_CHOICES = {"entropy": "entropy", "nearest demonstration similarity": "similarity",
                "item (import order)": "item"}
PAST = {"accept": "Accepted", "reject": "Rejected", "relabel": "Relabeled", "clear": "Cleared"}
NO_ROUND = ("No round yet: set one up and launch it on the **Round setup** page. Its "
            "pseudo-labels appear here.")
PAGE_KEY = "review_page"
ITEM_KEY = "review_item"


# -- filter controls ----------------------------------------------------------------------
def _first_page() -> None:
    st.session_state[PAGE_KEY] = 1


def entropy_bounds(low: float, high: float) -> tuple[float, float]:
    """The slider's ends: the data's range widened to the next hundredth."""
    return math.floor(low * 100) / 100, math.ceil(high * 100) / 100


def show_filters(round_id: int, facets: dict) -> ReviewFilter:
    """The filter and sort controls (sidebar); returns the filter they describe."""
    bar = st.sidebar
    bar.header("Filters")
    path = bar.selectbox("Path", PATH_CHOICES, key="review_path", on_change=_first_page,
                         help="agreed: every collaborator gave the same answer; reflected: "
                              "they disagreed and the warm-up model chose.")
    entropy_min = entropy_max = None
    if facets["entropy_min"] is not None and facets["entropy_max"] > facets["entropy_min"]:
        low, high = entropy_bounds(facets["entropy_min"], facets["entropy_max"])
        chosen = bar.slider("Uncertainty (entropy)", low, high, (low, high), step=0.01,
                            key=f"review_entropy_{round_id}", on_change=_first_page,
                            help="How unsure the warm-up model is of the pseudo-label: 0 = "
                                 "sure; higher = less sure (see the glossary).")
        if chosen != (low, high):  # the full range also keeps items without an entropy
            entropy_min, entropy_max = chosen
    label = bar.selectbox("Pseudo-label", (ANY, *facets["labels"]), key="review_label",
                          on_change=_first_page)
    decision = bar.selectbox("Decision", list(DECISION_CHOICES), key="review_decision",
                             on_change=_first_page)
    selected = bar.selectbox("Selection", list(SELECTED_CHOICES), key="review_selected",
                             on_change=_first_page)
    search = bar.text_input("Question contains", key="review_search", on_change=_first_page)
    sort = bar.selectbox("Sort by", list(SORT_CHOICES), key="review_sort",
                         on_change=_first_page)
    descending = bar.toggle("Descending", key="review_descending", on_change=_first_page)
    return ReviewFilter(round_id, path=None if path == ANY else path,
                        entropy_min=entropy_min, entropy_max=entropy_max,
                        label=None if label == ANY else label,
                        decision=DECISION_CHOICES[decision], selected=SELECTED_CHOICES[selected],
                        search=search, sort=SORT_CHOICES[sort], descending=descending)


# -- the table ------------------------------------------------------------------------------
def page_frame(rows: list[dict]) -> pd.DataFrame:
    """The table of one page, in the page's order."""
    def decision(r):
        if r["decision"] == "relabel":
            return f"relabel → {r['decision_label']}"
        return r["decision"] or ""

    return pd.DataFrame({
        "item": [r["external_id"] for r in rows],
        "question": [r["question"] for r in rows],
        "pseudo-label": [r["label"] for r in rows],
        "path": [r["path"] for r in rows],
        "agreement": [r["agreement"] for r in rows],
        "entropy": [r["entropy"] for r in rows],
        "option entropy": [r["option_entropy"] for r in rows],
        "similarity": [r["similarity"] for r in rows],
        "selected": [r["selected"] for r in rows],
        "decision": [decision(r) for r in rows],
        "flagged": [r["flagged"] for r in rows],
    }, columns=["item", "question", "pseudo-label", "path", "agreement", "entropy",
                "option entropy", "similarity", "selected", "decision", "flagged"])


def show_table(ws: Workspace, flt: ReviewFilter) -> tuple[list[dict], int]:
    """Page size, page number and the page's rows; returns (rows, total)."""
    left, right, _ = st.columns([1, 1, 4])
    size = left.selectbox("Per page", PAGE_SIZES, index=1, key="review_page_size",
                          on_change=_first_page)
    total = count_items(ws, flt)
    pages = max(1, math.ceil(total / size))
    # A narrower filter can leave the kept page number past the end: clamp it first.
    st.session_state[PAGE_KEY] = min(max(int(st.session_state.get(PAGE_KEY, 1)), 1), pages)
    page = right.number_input(f"Page (of {pages})", min_value=1, max_value=pages, step=1,
                              key=PAGE_KEY)
    rows, total = review_page(ws, flt, limit=size, offset=(page - 1) * size, total=total)
    if not rows:
        return rows, total
    start = (page - 1) * size
    st.caption(f"Items {start + 1:,}–{start + len(rows):,} of {total:,} matching.")
    st.dataframe(page_frame(rows), hide_index=True, column_config={
        "question": st.column_config.TextColumn(width="medium"),
        "agreement": st.column_config.NumberColumn(format="%.2f"),
        "entropy": st.column_config.NumberColumn(format="%.3f"),
        "option entropy": st.column_config.NumberColumn(format="%.3f"),
        "similarity": st.column_config.NumberColumn(format="%.3f")})
    return rows, total


def pick_item(rows: list[dict]) -> int:
    """The item of this page the detail panel shows (the first when none is chosen)."""
    ids = [r["item_id"] for r in rows]
    if st.session_state.get(ITEM_KEY) not in ids:
        st.session_state[ITEM_KEY] = ids[0]
    names = {r["item_id"]: f"{r['external_id']} · {r['label']} · {r['question'][:80]}"
             for r in rows}
    return st.selectbox("Item", ids, format_func=names.get, key=ITEM_KEY)


# -- one item -------------------------------------------------------------------------------
def _when(seconds: float) -> str:
    return datetime.fromtimestamp(seconds).strftime("%Y-%m-%d %H:%M:%S")


def _fmt(value, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def collaborators_frame(collaborators: list[dict]) -> pd.DataFrame:
    def probs(c):
        if c["probs"]:
            return " · ".join(f"{o} {p:.0%}" for o, p in c["probs"].items())
        return "" if not c["option_probs"] else ", ".join(f"{p:.2f}" for p in c["option_probs"])

    columns = {
        "collaborator": [c["name"] for c in collaborators],
        "most likely": [c["top"] or "(no answer)" for c in collaborators],
        "confidence": [c["confidence"] for c in collaborators],
        "voted": [c["answer"] or "(no answer)" for c in collaborators],
        "decoding": [c["decoding"] for c in collaborators],
        "option probabilities": [probs(c) for c in collaborators],
    }
    if any(c.get("text") and c["text"] != c["answer"] for c in collaborators):
        # Open answers: the whole response beside the answer extracted from it.
        columns["response"] = [c.get("text") or "" for c in collaborators]
        del columns["option probabilities"]
    return pd.DataFrame(columns, columns=list(columns))


def show_detail(ws: Workspace, round_id: int, item_id: int) -> dict:
    detail = item_detail(ws, round_id, item_id)
    item, pseudo = detail["item"], detail["pseudo_label"]
    st.subheader(f"Item {literal(item['external_id'])}")
    st.text(item["question"])  # data is shown as text: never rendered as Markdown or HTML
    if item["options"]:
        st.caption("Options: " + " · ".join(literal(o) for o in item["options"]))
    show_verdict(pseudo)
    st.caption(f"Raw scores: entropy (mean negative log-probability of the pseudo-label's "
               f"tokens) {_fmt(pseudo['entropy'])}, option entropy "
               f"{_fmt(pseudo['option_entropy'])}.")
    current = detail["decision"]
    if current:
        label = f" → **{literal(current['label'])}**" if current["action"] == "relabel" else ""
        st.markdown(f"Current decision: **{current['action']}**{label} by "
                    f"{literal(current['reviewer'])} "
                    f"({_when(current['created_at'])})")
    else:
        st.markdown("Current decision: none (the selection policy decides).")
    if pseudo["cut_tokens"]:
        st.warning(f"This text is longer than the context budget: the models saw its "
                   f"beginning and end, with {pseudo['cut_tokens']} tokens cut from its "
                   "middle.", icon=":material/content_cut:")
    for flag in detail["flags"]:
        st.warning(f"Flagged: {flag['kind'].replace('_', ' ')} {literal(flag['detail'] or '')}",
                   icon=":material/flag:")

    st.markdown("**Collaborators**")
    if detail["collaborators"]:
        st.dataframe(collaborators_frame(detail["collaborators"]), hide_index=True,
                     column_config={"confidence": st.column_config.NumberColumn(
                         format="percent")})
    else:
        st.caption("No collaborator responses stored for this item.")
    reflection = detail["reflection"]
    if reflection:
        with st.expander(f"Reflection: {reflection['by']} was shown every answer and chose "
                         f"{literal(reflection['chose'])}"):
            st.text(reflection["shown"])
            st.caption("Its scores with the collaborators' answers in view (the confidence "
                       f"above is without them): {literal(reflection['scores'] or '—')}")
    with st.expander(f"Demonstrations ({len(detail['neighbours'])} retrieved labeled "
                     "neighbours)"):
        for n in detail["neighbours"]:
            st.markdown(f"**{literal(n['label'])}** · similarity {n['similarity']:.2f} · "
                        f"{literal(n['external_id'])}")
            st.text(n["question"])
        if not detail["neighbours"]:
            st.caption("No neighbours stored for this item.")
    st.markdown("**Decision history**")
    if detail["history"]:
        st.dataframe(pd.DataFrame([{**h, "created_at": _when(h["created_at"])}
                                   for h in detail["history"]]), hide_index=True)
    else:
        st.caption("No decisions yet.")
    show_actions(ws, round_id, {**item, "pseudo_label": pseudo["label"]})
    return detail


def _decide(ws_path: str, round_id: int, item_id: int, external_id: str, action: str) -> None:
    """Button callback: record one decision, then say so."""
    label = st.session_state.get(f"review_relabel_{item_id}") if action == "relabel" else None
    note = st.session_state.get("review_note", "")
    with user_errors(), Workspace(ws_path) as ws:
        record_decisions(ws, [item_id], action, reviewer=reviewer_name(ws),
                         label=label, note=note.strip() or None, round_id=round_id)
        st.session_state["review_note"] = ""
        stored = f" as {literal(label_reading(ws.task, label))}" if label else ""
        st.toast(f"{PAST[action]} {literal(external_id)}{stored}.", icon=":material/check:")


def show_actions(ws: Workspace, round_id: int, item: dict) -> None:
    st.markdown("**Decide**")
    cols = st.columns([1, 1, 2, 1, 1], vertical_alignment="bottom")
    args = (str(ws.path), round_id, item["id"], item["external_id"])
    cols[0].button("Accept", key="review_accept", type="primary", on_click=_decide,
                   args=(*args, "accept"), help="Force into the training set.")
    cols[1].button("Reject", key="review_reject", on_click=_decide, args=(*args, "reject"),
                   help="Keep out of the training set.")
    options = item["options"] or []
    if options:
        current = item.get("pseudo_label")  # relabel starts at the current pseudo-label
        cols[2].selectbox("Relabel as", options, key=f"review_relabel_{item['id']}",
                          index=options.index(current) if current in options else 0,
                          label_visibility="collapsed")
        cols[3].button("Relabel", key="review_relabel", on_click=_decide,
                       args=(*args, "relabel"), help="Train on this label instead.")
    elif ws.task and ws.task.kind == "open":  # free text, read by the task's checker
        cols[2].text_input("Correct answer", key=f"review_relabel_{item['id']}",
                           placeholder="the answer", label_visibility="collapsed")
        cols[3].button("Relabel", key="review_relabel", on_click=_decide,
                       args=(*args, "relabel"), help="Train on the answer typed here.")
    cols[4].button("Clear", key="review_clear", on_click=_decide, args=(*args, "clear"),
                   help="Withdraw the decision: the selection policy decides again.")
    st.text_input("Note (optional, saved with the decision)", key="review_note")


# -- everything filtered --------------------------------------------------------------------
def confirmation_text(action: str, label: str | None, count: int) -> str:
    what = f"relabel as {literal(label)}" if action == "relabel" else action
    return f"Apply {what} to {count} filtered item{'' if count == 1 else 's'}"


def _bulk(ws_path: str, flt: ReviewFilter, action: str, expected: int, confirm_key: str) -> None:
    """Button callback: decide on every item the filter shows, if it still shows as many."""
    label = st.session_state.get("review_bulk_label") if action == "relabel" else None
    note = st.session_state.get("review_bulk_note", "")
    st.session_state[confirm_key] = False
    with user_errors(), Workspace(ws_path) as ws:
        allow(ws, "bulk")
        ids = filtered_item_ids(ws, flt)
        if len(ids) != expected:
            st.warning(f"The filter now matches {len(ids)} item(s), not {expected}: nothing was "
                       "applied. Check the table and confirm again.")
            return
        done = record_decisions(ws, ids, action, reviewer=reviewer_name(ws),
                                label=label, note=note.strip() or None, round_id=flt.round_id)
        stored = f" as {literal(label_reading(ws.task, label))}" if label else ""
        st.toast(f"{PAST[action]} {done} item(s){stored}.", icon=":material/done_all:")


def show_bulk(ws: Workspace, flt: ReviewFilter, total: int, labels: list[str]) -> None:
    if not may_here(ws, "bulk"):  # in team mode, items are handed out one at a time
        return
    st.subheader("All filtered items")
    cols = st.columns([1, 1, 2])
    action = cols[0].selectbox("Action", ACTIONS, key="review_bulk_action")
    label = None
    if action == "relabel":
        if not labels:
            st.info("This task has no fixed label set: relabel items one at a time.")
            return
        label = cols[1].selectbox("New label", labels, key="review_bulk_label")
    cols[2].text_input("Note (optional)", key="review_bulk_note")
    # The confirmation belongs to this exact filter, action and count: change any and it
    # must be ticked again.
    digest = hashlib.sha1(repr((flt, action, label, total)).encode()).hexdigest()[:12]
    confirm_key = f"review_bulk_confirm_{digest}"
    confirmed = st.checkbox(confirmation_text(action, label, total), key=confirm_key)
    st.button("Apply to filtered items", key="review_bulk_apply", disabled=not confirmed,
              on_click=_bulk, args=(str(ws.path), flt, action, total, confirm_key))


# -- the page -------------------------------------------------------------------------------
def _round_name(rounds: dict[int, dict]):
    def name(round_id: int) -> str:
        return f"{round_label(rounds[round_id])} · {rounds[round_id]['pseudo_labels']} to review"
    return name


MODES = {"focus": "Focus: one item, keyboard", "table": "Table: filter, sort, bulk"}


def show_review(ws: Workspace) -> None:
    from common import show_glossary, show_round_state, show_train_action
    from focus_view import show_focus

    show_round_state(ws, here="review")
    rounds = {r["id"]: r for r in round_rows(ws)}
    if not rounds:
        st.info(NO_ROUND)
        return
    round_id = st.selectbox("Round", list(rounds), format_func=_round_name(rounds),
                            key="review_round", on_change=_first_page)  # newest first
    rnd = rounds[round_id]
    if not rnd["pseudo_labels"]:
        st.info(f"Round {rnd['number']} has no pseudo-labels yet: run its label step on "
                "the **Round setup** page, then come back.")
        return
    if rnd["status"] in ("training", "trained", "done"):
        st.info(f"Round {rnd['number']} has started training: it trains on the rows frozen "
                f"then. Decisions you make now belong to round {rnd['number'] + 1}.",
                icon=":material/lock:")
    show_glossary()
    # A reviewer in team mode reviews in focus mode only: the table shows the decisions in
    # force, a colleague's included, and overlap review is blind.
    modes = list(MODES) if may_here(ws, "bulk") else ["focus"]
    mode = st.segmented_control("Mode", modes, default="focus", format_func=MODES.get,
                                key="review_mode")
    action = train_action(ws, rnd["id"], rnd["number"], rnd["status"])
    if mode != "table":
        # The counts move to the focus panel (a fragment), which a decision redraws.
        show_train_action(ws, action, key="review_train", counts=False)
        show_focus(ws, rnd)
        return
    show_train_action(ws, action, key="review_train")
    facets = round_facets(ws, round_id)
    flt = show_filters(round_id, facets)
    rows, total = show_table(ws, flt)
    if not rows:
        st.info(f"No items match these filters (round {rnd['number']} has "
                f"{rnd['pseudo_labels']} pseudo-labeled items): widen or reset the filters in "
                "the sidebar.")
        return
    with st.container(border=True):
        with user_errors():
            show_detail(ws, round_id, pick_item(rows))
    task = ws.task
    show_bulk(ws, flt, total, list(task.labels) if task and task.labels else [])

"""Focus review: one item at a time with its full text, the pseudo-label and confidence,
every collaborator's answer, the demonstrations and the reflection, decided from the
keyboard (A accept, X reject, 1-9 relabel, arrows to move, U undo) with auto-advance.

The panel is a fragment: a key press reruns only the panel, not the page. Every decision is
written at once (semievol.curation.decisions); `st.session_state` holds only which item is shown.

In team mode the next item is handed out (semievol.team.handout.claim_next: one reviewer at a
time, two for overlap items), a reviewer sees only their own decision, Skip gives the item
back, and Back returns to the items they decided.
"""

from __future__ import annotations

import streamlit as st
from common import current_account, highlighted, literal, reviewer_name, show_verdict, user_errors

from semievol.curation.decisions import label_reading, record_decisions, undo_last
from semievol.team.handout import claim_next, release
from semievol.views.decision_value import next_decisions_value
from semievol.views.focus import (DEFAULT_ORDER, FOCUS_ORDERS, focus_queue, next_item,
                                  queue_progress, reviewer_decided, reviewer_decision,
                                  team_progress)
from semievol.views.review import item_detail
from semievol.views.train import train_action
from semievol.workspace.store import Workspace

MAX_NUMBER_KEYS = 9
PAST = {"accept": "Accepted", "reject": "Rejected", "relabel": "Relabeled"}


def _item_key(round_id: int, order: str) -> str:
    return f"focus_item_{round_id}_{order}"


def percent(value: float | None) -> str:
    return "—" if value is None else f"{value:.0%}"


def vote_line(c: dict) -> str:
    """A collaborator's detail line: how it decoded and, when it sampled another answer than
    its most likely one, that answer (its vote)."""
    if c["answer"] is not None and c["answer"] != c["top"]:
        return f"{c['decoding']}: voted {c['answer']}"
    return c["decoding"] + ("" if c["answer"] is not None else ": gave no answer")


def _decide(ws: Workspace, round_id: int, order: str, item_id: int, action: str,
            label: str | None = None) -> None:
    """Button callback: record the decision, then show the next undecided item."""
    with user_errors():
        record_decisions(ws, [item_id], action, reviewer=reviewer_name(ws),
                         label=label, round_id=round_id)
        stored = f" as {literal(label_reading(ws.task, label))}" if label else ""
        st.toast(f"{PAST[action]}{stored}", icon=":material/check:")
        if current_account(ws) is not None:  # team mode: the next item is handed out
            st.session_state[_item_key(round_id, order)] = None
            return
        queue = focus_queue(ws, round_id, order)
        decided = queue_progress(ws, queue)["decided"]
        following = next_item(queue, item_id, decided)
        st.session_state[_item_key(round_id, order)] = following if following is not None \
            else next_item(queue, None, decided)


def _relabel_typed(ws: Workspace, round_id: int, order: str, item_id: int) -> None:
    """Relabel with what is in the answer box now (read when clicked, not when drawn)."""
    typed = str(st.session_state.get(f"focus_answer_{item_id}", "")).strip()
    if typed:
        _decide(ws, round_id, order, item_id, "relabel", typed)


def _move(round_id: int, order: str, queue: list[int], current: int, step: int) -> None:
    target = next_item(queue, current, set(), step=step, skip_decided=False)
    if target is not None:
        st.session_state[_item_key(round_id, order)] = target


def _team_skip(ws: Workspace, round_id: int, order: str, item_id: int) -> None:
    """Team mode's Skip: give the item back (another reviewer may take it) and hand out the
    next one; skipped items come round again once the rest of the queue is done."""
    with user_errors():
        release(ws, round_id, reviewer_name(ws), item_id)
        st.session_state.setdefault(_skipped_key(round_id), []).append(item_id)
        st.session_state[_item_key(round_id, order)] = None


def _skipped_key(round_id: int) -> str:
    return f"focus_skipped_{round_id}"


def _undo(ws: Workspace, round_id: int, order: str) -> None:
    with user_errors():
        undone = undo_last(ws, reviewer=reviewer_name(ws),
                           round_id=round_id)
        if undone is None:
            st.toast("Nothing to undo.", icon=":material/info:")
            return
        st.session_state[_item_key(round_id, order)] = undone["item_id"]
        st.toast(f"Undid {undone['action']}.", icon=":material/undo:")


def show_focus(ws: Workspace, rnd: dict) -> None:
    """The queue order and the focus panel for round `rnd` (a views.status.round_rows row)."""
    order = st.segmented_control("Queue order", list(FOCUS_ORDERS), default=DEFAULT_ORDER,
                                 format_func=FOCUS_ORDERS.get, key="focus_order",
                                 help="Smallest margin (the default: the best of four "
                                      "queues in the quality bench): the two likeliest "
                                      "options closest. "
                                      "Audit queue: a stratified sample first, so the error "
                                      "estimate fills in. Least confident: the highest "
                                      "entropy. Reflected: the collaborators disagreed. By "
                                      "class: one class at a time. Highest entropy: the "
                                      "options most spread. Most split votes: the "
                                      "collaborators' answers most divided. Typical and "
                                      "diverse: items like many others, spread over the "
                                      "pool (vote-k; for the first few decisions). Typical, "
                                      "then margin: the first ten typical, then by margin.")
    st.fragment(focus_panel)(ws, rnd, order or DEFAULT_ORDER)


def focus_panel(ws: Workspace, rnd: dict, order: str) -> None:
    """One item and its keys, then what training would use now: inside the fragment a
    decision reruns, so the counts follow every decision (in the train box above the panel
    they stayed as the page was loaded)."""
    from common import training_counts

    round_id = rnd["id"]
    queue = focus_queue(ws, round_id, order)
    _item_panel(ws, round_id, order, queue)
    action = train_action(ws, round_id, rnd["number"], rnd["status"])
    if action is not None:
        st.caption(training_counts(action))
        if queue:
            show_value(next_decisions_value(ws, round_id, order, queue=queue))


def show_value(value: dict) -> None:
    """What the queue's next decisions are worth (views.decision_value), with the stopping
    hint when its range reaches 0."""
    if value["estimate"] is None:
        st.caption(f"What the next decisions are worth: {value['message']}")
        return
    text = value["message"][0].upper() + value["message"][1:] + "."
    error = value["error"]
    detail = (f"From {error['n']} items of known truth as sure as these ({error['wrong']} "
              f"wrong) and the {value['split']} accuracy of the models trained so far; "
              "80 % range, the measurement's own noise included.")
    if value["stop"]:
        st.warning(text, icon=":material/front_hand:")
    else:
        st.info(text, icon=":material/trending_up:")
    st.caption(detail)


def _item_panel(ws: Workspace, round_id: int, order: str, queue: list[int]) -> None:
    if not queue:
        st.info("This round has no pseudo-labeled items to review.")
        return
    account = current_account(ws)
    if account is not None:
        _team_item_panel(ws, round_id, order, queue, account.name)
        return
    progress = queue_progress(ws, queue)
    key = _item_key(round_id, order)
    current = st.session_state.get(key)
    if current not in queue:
        current = st.session_state[key] = next_item(queue, None, progress["decided"])
    st.progress(progress["reviewed"] / progress["total"],
                text=f"{progress['reviewed']} of {progress['total']} reviewed · item "
                     f"{queue.index(current) + 1} of {len(queue)} in this order")
    detail = item_detail(ws, round_id, current)
    _show_item(detail)
    _show_keys(ws, round_id, order, queue, detail)
    _show_evidence(detail)


def _team_item_panel(ws: Workspace, round_id: int, order: str, queue: list[int],
                     reviewer: str) -> None:
    """Team mode: the item handed to this reviewer now (or one of theirs they went back
    to), with their own decision only."""
    key, skipped = _item_key(round_id, order), st.session_state.get(_skipped_key(round_id), [])
    mine = reviewer_decided(ws, reviewer, queue)
    current = st.session_state.get(key)
    if current not in mine:  # not revisiting one of theirs: the item handed out now
        current = claim_next(ws, round_id, reviewer, queue, skip=skipped)
        if current is None and skipped:  # only skipped ones left: offer them again
            st.session_state[_skipped_key(round_id)] = []
            current = claim_next(ws, round_id, reviewer, queue)
        st.session_state[key] = current
    team = team_progress(ws, queue)
    st.progress(team["done"] / team["total"],
                text=f"{len(mine)} decided by you · {team['done']} of {team['total']} items "
                     "have every review they need")
    if current is None:
        st.success("Nothing is left for you in this queue: every item is decided or in a "
                   "colleague's hands. Back shows your decisions.", icon=":material/done_all:")
        if mine:
            st.button("Back", key="focus_back", shortcut="Left", icon=":material/arrow_back:",
                      on_click=_move, args=(round_id, order, mine, mine[-1], 0))
        return
    detail = item_detail(ws, round_id, current)
    detail["decision"] = reviewer_decision(ws, current, reviewer)  # never a colleague's
    _show_item(detail)
    _show_keys(ws, round_id, order, mine + ([] if current in mine else [current]), detail,
               team=True)
    _show_evidence(detail)


def _show_item(detail: dict) -> None:
    item, pseudo = detail["item"], detail["pseudo_label"]
    decision = detail["decision"]
    st.markdown(f"#### Item {literal(item['external_id'])}")
    st.text(item["question"])  # data is shown as text: never rendered as Markdown or HTML
    show_verdict(pseudo)
    if decision:
        label = f" → {literal(decision['label'])}" if decision["action"] == "relabel" else ""
        st.success(f"Your decision: {decision['action']}{label} ({literal(decision['reviewer'])})",
                   icon=":material/task_alt:")
    for flag in detail["flags"]:
        st.warning(f"Flagged: {flag['kind'].replace('_', ' ')}", icon=":material/flag:")
    if pseudo["cut_tokens"]:
        st.warning(f"This text is longer than the context budget: the models saw its "
                   f"beginning and end, with {pseudo['cut_tokens']} tokens cut from its "
                   "middle.", icon=":material/content_cut:")


def _show_keys(ws: Workspace, round_id: int, order: str, queue: list[int],
               detail: dict, *, team: bool = False) -> None:
    """The decision keys and the moves; in team mode `queue` is the reviewer's own items
    (Back walks them) and Skip gives the item back."""
    item, pseudo = detail["item"], detail["pseudo_label"]
    item_id = item["id"]
    args = (ws, round_id, order, item_id)
    row = st.container(horizontal=True)
    row.button("Accept", key="focus_accept", type="primary", shortcut="A", on_click=_decide,
               args=(*args, "accept"), help="The pseudo-label is right: train on it.")
    row.button("Reject", key="focus_reject", shortcut="X", on_click=_decide,
               args=(*args, "reject"), help="Wrong or unclear: keep it out of training.")
    options = item["options"] or []
    if not options:  # an open task: the reviewer types the answer (checked by the checker)
        typed = row.text_input("Correct answer", key=f"focus_answer_{item_id}",
                               placeholder="type the answer, then Relabel",
                               label_visibility="collapsed")
        row.button("Relabel", key="focus_relabel_typed", shortcut="R",
                   disabled=not typed.strip(), on_click=_relabel_typed, args=args,
                   help="Train on the answer typed here (read by the task's checker).")
    for number, option in enumerate(options[:MAX_NUMBER_KEYS], start=1):
        current = " (current)" if option == pseudo["label"] else ""
        row.button(f"{literal(option)}{current}", key=f"focus_relabel_{number}",
                   shortcut=str(number), on_click=_decide, args=(*args, "relabel", option),
                   help=f"Relabel as {literal(option)}: train on this gold label.")
    row = st.container(horizontal=True)
    row.button("Back", key="focus_back", shortcut="Left", icon=":material/arrow_back:",
               on_click=_move, args=(round_id, order, queue, item_id, -1))
    if team:
        row.button("Skip", key="focus_skip", shortcut="Right", icon=":material/arrow_forward:",
                   on_click=_team_skip, args=(ws, round_id, order, item_id))
    else:
        row.button("Skip", key="focus_skip", shortcut="Right",
                   icon=":material/arrow_forward:", on_click=_move,
                   args=(round_id, order, queue, item_id, 1))
    row.button("Undo last", key="focus_undo", shortcut="U", icon=":material/undo:",
               on_click=_undo, args=(ws, round_id, order))
    if len(options) > MAX_NUMBER_KEYS:
        pick = st.selectbox("Relabel as", options, key=f"focus_relabel_pick_{item_id}",
                            index=options.index(pseudo["label"]) if pseudo["label"] in options
                            else 0)
        st.button("Relabel", key="focus_relabel_other", on_click=_decide,
                  args=(*args, "relabel", pick))
    relabel = "**1–9** relabel" if options else "**R** relabel with the typed answer"
    st.caption(f"Keys: **A** accept · **X** reject · {relabel} · **←/→** back/skip · "
               "**U** undo. A decision moves on to the next undecided item.")


def _show_evidence(detail: dict) -> None:
    collaborators = detail["collaborators"]
    if collaborators:
        st.markdown("**What each collaborator answered**")
        for column, c in zip(st.columns(len(collaborators)), collaborators):
            with column.container(border=True):
                st.markdown(f"**{literal(c['name'])}**")
                st.text(f"{c['top'] if c['top'] is not None else '(no answer)'} · "
                        f"{percent(c['confidence'])}")
                st.caption(literal(vote_line(c)))
                if c.get("text") and c["text"] != c["answer"]:  # an open answer's response
                    st.markdown(highlighted(c["text"], c["answer"]))
                if c["demos_shown"] is not None and c["demonstrations"] and \
                        c["demos_shown"] < c["demonstrations"]:
                    st.caption(f"{c['demos_shown']} of {c['demonstrations']} examples fit the "
                               "context budget")
                if c["probs"]:
                    st.caption(" · ".join(f"{literal(o)} {p:.0%}"
                                          for o, p in c["probs"].items()))
    neighbours = detail["neighbours"]
    with st.expander(f"Demonstrations shown to the collaborators ({len(neighbours)})"):
        for n in neighbours:
            st.markdown(f"**{literal(n['label'])}** · similarity {n['similarity']:.2f} · "
                        f"{literal(n['external_id'])}")
            st.text(n["question"])
        if not neighbours:
            st.caption("No neighbours stored for this item.")
    reflection = detail["reflection"]
    if reflection:
        with st.expander(f"Reflection: what {reflection['by']} was shown, and what it chose"):
            st.text(reflection["shown"])
            st.markdown(f"It chose **{literal(reflection['chose'])}**.")
            if reflection["scores"]:
                st.caption("Its scores with the collaborators' answers in view (the "
                           f"confidence above is without them): {literal(reflection['scores'])}")

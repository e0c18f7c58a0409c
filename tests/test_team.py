"""Team mode's library and CLI: accounts, sign-in with its slowing and lock, sessions and
their expiry, roles, and the agreement statistics against their reference implementations
(scikit-learn's cohen_kappa_score, the krippendorff package) on constructed cases."""

from __future__ import annotations

import json
import math
import random
import warnings

import krippendorff
import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score
from test_engine_cli import semievol

from semievol.cli.team import is_loopback, serve_command
from semievol.curation.decisions import record_decisions, undo_last
from semievol.errors import SemiEvolError
from semievol.team import accounts
from semievol.team.accounts import (IDLE_SECONDS, LOCK_AFTER, LOCK_SECONDS, SESSION_SECONDS,
                                    SLOW_AFTER, Account, SignInRefused, add_user,
                                    close_session, list_users, may, remove_user, require,
                                    reset_password, retry_wait, session_account, sign_in,
                                    sso_sign_in)
from semievol.team.agreement import (REJECTED, cohen_kappa, collaborator_agreement,
                                     krippendorff_alpha, pace, reviewer_agreement,
                                     reviewer_ratings, workspace_agreement)

PASSWORD = "correct horse battery"


# -- accounts ---------------------------------------------------------------------------------
def test_an_account_keeps_a_hash_never_the_password(workspace):
    add_user(workspace, "ana", "lead", PASSWORD)
    stored = workspace.scalar("SELECT password_hash FROM users WHERE name='ana'")
    assert stored.startswith("$argon2id$") and PASSWORD not in stored
    assert list_users(workspace)[0] | {"created_at": 0} == {
        "name": "ana", "role": "lead", "sign_in": "password", "created_at": 0, "failures": 0,
        "locked": False, "sessions": 0}


@pytest.mark.parametrize("name, role, password, sso, says", [
    ("ana", "admin", PASSWORD, False, "role must be one of lead, reviewer"),
    ("ana", "lead", "short", False, "at least 10"),
    ("", "lead", PASSWORD, False, "needs a name"),
    ("a\x1b[31m", "lead", PASSWORD, False, "control character"),
    ("ana", "lead", PASSWORD, True, "either a password or single sign-on"),
    ("ana", "lead", None, False, "either a password or single sign-on"),
])
def test_bad_accounts_are_refused_and_nothing_is_written(workspace, name, role, password, sso,
                                                         says):
    with pytest.raises(SemiEvolError, match=says):
        add_user(workspace, name, role, password, sso=sso)
    assert workspace.scalar("SELECT COUNT(*) FROM users") == 0


def test_a_name_is_taken_once_and_the_last_lead_stays(workspace):
    add_user(workspace, "ana", "lead", PASSWORD)
    with pytest.raises(SemiEvolError, match="exists already"):
        add_user(workspace, "ana", "reviewer", PASSWORD)
    add_user(workspace, "bo", "reviewer", PASSWORD)
    with pytest.raises(SemiEvolError, match="last lead"):
        remove_user(workspace, "ana")
    with pytest.raises(SemiEvolError, match="No account named 'cy'"):
        remove_user(workspace, "cy")
    remove_user(workspace, "bo")
    remove_user(workspace, "ana")  # alone, the last lead may go
    assert list_users(workspace) == []


def test_sign_in_opens_a_session_that_names_the_account(workspace):
    add_user(workspace, "bo", "reviewer", PASSWORD)
    token = sign_in(workspace, "bo", PASSWORD, at=1000.0)
    assert session_account(workspace, token, at=1001.0) == Account("bo", "reviewer")
    assert token not in json.dumps([dict(r) for r in workspace.query("SELECT * FROM sessions")])
    assert session_account(workspace, "forged", at=1001.0) is None
    close_session(workspace, token)
    assert session_account(workspace, token, at=1002.0) is None


def test_an_unknown_name_and_a_wrong_password_read_the_same(workspace):
    add_user(workspace, "bo", "reviewer", PASSWORD)
    with pytest.raises(SignInRefused) as unknown:
        sign_in(workspace, "nobody", PASSWORD)
    with pytest.raises(SignInRefused) as wrong:
        sign_in(workspace, "bo", "not the password")
    assert str(unknown.value) == str(wrong.value) == "Wrong name or password."


def test_failed_sign_ins_are_slowed_then_locked(workspace):
    add_user(workspace, "bo", "reviewer", PASSWORD)
    at = 1000.0
    for failure in range(1, LOCK_AFTER):
        with pytest.raises(SignInRefused, match="Wrong name or password") as refused:
            sign_in(workspace, "bo", "wrong password", at=at)
        assert refused.value.wait == retry_wait(failure)
        if refused.value.wait:
            # Too soon: refused without checking, even with the right password, not counted.
            with pytest.raises(SignInRefused, match="wait"):
                sign_in(workspace, "bo", PASSWORD, at=at + refused.value.wait / 2)
        at += refused.value.wait
    assert retry_wait(SLOW_AFTER - 1) == 0 < retry_wait(SLOW_AFTER)
    with pytest.raises(SignInRefused, match="locked for 15 min"):
        sign_in(workspace, "bo", "wrong password", at=at)
    with pytest.raises(SignInRefused, match="locked"):
        sign_in(workspace, "bo", PASSWORD, at=at + LOCK_SECONDS - 1)
    assert list_users(workspace, at=at + 1)[0]["locked"]
    # After the lock, the right password works and clears the count.
    assert session_account(workspace, sign_in(workspace, "bo", PASSWORD,
                                              at=at + LOCK_SECONDS + 1),
                           at=at + LOCK_SECONDS + 2).name == "bo"
    assert workspace.scalar("SELECT failures FROM users") == 0


def test_reset_password_unlocks_and_ends_sessions(workspace):
    add_user(workspace, "bo", "reviewer", PASSWORD)
    token = sign_in(workspace, "bo", PASSWORD, at=1000.0)
    for _ in range(LOCK_AFTER):
        with pytest.raises(SignInRefused):
            sign_in(workspace, "bo", "wrong", at=1000.0 + 10_000)
    reset_password(workspace, "bo", "a new long password")
    assert session_account(workspace, token, at=1001.0) is None
    assert sign_in(workspace, "bo", "a new long password", at=1002.0)


def test_sessions_expire_when_idle_when_old_and_when_the_account_goes(workspace):
    add_user(workspace, "ana", "lead", PASSWORD)
    add_user(workspace, "bo", "reviewer", PASSWORD)
    idle = sign_in(workspace, "bo", PASSWORD, at=0.0)
    assert session_account(workspace, idle, at=IDLE_SECONDS - 1) is not None
    assert session_account(workspace, idle, at=2 * IDLE_SECONDS - 2) is not None  # was used
    assert session_account(workspace, idle, at=4 * IDLE_SECONDS) is None
    busy = sign_in(workspace, "bo", PASSWORD, at=0.0)
    t = 0.0
    while t < SESSION_SECONDS - IDLE_SECONDS:
        t += IDLE_SECONDS / 2
        assert session_account(workspace, busy, at=t) is not None
    assert session_account(workspace, busy, at=SESSION_SECONDS + 1) is None  # used, but old
    gone = sign_in(workspace, "bo", PASSWORD, at=10.0)
    remove_user(workspace, "bo")
    assert session_account(workspace, gone, at=11.0) is None


def test_single_sign_on_needs_an_sso_account(workspace):
    add_user(workspace, "cy@example.org", "reviewer", sso=True)
    add_user(workspace, "bo", "reviewer", PASSWORD)
    token = sso_sign_in(workspace, "cy@example.org", at=5.0)
    assert session_account(workspace, token, at=6.0) == Account("cy@example.org", "reviewer")
    for identity in ("stranger@example.org", "bo", None):
        with pytest.raises(SignInRefused, match="no single-sign-on account"):
            sso_sign_in(workspace, identity)
    with pytest.raises(SignInRefused, match="Wrong name or password"):
        sign_in(workspace, "cy@example.org", "")  # no password to guess


def test_only_a_lead_takes_lead_actions():
    lead, reviewer = Account("ana", "lead"), Account("bo", "reviewer")
    for action in accounts.LEAD_ONLY:
        assert may(lead, action) and may(None, action) and not may(reviewer, action)
        with pytest.raises(SemiEvolError, match="only a lead can"):
            require(reviewer, action)
    assert may(reviewer, "review")
    require(None, "train")  # single-user mode


# -- agreement against the references ---------------------------------------------------------
def sklearn_kappa(a, b):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        value = cohen_kappa_score(a, b)
    return None if math.isnan(value) else value


def reference_alpha(units):
    raters = sorted({r for u in units for r in u})
    codes = {c: i for i, c in enumerate(sorted({str(v) for u in units for v in u.values()}))}
    data = np.array([[codes[str(u[r])] if r in u else np.nan for u in units] for r in raters],
                    dtype=float)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            value = krippendorff.alpha(reliability_data=data, level_of_measurement="nominal")
    except ValueError:  # "There has to be more than one value in the domain."
        return None
    return None if math.isnan(value) else value


def same(mine, reference):
    return (mine is None and reference is None) or (
        mine is not None and reference is not None and abs(mine - reference) < 1e-9)


@pytest.mark.parametrize("a, b, expected", [
    (list("aabbcc"), list("aabbcc"), 1.0),                      # perfect
    (list("aabb"), list("abab"), 0.0),                          # chance
    (list("aaaa"), list("aaaa"), None),                         # one class only
    (list("ab"), list("ba"), -1.0),
])
def test_kappa_matches_scikit_learn(a, b, expected):
    assert same(cohen_kappa(a, b), expected)
    assert same(cohen_kappa(a, b), sklearn_kappa(a, b))


def test_kappa_matches_scikit_learn_on_random_raters():
    rng = random.Random(3)
    for _ in range(200):
        cats = "abc"[:rng.randint(1, 3)]
        a = [rng.choice(cats) for _ in range(rng.randint(1, 25))]
        b = [x if rng.random() < 0.6 else rng.choice(cats) for x in a]
        assert same(cohen_kappa(a, b), sklearn_kappa(a, b)), (a, b)
    assert cohen_kappa([], []) is None
    with pytest.raises(ValueError):
        cohen_kappa(["a"], [])


@pytest.mark.parametrize("units, expected", [
    ([{"x": "a", "y": "a"}, {"x": "b", "y": "b"}, {"x": "c", "y": "c", "z": "c"}], 1.0),
    ([{"x": "a", "y": "a"}, {"x": "a", "y": "a"}], None),            # one class only
    ([{"x": "a"}, {"y": "b"}], None),                                 # nothing pairable
    ([{"x": "a", "y": "b"}, {"x": "b", "y": "a"}], None),
    ([{"x": "a", "y": "b"}, {"x": "a", "y": "a"}, {"x": "b", "y": "b"}, {"x": "b"}], None),
])
def test_alpha_matches_krippendorff_on_constructed_cases(units, expected):
    assert same(krippendorff_alpha(units), reference_alpha(units))
    if expected is not None:
        assert same(krippendorff_alpha(units), expected)


def test_alpha_matches_krippendorff_with_missing_ratings():
    rng = random.Random(7)
    for _ in range(150):
        cats = "abcd"[:rng.randint(1, 4)]
        units = [{r: rng.choice(cats) for r in "wxyz" if rng.random() < 0.55}
                 for _ in range(rng.randint(1, 20))]
        assert same(krippendorff_alpha(units), reference_alpha(units)), units
    # chance agreement: alpha near 0 on many random ratings
    units = [{r: rng.choice("ab") for r in "xy"} for _ in range(4000)]
    assert abs(krippendorff_alpha(units)) < 0.05


def test_per_class_and_pair_agreement():
    ratings = {1: {"ana": "a", "bo": "a"}, 2: {"ana": "b", "bo": "a"},
               3: {"ana": "b", "bo": "b", "cy": "b"}, 4: {"cy": "a"}}
    found = reviewer_agreement(ratings)
    assert found["reviewers"] == ["ana", "bo", "cy"] and found["items"] == 3
    pair = {(p["a"], p["b"]): p for p in found["pairs"]}
    assert pair["ana", "bo"]["items"] == 3 and pair["ana", "bo"]["agreed"] == 2
    assert same(pair["ana", "bo"]["kappa"], sklearn_kappa(list("abb"), list("aab")))
    assert pair["ana", "cy"]["items"] == 1 and pair["ana", "cy"]["kappa"] is None
    assert same(found["alpha"], reference_alpha([u for u in ratings.values() if len(u) > 1]))
    assert [c["class"] for c in found["classes"]] == ["a", "b"]


def test_agreement_with_collaborators_per_class():
    ratings = {1: {"ana": "a"}, 2: {"ana": "b"}, 3: {"ana": REJECTED}, 4: {"ana": "a"}}
    answers = {1: {0: "a", 1: "b"}, 2: {0: "b", 1: "b"}, 3: {0: "a"}, 4: {0: "b"}}
    rows = {(r["reviewer"], r["collaborator"]): r
            for r in collaborator_agreement(ratings, answers)}
    assert rows["ana", 0]["items"] == 3 and rows["ana", 0]["agreement"] == pytest.approx(2 / 3)
    assert rows["ana", 0]["classes"] == [{"class": "a", "items": 2, "agreement": 0.5},
                                         {"class": "b", "items": 1, "agreement": 1.0}]
    assert rows["ana", 1]["items"] == 2 and rows["ana", 1]["agreement"] == 0.5


def test_pace_leaves_breaks_out():
    found = pace([0, 10, 30, 2000, 2010])
    assert found["decisions"] == 5 and found["median_seconds"] == 10
    assert found["per_hour"] == pytest.approx(3 / 40 * 3600)
    assert pace([5.0]) == {"decisions": 1, "median_seconds": None, "per_hour": None}


def test_ratings_follow_each_reviewers_standing_decision(pool):
    ws, rid, items = pool
    labels = dict(ws.query("SELECT item_id, label FROM pseudo_labels"))
    record_decisions(ws, [items[0]], "accept", reviewer="ana", round_id=rid)
    record_decisions(ws, [items[0]], "relabel", label="outage", reviewer="bo", round_id=rid)
    record_decisions(ws, [items[1]], "reject", reviewer="ana", round_id=rid)
    record_decisions(ws, [items[2]], "accept", reviewer="bo", round_id=rid)
    record_decisions(ws, [items[2]], "clear", reviewer="bo", round_id=rid)
    record_decisions(ws, [items[3]], "accept", reviewer="ana", round_id=rid)
    record_decisions(ws, [items[3]], "reject", reviewer="ana", round_id=rid)
    undo_last(ws, reviewer="ana", round_id=rid)  # takes the reject back: accept stands
    ratings = reviewer_ratings(ws)
    assert ratings == {items[0]: {"ana": labels[items[0]], "bo": "outage"},
                       items[1]: {"ana": REJECTED}, items[3]: {"ana": labels[items[3]]}}
    found = workspace_agreement(ws)
    assert found["reviewers"]["pairs"][0]["items"] == 1
    assert set(found["pace"]) == {"ana", "bo"}


# -- the CLI ------------------------------------------------------------------------------------
def test_users_commands_read_the_password_from_a_file_never_an_argument(tmp_path):
    ws = tmp_path / "ws"
    semievol("init", ws)
    secret = tmp_path / "pw"
    secret.write_text(PASSWORD + "\n")
    out = semievol("users", "add", ws, "ana", "--role", "lead", "--password-file", secret)
    assert "Added ana (lead, signs in with a password)" in out.stdout
    refused = semievol("users", "add", ws, "bo", "--role", "reviewer", "--password", PASSWORD,
                       check=False)
    assert refused.returncode == 2 and "unrecognized arguments" in refused.stderr
    no_tty = semievol("users", "add", ws, "bo", "--role", "reviewer", check=False)
    assert no_tty.returncode == 2 and "--password-file" in no_tty.stderr
    semievol("users", "add", ws, "cy@example.org", "--role", "reviewer", "--sso")
    listed = json.loads(semievol("users", "list", ws, "--json").stdout)
    assert [(u["name"], u["sign_in"]) for u in listed] == [("ana", "password"),
                                                           ("cy@example.org", "sso")]
    secret.write_text("another long password\n")
    assert "New password set for ana" in semievol("users", "reset-password", ws, "ana",
                                                  "--password-file", secret).stdout
    last = semievol("users", "remove", ws, "ana", check=False)
    assert last.returncode == 2 and "last lead" in last.stderr
    semievol("users", "remove", ws, "cy@example.org")
    assert "Wrong" not in semievol("agreement", ws).stdout


def test_serve_refuses_before_it_starts_anything(workspace):
    add_user(workspace, "ana", "lead", PASSWORD)
    with pytest.raises(SemiEvolError, match="serves 127.0.0.1 only"):
        serve_command(str(workspace.path), team=False, host="0.0.0.0", port=8501)
    bare = workspace.path.parent / "bare"
    semievol("init", bare)
    with pytest.raises(SemiEvolError, match="needs accounts"):
        serve_command(str(bare), team=True, host="0.0.0.0", port=8501)
    command = serve_command(str(workspace.path), team=True, host="0.0.0.0", port=8600)
    assert command[-1] == "--team" and "0.0.0.0" in command and "8600" in command
    assert "--team" not in serve_command(str(workspace.path), team=False, host="127.0.0.1",
                                         port=8501)
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.4")


# -- handing items out, conflicts, adjudication, the team rule ----------------------------------
from semievol.curation.decisions import current_decisions, decision_rule  # noqa: E402
from semievol.team.handout import (CLAIM_SECONDS, adjudicate, claim_next, conflicts,  # noqa: E402
                                   is_overlap, release, set_overlap_share)
from semievol.views.focus import reviewer_decided, reviewer_decision, team_progress  # noqa: E402


@pytest.fixture
def team(pool):
    ws, rid, items = pool
    add_user(ws, "ana", "lead", PASSWORD)
    add_user(ws, "bo", "reviewer", PASSWORD)
    add_user(ws, "cy", "reviewer", PASSWORD)
    return ws, rid, items


def test_overlap_items_are_stable_and_grow_with_the_share():
    ids = range(1, 2001)
    fifth = {i for i in ids if is_overlap(i, 0.2)}
    assert 0.17 < len(fifth) / 2000 < 0.23
    assert fifth <= {i for i in ids if is_overlap(i, 0.5)}
    assert not any(is_overlap(i, 0.0) for i in ids) and all(is_overlap(i, 1.0) for i in ids)


def test_accounts_switch_the_workspace_to_the_team_rule(pool):
    ws, rid, items = pool
    record_decisions(ws, [items[0]], "accept", reviewer="x", round_id=rid)
    record_decisions(ws, [items[0]], "reject", reviewer="y", round_id=rid)
    assert decision_rule(ws) == "latest" and current_decisions(ws)[items[0]]["action"] == "reject"
    add_user(ws, "ana", "lead", PASSWORD)
    assert decision_rule(ws) == "team"
    assert current_decisions(ws)[items[0]]["note"].startswith("conflict")


def test_each_item_goes_to_one_reviewer_at_a_time(team):
    ws, rid, items = team
    queue = items[:4]
    bo = claim_next(ws, rid, "bo", queue, at=100.0)
    cy = claim_next(ws, rid, "cy", queue, at=100.0)
    assert bo == queue[0] and cy == queue[1]
    assert claim_next(ws, rid, "bo", queue, at=101.0) == bo  # a live claim is kept
    record_decisions(ws, [bo], "accept", reviewer="bo", round_id=rid)
    assert claim_next(ws, rid, "bo", queue, at=102.0) == queue[2]
    # cy walks away: the claim lapses and the item goes to the next reviewer who asks.
    assert claim_next(ws, rid, "ana", queue, at=100.0 + CLAIM_SECONDS + 1) == queue[1]
    release(ws, rid, "ana", queue[1])
    assert claim_next(ws, rid, "bo", queue, skip=[queue[2]],
                      at=100.0 + CLAIM_SECONDS + 2) == queue[1]
    assert reviewer_decided(ws, "bo", queue) == [queue[0]]


def test_overlap_items_go_to_two_reviewers_blind_and_a_conflict_waits_for_the_lead(team):
    ws, rid, items = team
    set_overlap_share(ws, 1.0)
    item = claim_next(ws, rid, "bo", items[:1], at=10.0)
    assert claim_next(ws, rid, "cy", items[:1], at=10.0) == item  # needed twice
    assert claim_next(ws, rid, "ana", items[:1], at=10.0) is None  # but not three times
    record_decisions(ws, [item], "accept", reviewer="bo", round_id=rid)
    assert reviewer_decision(ws, item, "cy") is None  # cy does not see bo's decision
    record_decisions(ws, [item], "relabel", label="outage", reviewer="cy", round_id=rid)
    assert current_decisions(ws)[item]["action"] == "reject"  # left out of training
    [conflict] = conflicts(ws)
    assert conflict["item_id"] == item and {d["reviewer"] for d in conflict["decisions"]} == \
        {"bo", "cy"}
    assert team_progress(ws, items[:1]) == {"done": 1, "total": 1}
    with pytest.raises(SemiEvolError, match="only a lead adjudicates"):
        adjudicate(ws, item, "accept", lead="bo")
    adjudicate(ws, item, "relabel", label="outage", lead="ana", round_id=rid)
    assert conflicts(ws) == []
    in_force = current_decisions(ws)[item]
    assert (in_force["action"], in_force["label"], in_force["reviewer"]) == \
        ("relabel", "outage", "ana")
    # Agreed decisions stand without a lead.
    other = items[1]
    record_decisions(ws, [other], "reject", reviewer="bo", round_id=rid)
    record_decisions(ws, [other], "reject", reviewer="cy", round_id=rid)
    assert current_decisions(ws)[other]["action"] == "reject" and not conflicts(ws)


def test_an_undo_under_the_team_rule_puts_back_the_reviewers_own_decision(team):
    ws, rid, items = team
    record_decisions(ws, [items[0]], "accept", reviewer="bo", round_id=rid)
    record_decisions(ws, [items[0]], "reject", reviewer="cy", round_id=rid)
    undo_last(ws, reviewer="cy", round_id=rid)
    assert reviewer_decision(ws, items[0], "cy") is None  # not bo's accept
    assert current_decisions(ws)[items[0]]["action"] == "accept"
    assert conflicts(ws) == []


def test_agreement_counts_reviewers_not_adjudications(team):
    ws, rid, items = team
    record_decisions(ws, [items[0]], "accept", reviewer="bo", round_id=rid)
    record_decisions(ws, [items[0]], "reject", reviewer="cy", round_id=rid)
    adjudicate(ws, items[0], "accept", lead="ana", round_id=rid)
    found = workspace_agreement(ws)
    assert found["reviewers"]["reviewers"] == ["bo", "cy"]
    assert found["accuracy"] == {"bo": {"items": 1, "correct": 1, "accuracy": 1.0}}


def test_overlap_conflicts_and_adjudicate_from_the_cli(team):
    ws, rid, items = team
    external = ws.scalar("SELECT external_id FROM items WHERE id=?", (items[0],))
    record_decisions(ws, [items[0]], "accept", reviewer="bo", round_id=rid)
    record_decisions(ws, [items[0]], "reject", reviewer="cy", round_id=rid)
    assert "20%" in semievol("overlap", ws.path, "0.2").stdout
    bad = semievol("overlap", ws.path, "1.5", check=False)
    assert bad.returncode == 2 and "from 0 to 1" in bad.stderr
    listed = semievol("conflicts", ws.path).stdout
    assert "1 conflict(s)" in listed and "bo accept; cy reject" in listed
    refused = semievol("adjudicate", ws.path, external, "--action", "accept", "--lead", "bo",
                       check=False)
    assert refused.returncode == 2 and "not a lead" in refused.stderr
    semievol("adjudicate", ws.path, external, "--action", "accept", "--lead", "ana")
    assert "0 conflict(s)" in semievol("conflicts", ws.path).stdout
    found = json.loads(semievol("agreement", ws.path, "--json").stdout)
    assert found["reviewers"]["pairs"][0] | {"kappa": 0} == {
        "a": "bo", "b": "cy", "items": 1, "agreed": 0, "kappa": 0}
    assert found["accuracy"]["bo"]["correct"] == 1


def test_the_rule_a_round_trained_under_is_kept_with_it(pool):
    from semievol.curation.training_set import freeze, live_training_items

    ws, rid, items = pool
    add_user(ws, "ana", "lead", PASSWORD)
    freeze(ws, rid, live_training_items(ws, 1))
    assert ws.scalar("SELECT decision_rule FROM rounds WHERE id=?", (rid,)) == "team"


def test_status_says_how_the_team_works(team):
    ws, rid, items = team
    assert json.loads(semievol("status", ws.path, "--json").stdout)["team"]["reviewers"] == 2
    record_decisions(ws, [items[0]], "accept", reviewer="bo", round_id=rid)
    record_decisions(ws, [items[0]], "reject", reviewer="cy", round_id=rid)
    out = semievol("status", ws.path).stdout
    assert "Team: 1 lead(s), 2 reviewer(s); overlap 0%; decisions follow the team rule" in out
    assert "1 conflict(s) wait for a lead" in out


def test_a_single_user_workspace_has_no_team_status(pool):
    ws, _, _ = pool
    assert json.loads(semievol("status", ws.path, "--json").stdout)["team"] is None
    assert "Team:" not in semievol("status", ws.path).stdout

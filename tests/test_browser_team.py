"""Team mode in a real browser (`semievol serve WS --team`, real Streamlit and chromium,
one browser context per person): nothing of the workspace reaches a browser before sign-in
(page text and websocket frames), wrong passwords are refused and then slowed and locked,
a reviewer cannot reach what only a lead may do, and decisions carry the signed-in name.
Skipped without chromium unless SEMIEVOL_REQUIRE_BROWSER=1 (`make test`)."""

from __future__ import annotations

import time

import pytest
from browser_support import CHROMIUM_ARGS, browser_or_skip, served

from semievol.team.accounts import LOCK_AFTER, add_user

PASSWORDS = {"ana": "ana's long password", "bo": "bo's long password",
             "cy": "cy's long password"}


@pytest.fixture
def team_server(pool):
    ws, rid, items = pool
    with ws.transaction() as conn:
        conn.execute("UPDATE rounds SET status='awaiting_review' WHERE id=?", (rid,))
    add_user(ws, "ana", "lead", PASSWORDS["ana"])
    add_user(ws, "bo", "reviewer", PASSWORDS["bo"])
    add_user(ws, "cy", "reviewer", PASSWORDS["cy"])
    with served(ws.path, team=True) as url:
        yield url, ws, rid, items


@pytest.fixture
def browser():
    chromium = browser_or_skip()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


def _page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 2000})
    page = context.new_page()
    frames: list[str] = []
    page.on("websocket", lambda ws: ws.on(
        "framereceived", lambda payload: frames.append(
            payload.decode("utf-8", "replace") if isinstance(payload, bytes) else payload)))
    return page, frames


def _sign_in_form(page, url: str, path: str = "") -> None:
    page.goto(f"{url}/{path}")
    page.get_by_role("heading", name="Sign in to SemiEvol Studio").wait_for(timeout=90_000)
    page.wait_for_load_state("networkidle")


def _try_sign_in(page, name: str, password: str) -> None:
    page.get_by_role("textbox", name="Name").fill(name)
    page.get_by_role("textbox", name="Password").fill(password)
    page.get_by_role("button", name="Sign in", exact=True).click()


def _sign_in(page, url: str, name: str, path: str = "") -> None:
    _sign_in_form(page, url, path)
    _try_sign_in(page, name, PASSWORDS[name])
    page.get_by_text(f"Signed in as {name}").wait_for(timeout=30_000)
    # The session cookie is written by the page once signed in: a new tab opened before
    # that would ask again.
    page.wait_for_function("document.cookie.includes('semievol_session=')", timeout=30_000)
    page.wait_for_load_state("networkidle")


def _errors(page) -> list[str]:
    return [e.inner_text() for e in page.locator('[data-testid="stException"]').all()]


def test_nothing_is_shown_before_sign_in(team_server, browser):
    url, ws, rid, items = team_server
    questions = [r["question"] for r in ws.query("SELECT question FROM items")]
    page, frames = _page(browser)
    for path in ("", "Review", "Workspace", "Export"):
        _sign_in_form(page, url, path)
        text = page.locator("body").inner_text()
        assert "Sign in" in text
        for hidden in ("Review", "Pseudo-label", "unlabeled", str(ws.path.name), "Round 1"):
            assert hidden not in text.replace("Reviewer", ""), (path, hidden)
        assert _errors(page) == []
    assert frames, "the websocket carried nothing: the check would prove nothing"
    leaked = [q for q in questions if any(q in f for f in frames)]
    assert leaked == []
    assert not any(str(ws.path) in f for f in frames)
    # Signed in, the same browser does receive the items: the check can fail.
    _sign_in(page, url, "bo", "Review")
    page.get_by_text("decided by you", exact=False).first.wait_for(timeout=30_000)
    assert any(q in f for q in questions for f in frames)


def test_wrong_passwords_are_refused_then_slowed_then_locked(team_server, browser):
    url, ws, _, _ = team_server
    page, _ = _page(browser)
    _sign_in_form(page, url)
    for _ in range(3):
        _try_sign_in(page, "bo", "not bo's password")
        page.get_by_text("Wrong name or password").wait_for(timeout=30_000)
        time.sleep(0.2)
    _try_sign_in(page, "bo", PASSWORDS["bo"])  # right, but too soon after three failures
    page.get_by_text("wait", exact=False).first.wait_for(timeout=30_000)
    assert "Signed in as" not in page.locator("body").inner_text()
    # One failure short of the lock, long ago: the next wrong try locks the account.
    with ws.transaction() as conn:
        conn.execute("UPDATE users SET failures=?, failed_at=0 WHERE name='bo'",
                     (LOCK_AFTER - 1,))
    _try_sign_in(page, "bo", "still not it")
    page.get_by_text("locked for 15 min", exact=False).first.wait_for(timeout=30_000)
    _try_sign_in(page, "bo", PASSWORDS["bo"])
    page.get_by_text("locked for", exact=False).first.wait_for(timeout=30_000)
    assert ws.scalar("SELECT locked_until FROM users WHERE name='bo'") > time.time()
    assert ws.scalar("SELECT COUNT(*) FROM sessions") == 0


LEAD_PAGES = [("Round_setup", "Launch"), ("Train_and_evaluate", "Train"),
              ("Export", "Export"), ("Selection", "Apply")]


def test_a_reviewer_reviews_and_cannot_reach_lead_actions(team_server, browser):
    url, ws, rid, items = team_server
    reviewer, _ = _page(browser)
    _sign_in(reviewer, url, "bo")
    for path, button in LEAD_PAGES:
        reviewer.goto(f"{url}/{path}")
        reviewer.get_by_text("Only a lead can", exact=False).wait_for(timeout=30_000)
        reviewer.wait_for_load_state("networkidle")
        assert reviewer.get_by_role("button", name=button).count() == 0, path
        assert _errors(reviewer) == []
    reviewer.goto(f"{url}/Workspace")
    reviewer.get_by_text("Signed in as bo").wait_for(timeout=30_000)
    reviewer.get_by_role("tab", name="Import a file").click()
    reviewer.get_by_text("A lead imports files.").wait_for(timeout=30_000)
    # Review: no typed reviewer name, no bulk action; a decision is recorded for bo.
    reviewer.goto(f"{url}/Review")
    reviewer.get_by_text("decided by you", exact=False).first.wait_for(timeout=30_000)
    assert reviewer.get_by_role("textbox", name="Reviewer").count() == 0
    assert reviewer.get_by_text("All filtered items").count() == 0
    reviewer.get_by_role("button", name="Accept").first.click()
    deadline = time.time() + 30
    while time.time() < deadline and not ws.scalar("SELECT COUNT(*) FROM decisions"):
        time.sleep(0.3)
    assert [tuple(r) for r in ws.query("SELECT action, reviewer FROM decisions")] == \
        [("accept", "bo")]
    # The lead, in a browser of their own, sees the lead pages' controls.
    lead, _ = _page(browser)
    _sign_in(lead, url, "ana", "Round_setup")
    lead.get_by_role("button", name="Launch", exact=False).first.wait_for(timeout=30_000)
    assert lead.get_by_text("Only a lead can").count() == 0
    # Signing out ends the session: the next page asks for a sign-in again.
    reviewer.get_by_role("button", name="Sign out").click()
    reviewer.get_by_role("heading", name="Sign in to SemiEvol Studio").wait_for(timeout=30_000)
    assert ws.scalar("SELECT COUNT(*) FROM sessions WHERE user_name='bo'") == 0


def _decide_in_focus(page, url: str, name: str, button: str) -> None:
    _sign_in(page, url, name, "Review")
    page.get_by_text("decided by you", exact=False).first.wait_for(timeout=30_000)
    page.get_by_role("button", name=button).first.click()  # the name ends with its key
    page.get_by_text("1 decided by you", exact=False).first.wait_for(timeout=30_000)


def test_overlap_reviewers_conflict_and_the_lead_adjudicates_what_trains(team_server, browser):
    from semievol.curation.decisions import current_decisions
    from semievol.curation.training_set import training_items
    from semievol.team.handout import set_overlap_share

    url, ws, rid, items = team_server
    set_overlap_share(ws, 1.0)  # every item to two reviewers
    bo, _ = _page(browser)
    cy, _ = _page(browser)
    _decide_in_focus(bo, url, "bo", "Accept")
    [(item, label)] = ws.query("SELECT d.item_id, p.label FROM decisions d JOIN pseudo_labels "
                               "p ON p.item_id = d.item_id WHERE d.reviewer='bo'")
    other = next(x for x in ("billing", "outage", "equipment") if x != label)
    # cy is handed the same item (it needs two reviews) and sees nothing of bo's decision.
    _sign_in(cy, url, "cy", "Review")
    cy.get_by_text("decided by you", exact=False).first.wait_for(timeout=30_000)
    assert "Your decision" not in cy.locator("body").inner_text()
    cy.get_by_role("button", name=other).first.click()
    cy.get_by_text("1 decided by you", exact=False).first.wait_for(timeout=30_000)
    assert ws.scalar("SELECT item_id FROM decisions WHERE reviewer='cy'") == item
    assert current_decisions(ws)[item]["note"].startswith("conflict")
    assert item not in {r["item_id"] for r in training_items(ws, 1)}  # left out
    # The lead adjudicates on the Team page, in a browser of their own.
    lead, _ = _page(browser)
    _sign_in(lead, url, "ana", "Team")
    lead.get_by_text("Conflicts (1)").wait_for(timeout=30_000)
    lead.get_by_role("button", name=f"Relabel: {other}").click()
    lead.get_by_text("Conflicts (0)").wait_for(timeout=30_000)
    assert _errors(lead) == []
    in_force = current_decisions(ws)[item]
    assert (in_force["action"], in_force["label"], in_force["reviewer"]) == \
        ("relabel", other, "ana")
    trained = {r["item_id"]: r for r in training_items(ws, 1)}
    assert trained[item]["answer"] == other and trained[item]["source"] == "human"
    # A reviewer cannot open the Team page.
    bo.goto(f"{url}/Team")
    bo.get_by_text("Only a lead can", exact=False).wait_for(timeout=30_000)


# -- single sign-on (st.login) against a local OpenID Connect provider ----------------------------
@pytest.fixture
def oidc_provider(tmp_path):
    """oidc-provider-mock on a free port of 127.0.0.1; yields its base URL."""
    import socket
    import subprocess
    import sys
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(tmp_path / "oidc.log", "w")
    process = subprocess.Popen([sys.executable, "-m", "oidc_provider_mock", "--host",
                                "127.0.0.1", "--port", str(port)], stdout=log,
                               stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while True:
        try:
            urllib.request.urlopen(f"{base}/.well-known/openid-configuration", timeout=2)
            break
        except OSError:
            if time.time() > deadline or process.poll() is not None:
                process.kill()
                pytest.fail("the OIDC test provider did not start: "
                            + (tmp_path / "oidc.log").read_text()[-2000:])
            time.sleep(0.3)
    yield base
    process.terminate()
    process.wait(timeout=20)


def test_single_sign_on_through_streamlit_login(pool, oidc_provider, browser):
    ws, rid, _ = pool
    add_user(ws, "ana", "lead", PASSWORDS["ana"])
    add_user(ws, "cy@example.org", "reviewer", sso=True)

    def secrets(port: int) -> str:
        return (f'[auth]\nredirect_uri = "http://127.0.0.1:{port}/oauth2callback"\n'
                'cookie_secret = "a test cookie secret, not a real one"\n'
                'client_id = "semievol-test"\nclient_secret = "test-secret"\n'
                f'server_metadata_url = "{oidc_provider}/.well-known/openid-configuration"\n')

    with served(ws.path, team=True, secrets=secrets) as url:
        page, _ = _page(browser)
        _sign_in_form(page, url)
        page.get_by_role("button", name="Sign in with single sign-on").click()
        page.get_by_placeholder("sub").wait_for(timeout=30_000)  # the provider's own page
        page.get_by_placeholder("sub").fill("cy@example.org")
        page.get_by_role("button", name="Authorize").click()
        page.get_by_text("Signed in as cy@example.org").wait_for(timeout=60_000)
        assert "(reviewer)" in page.locator("body").inner_text()
        assert ws.scalar("SELECT COUNT(*) FROM sessions WHERE user_name='cy@example.org'") == 1
        # An identity the provider vouches for, but with no account here, is refused.
        stranger, _ = _page(browser)
        _sign_in_form(stranger, url)
        stranger.get_by_role("button", name="Sign in with single sign-on").click()
        stranger.get_by_placeholder("sub").fill("stranger@example.org")
        stranger.get_by_role("button", name="Authorize").click()
        stranger.get_by_text("has no single-sign-on account", exact=False).wait_for(
            timeout=60_000)
        assert "Signed in as" not in stranger.locator("body").inner_text()

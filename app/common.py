"""What every page shares: `page_setup()` (config, sidebar, sign-in in team mode, the open
workspace) and the way a user-caused error is shown (`show_error`, `user_errors`).

The UI holds no truth: `st.session_state` keeps only the workspace folder and the reviewer
name, or in team mode the session token; everything else is read from the workspace
database on every run (nothing cached).

Team mode (`semievol serve WORKSPACE --team`): the server fixes the workspace, nothing is
shown before sign-in, the signed-in account is the reviewer of every decision, and every
action a role may not take is refused here (`allow`) as well as hidden (semievol.team.accounts
holds the rule).
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
from pathlib import Path

import streamlit as st

from semievol.errors import SemiEvolError
from semievol.runs import launch
from semievol.runs.jobs import RunRefused
from semievol.team.accounts import (LEAD_ONLY, SESSION_SECONDS, Account, SignInRefused,
                                    close_session, may, require, session_account, sign_in,
                                    sso_sign_in)
from semievol.views.train import TrainAction
from semievol.views.workflow import PAGE_TITLES, PAGES, round_state
from semievol.workspace.store import Workspace

APP_NAME = "SemiEvol Studio"
RUNS_PAGE = "pages/3_Runs.py"
REVIEW_PAGE = "pages/4_Review.py"
WORKSPACE_KEY = "workspace_path"
REVIEWER_KEY = "reviewer"
FLASH_KEY = "flash"
SESSION_KEY = "team_session"
SESSION_COOKIE = "semievol_session"
_REMEMBER_KEY = "_team_remember"


def _script_arg(name: str, argv: list[str] | None) -> str | None:
    """`--name X` or `--name=X` from the script arguments (after `--`)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" in argv:
        argv = argv[argv.index("--") + 1:]
    for i, arg in enumerate(argv):
        if arg == f"--{name}" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(f"--{name}="):
            return arg.split("=", 1)[1]
    return None


def team_mode(argv: list[str] | None = None, environ=None) -> bool:
    """`--team` among the script arguments (what `semievol serve --team` passes), or
    $SEMIEVOL_TEAM=1."""
    environ = os.environ if environ is None else environ
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" in argv:
        argv = argv[argv.index("--") + 1:]
    return "--team" in argv or environ.get("SEMIEVOL_TEAM") == "1"


def default_workspace(argv: list[str] | None = None, environ=None) -> str:
    """`--workspace X` from the script arguments (`streamlit run app/Home.py -- --workspace X`),
    else $SEMIEVOL_WORKSPACE, else workspaces/demo."""
    environ = os.environ if environ is None else environ
    return (_script_arg("workspace", argv) or environ.get("SEMIEVOL_WORKSPACE")
            or "workspaces/demo")


def workspace_root(argv: list[str] | None = None, environ=None) -> Path:
    """The folder the app opens and creates workspaces in, and nowhere else:
    `--workspace-root X`, else $SEMIEVOL_WORKSPACE_ROOT, else the folder of the default
    workspace (workspaces/ for workspaces/demo)."""
    environ = os.environ if environ is None else environ
    root = _script_arg("workspace-root", argv) or environ.get("SEMIEVOL_WORKSPACE_ROOT")
    if root is None:
        root = Path(default_workspace(argv, environ)).expanduser().resolve().parent
    return Path(root).expanduser().resolve()


def under_root(path: str, root: Path) -> Path:
    """The workspace folder `path` names (relative to the root, or absolute inside it);
    SemiEvolError when it would be outside the root."""
    candidate = Path(path).expanduser()
    candidate = (candidate if candidate.is_absolute() else root / candidate).resolve()
    if candidate != root and not candidate.is_relative_to(root):
        raise SemiEvolError(f"Workspaces live under {root}: {path!r} is outside it. Give a "
                            "folder name inside it (the server's --workspace-root sets it).")
    return candidate


def default_reviewer(environ=None) -> str:
    environ = os.environ if environ is None else environ
    return environ.get("USER") or "reviewer"


def _keep(widget_key: str, key: str) -> None:
    # Widget state is dropped when a page is left; the value lives on under its own key.
    st.session_state[key] = st.session_state[widget_key].strip()


def _sidebar_input(label: str, key: str, default: str, help: str) -> str:
    st.session_state.setdefault(key, default)
    widget_key = f"_{key}_input"
    st.session_state[widget_key] = st.session_state[key]
    st.sidebar.text_input(label, key=widget_key, help=help, on_change=_keep,
                          args=(widget_key, key))
    return st.session_state[key]


PAGE_NEEDS = {"setup": "launch", "selection": "settings", "train": "train", "export": "export",
              "team": "team"}
"""The lead-only action (semievol.team.accounts.LEAD_ONLY) each lead's page is for; in team
mode a reviewer neither sees these pages in the navigation nor can open them."""


def page_setup(title: str, *, icon: str = ":material/science:") -> Workspace:
    """Page config, the sidebar (workspace folder, reviewer name) and the open workspace.

    When the folder holds no workspace, shows an empty state with a create button and stops
    the page; a workspace that cannot be opened is shown as an error, also stopping. In team
    mode: the server's workspace after sign-in, and only the pages the account's role may
    use.
    """
    st.set_page_config(page_title=f"{title} · {APP_NAME}", page_icon=icon, layout="wide")
    if team_mode():
        page = next((key for key, name in PAGE_TITLES.items() if name == title), None)
        return _team_page(title, PAGE_NEEDS.get(page))
    root = workspace_root()
    path = _sidebar_input("Workspace folder", WORKSPACE_KEY, default_workspace(),
                          f"A folder holding workspace.db, under {root} (a name there, or a "
                          "path inside it).")
    _sidebar_input("Reviewer", REVIEWER_KEY, default_reviewer(),
                   "Recorded with every review decision you make.")
    st.title(title)
    show_flash()
    if not path:
        st.info("Enter a workspace folder in the sidebar.")
        st.stop()
    try:
        folder = under_root(path, root)
    except SemiEvolError as exc:
        show_error(exc)
        st.stop()
    if not (folder / "workspace.db").exists():
        _empty_state(folder)
        st.stop()
    try:
        ws = Workspace(folder)
    except (SemiEvolError, OSError) as exc:
        show_error(exc)
        st.stop()
    st.sidebar.caption(f"Open: {literal(ws.path)}")
    return ws


# -- team mode --------------------------------------------------------------------------------
def _team_page(title: str, needs: str | None) -> Workspace:
    """The server's workspace once a live session is held; else the sign-in form, and the
    page stops before anything of the workspace is sent to the browser."""
    try:
        ws = Workspace(default_workspace())
    except (SemiEvolError, OSError):
        # Before sign-in not even the folder's name is shown; the server's log has it.
        st.error("This server's workspace cannot be opened; its operator should check it.")
        st.stop()
    cookie = st.context.cookies.get(SESSION_COOKIE)
    token = st.session_state.get(SESSION_KEY) or cookie
    account = session_account(ws, token)
    if account is None:
        st.session_state.pop(SESSION_KEY, None)
        if cookie:
            _set_cookie("")  # a dead token: the browser forgets it
        _sign_in_form(ws)
        st.stop()
    st.session_state[SESSION_KEY] = token
    if st.session_state.pop(_REMEMBER_KEY, False):
        _set_cookie(token)
    bar = st.sidebar
    # The server hides Streamlit's own page list (it would show before sign-in); this one
    # holds the pages this role may use.
    bar.page_link("Home.py", label=APP_NAME, icon=":material/home:")
    for key, path in PAGES.items():
        if may(account, PAGE_NEEDS.get(key, "review")):
            bar.page_link(path, label=PAGE_TITLES[key])
    bar.markdown(f"Signed in as **{literal(account.name)}** ({account.role})")
    if bar.button("Sign out", key="sign_out", icon=":material/logout:"):
        close_session(ws, st.session_state.pop(SESSION_KEY, None))
        if _sso_configured() and getattr(st.user, "is_logged_in", False):
            st.logout()
        st.rerun()
    st.title(title)
    show_flash()
    if needs and not may(account, needs):
        st.info(f"Only a lead can {LEAD_ONLY[needs]}: this page is not open to a "
                "reviewer. Review is.", icon=":material/lock:")
        st.page_link(REVIEW_PAGE, label="Go to Review", icon=":material/arrow_forward:")
        st.stop()
    return ws


def _set_cookie(token: str) -> None:
    """Keep the session token in a cookie (a new tab or a reload stays signed in), or drop it
    (""). Streamlit cannot set a cookie from the server, so a line of script does; the
    token is URL-safe base64, nothing to escape. SameSite=Strict: no other site's page can
    send it; Secure behind https (the TLS proxy)."""
    age = SESSION_SECONDS if token else 0
    st.html(f"<script>document.cookie = '{SESSION_COOKIE}={token}; path=/; max-age={age}; "
            "samesite=strict' + (location.protocol === 'https:' ? '; secure' : '');</script>",
            unsafe_allow_javascript=True)


def _signed_in(token: str) -> None:
    st.session_state[SESSION_KEY] = token
    st.session_state[_REMEMBER_KEY] = True
    st.rerun()


def _sso_configured() -> bool:
    """Whether .streamlit/secrets.toml configures single sign-on (an [auth] section)."""
    try:
        return "auth" in st.secrets
    except Exception:  # no secrets file at all: Streamlit raises rather than answer no
        return False


def _sign_in_form(ws: Workspace) -> None:
    st.title(f"Sign in to {APP_NAME}")
    if _sso_configured():
        if getattr(st.user, "is_logged_in", False):
            try:
                token = sso_sign_in(ws, st.user.get("email"))
            except SignInRefused as exc:
                show_error(exc)
                if st.button("Sign out of single sign-on", key="sso_logout"):
                    st.logout()
                return
            _signed_in(token)
        st.button("Sign in with single sign-on", key="sso_login", type="primary",
                  on_click=st.login)
        st.caption("Or with a name and password:")
    with st.form("sign_in", enter_to_submit=True):
        name = st.text_input("Name", key="sign_in_name")
        password = st.text_input("Password", type="password", key="sign_in_password")
        submitted = st.form_submit_button("Sign in", type="primary")
    if submitted:
        try:
            token = sign_in(ws, name, password)
        except SignInRefused as exc:
            show_error(exc)
            return
        _signed_in(token)


def current_account(ws: Workspace) -> Account | None:
    """The signed-in account, checked against the workspace now (a session that expired
    or was ended since the page was drawn has none); None in single-user mode."""
    if not team_mode():
        return None
    account = session_account(ws, st.session_state.get(SESSION_KEY))
    if account is None:
        raise SemiEvolError("Your session has ended: sign in again.")
    return account


def allow(ws: Workspace, action: str) -> None:
    """Refuse an action the signed-in account's role may not take (a SemiEvolError, shown
    like any other); nothing in single-user mode."""
    require(current_account(ws), action)


def may_here(ws: Workspace, action: str) -> bool:
    """Whether to show the controls of `action` to whoever is signed in."""
    return not team_mode() or may(current_account(ws), action)


def reviewer_name(ws: Workspace) -> str:
    """Who a decision is recorded for: the signed-in account in team mode, else the name
    typed in the sidebar."""
    account = current_account(ws)
    return account.name if account else st.session_state.get(REVIEWER_KEY, "")


def _empty_state(path: Path) -> None:
    st.info(f"No workspace at {literal(path)}: create it here, or enter another folder in the "
            "sidebar.")
    if st.button("Create workspace", type="primary", key="create_workspace"):
        try:
            Workspace(path, create=True).close()
        except (SemiEvolError, OSError) as exc:
            show_error(exc)
            return
        flash(f"Created an empty workspace at {literal(path)}. Import a labeled file next.")
        st.rerun()


_MARKDOWN = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~$:@])")


def literal(text) -> str:
    """Data (a label, an id, a file name, a question, a server's error) made safe inside
    Markdown, the one way the app puts data into a Markdown element: every character
    Markdown would act on is escaped, so a link or an image in the data is shown as text and
    never rendered or loaded. The colon and the at sign too: a bare http://... or a@b.c would
    otherwise become a link (GitHub-flavoured Markdown's autolinks)."""
    return _MARKDOWN.sub(r"\\\1", str(text))


def show_verdict(pseudo: dict) -> None:
    """An item's pseudo-label with one confidence in words and, when the warm-up model chose
    against collaborators, how many it overrode (Review's detail and Focus mode alike)."""
    cols = st.columns(3)
    cols[0].metric("Pseudo-label", literal(pseudo["label"]))
    cols[1].metric("Collaborators agreeing", pseudo["agreeing"], help=pseudo["agreement_text"])
    cols[2].metric("Trained on?", "selected" if pseudo["selected"] else "not selected")
    sentence = pseudo["voice"][:1].upper() + pseudo["voice"][1:]
    st.markdown(literal(sentence) + ".", help=GLOSSARY["Confidence"])
    if pseudo["override"]:
        st.warning(literal(pseudo["override"][:1].upper() + pseudo["override"][1:]) +
                   f" and chose **{literal(pseudo['label'])}**: check this one.",
                   icon=":material/call_split:")


def highlighted(text: str, answer: str | None) -> str:
    """A response as safe Markdown with the extracted answer in bold (its last occurrence:
    a final answer comes last); the whole text escaped like any data."""
    text = str(text or "")
    at = text.rfind(answer) if answer else -1
    if at < 0:
        return literal(text)
    return (literal(text[:at]) + "**" + literal(answer) + "**"
            + literal(text[at + len(answer):]))


def app_message(exc: BaseException) -> str:
    """An error's message in the app's words (SemiEvolError.app, where the remedy is a page
    rather than a command), else its message without the problems list."""
    if isinstance(exc, SemiEvolError):
        return exc.app or (exc.args[0] if exc.args else str(exc))
    return str(exc)


def show_error(exc: BaseException) -> None:
    """A user-caused error as a message and the list of its problems; never a traceback."""
    message = app_message(exc)
    problems = getattr(exc, "problems", None) or []
    text = literal(message)  # messages quote file names and values from the data
    if problems:
        text += "\n\n" + "\n".join(f"- {literal(p)}" for p in problems)
    st.error(text, icon=":material/error:")


@contextlib.contextmanager
def user_errors():
    """Run a block; a SemiEvolError raised in it is shown with `show_error` and swallowed."""
    try:
        yield
    except SemiEvolError as exc:
        show_error(exc)


def flash(message: str) -> None:
    """A success message that survives one `st.rerun()` (shown by the next `page_setup`)."""
    st.session_state[FLASH_KEY] = message


def show_flash() -> None:
    message = st.session_state.pop(FLASH_KEY, None)
    if message:
        st.success(message)


def launch_with_feedback(ws: Workspace, step: str, what: str, *, config=None,
                         review: bool = True, confirm: str | None = None) -> int | None:
    """Start a step as a background run, say so and rerun the page (so it follows the run
    live); a refusal (another run holds the round) is a warning, any other user error a
    readable message. Returns None when nothing was started (a start reruns the page)."""
    try:
        allow(ws, "train" if step in ("train", "evaluate") else "launch")
        run_id = launch.start(ws, step, background=True, config=config, review=review,
                              confirm=confirm)
    except RunRefused as exc:
        st.warning(literal(app_message(exc)), icon=":material/hourglass_top:")
        return None
    except SemiEvolError as exc:
        show_error(exc)
        return None
    flash(f"Started run {run_id}: {what}. It is followed live on this page and on Runs.")
    st.rerun()


GLOSSARY = {
    "Pseudo-label": "the answer the round proposes for an unlabeled item: the collaborators' "
                    "common answer, or the reflecting model's choice when they disagreed.",
    "Collaborator": "one way of asking a model: the base or the warm-up model, with 0 to k "
                    "retrieved labeled examples shown before the question.",
    "Agreement": "how many collaborators gave the same answer (4 of 4 is the strongest "
                 "signal).",
    "Reflection": "when collaborators disagree, the warm-up model (or, where the round says "
                  "so, a larger served model) is shown every answer and picks one; that "
                  "pick becomes the pseudo-label.",
    "Confidence": "how likely the warm-up model finds the pseudo-label, among the options "
                  "(for an open answer: exp of minus the entropy): 90 % means sure; about "
                  "one over the number of classes is a guess. Higher is better.",
    "Entropy": "the raw score behind confidence: the mean negative log-probability of the "
               "pseudo-label's tokens (paper eq. 6). Lower is more confident.",
    "Selection": "the pseudo-labels the round trains on: those at or below an entropy "
                 "threshold (by default the most confident half, a percentile), plus your "
                 "accepts and relabels, minus your rejects.",
    "Calibration slice": "labeled items held out and labeled by the collaborators as if "
                         "unlabeled: their precision shows how right the selected "
                         "pseudo-labels are before training. Under 30 items it is a hint, "
                         "not an estimate.",
    "Coverage": "the share of the pool the selection keeps; higher coverage usually costs "
                "precision.",
}


def show_glossary() -> None:
    """A short glossary of the words the pages use."""
    with st.expander("What do these words mean?", icon=":material/help:"):
        for word, meaning in GLOSSARY.items():
            st.markdown(f"**{word}**: {meaning}")


def show_round_state(ws: Workspace, *, here: str | None = None,
                     state: dict | None = None) -> dict:
    """The latest round's state and the next action (semievol.views.workflow), with a link to
    the page that does it (unless it is this page, `here`), a running run, and the
    regression guard's warning; `state` when the page's read model holds it already.
    Returns the state."""
    state = state or round_state(ws)
    where = f"Round {state['round']}: **{state['status_name']}**" if state["round"] else \
        "**No round yet**"
    box = st.container(border=True)
    box.markdown(f"{where} · next: {state['action']}")
    if state["page"] != here:
        box.page_link(PAGES[state["page"]], label=f"Go to {PAGE_TITLES[state['page']]}",
                      icon=":material/arrow_forward:")
    if state["regression"]:
        box.error(state["regression"], icon=":material/trending_down:")
    return state


def training_counts(action: TrainAction) -> str:
    """What training would use now, in one sentence that adds up (the train box, and the
    focus panel where it follows each decision)."""
    counts = action.counts
    return (f"Training now uses {action.total} item(s) = {counts['gold']} labeled + "
            f"{counts['pseudo']} pseudo-labels (kept by the policy or accepted) + "
            f"{counts['human']} relabeled by a reviewer, this round's and earlier rounds'.")


def show_train_action(ws: Workspace, action: TrainAction | None, *, key: str,
                      counts: bool = True) -> None:
    """"Train on the curated set" for a round awaiting review (views.train.train_action):
    what it would train on (unless `counts` is False: focus mode shows them in its panel,
    current with each decision), the evidence's warnings (to be confirmed, and then
    recorded), and the button; disabled while a run writes the workspace's rounds."""
    if action is None:
        return
    if not may_here(ws, "train"):
        st.caption(f"Round {action.number} is awaiting review; a lead trains it.")
        return
    box = st.container(border=True)
    box.markdown(f"**Round {action.number} is awaiting review.**"
                 + (f" {training_counts(action)}" if counts else
                    " What training would use is shown under the item, as you decide."))
    for warning in action.warnings:
        box.warning(warning["message"], icon=":material/warning:")
    confirmed = not action.warnings or box.checkbox(
        "I have read these warnings and want to train anyway (recorded with the round)",
        key=f"{key}_confirm")
    running = action.running
    if running:
        box.caption(f"Run {running['id']} ({running['kind']}) is running: training can "
                    "start once it has finished.")
        box.page_link(RUNS_PAGE, label="Open the Runs page", icon=":material/monitoring:")
    if box.button("Train on the curated set", type="primary", key=key,
                  disabled=bool(running) or not confirmed,
                  help="Freezes this training set, trains the round's adapter on it and "
                       "evaluates it. Decisions made afterwards count for the next round."):
        launch_with_feedback(ws, "train", f"training round {action.number}",
                             confirm=reviewer_name(ws) if action.warnings else None)

"""What every page shares: `page_setup()` (config, sidebar, the open workspace) and the way
a user-caused error is shown (`show_error`, `user_errors`).

The UI holds no truth: `st.session_state` keeps only the workspace folder and the reviewer
name; everything else is read from the workspace database on every run (nothing cached).
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

import streamlit as st

from semievol.errors import SemiEvolError
from semievol.store import Workspace

APP_NAME = "SemiEvol Studio"
RUNS_PAGE = "pages/3_Runs.py"
WORKSPACE_KEY = "workspace_path"
REVIEWER_KEY = "reviewer"
FLASH_KEY = "flash"


def default_workspace(argv: list[str] | None = None, environ=None) -> str:
    """`--workspace X` from the script arguments (`streamlit run app/Home.py -- --workspace X`),
    else $SEMIEVOL_WORKSPACE, else workspaces/demo."""
    argv = list(sys.argv[1:] if argv is None else argv)
    environ = os.environ if environ is None else environ
    if "--" in argv:
        argv = argv[argv.index("--") + 1:]
    for i, arg in enumerate(argv):
        if arg == "--workspace" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--workspace="):
            return arg.split("=", 1)[1]
    return environ.get("SEMIEVOL_WORKSPACE") or "workspaces/demo"


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


def page_setup(title: str, *, icon: str = ":material/science:") -> Workspace:
    """Page config, the sidebar (workspace folder, reviewer name) and the open workspace.

    When the folder holds no workspace, shows an empty state with a create button and stops
    the page; a workspace that cannot be opened is shown as an error, also stopping.
    """
    st.set_page_config(page_title=f"{title} · {APP_NAME}", page_icon=icon, layout="wide")
    path = _sidebar_input("Workspace folder", WORKSPACE_KEY, default_workspace(),
                          "A folder holding workspace.db; relative paths are from where the "
                          "app was started.")
    _sidebar_input("Reviewer", REVIEWER_KEY, default_reviewer(),
                   "Recorded with every review decision you make.")
    st.title(title)
    show_flash()
    if not path:
        st.info("Enter a workspace folder in the sidebar.")
        st.stop()
    if not (Path(path).expanduser() / "workspace.db").exists():
        _empty_state(path)
        st.stop()
    try:
        ws = Workspace(path)
    except (SemiEvolError, OSError) as exc:
        show_error(exc)
        st.stop()
    st.sidebar.caption(f"Open: `{ws.path}`")
    return ws


def _empty_state(path: str) -> None:
    st.info(f"No workspace at {path}: create it here, or enter another folder in the sidebar.")
    if st.button("Create workspace", type="primary", key="create_workspace"):
        try:
            Workspace(path, create=True).close()
        except (SemiEvolError, OSError) as exc:
            show_error(exc)
            return
        flash(f"Created an empty workspace at {path}. Import a labeled file next.")
        st.rerun()


def show_error(exc: BaseException) -> None:
    """A user-caused error as a message and the list of its problems; never a traceback."""
    message = exc.args[0] if isinstance(exc, SemiEvolError) and exc.args else str(exc)
    problems = getattr(exc, "problems", None) or []
    text = str(message)
    if problems:
        text += "\n\n" + "\n".join(f"- {p}" for p in problems)
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


def launch_with_feedback(ws: Workspace, step: str, what: str, *, config=None) -> None:
    """Start a step as a background run and say so, with a link to the Runs page; a refusal
    (another run holds the round) is a warning, any other user error a readable message."""
    from semievol import launch
    from semievol.jobs import RunRefused

    try:
        run_id = launch.start(ws, step, background=True, config=config)
    except RunRefused as exc:
        st.warning(str(exc), icon=":material/hourglass_top:")
        return
    except SemiEvolError as exc:
        show_error(exc)
        return
    st.success(f"Started run {run_id}: {what}. Follow it on the Runs page.")
    st.page_link(RUNS_PAGE, label="Open the Runs page", icon=":material/monitoring:")

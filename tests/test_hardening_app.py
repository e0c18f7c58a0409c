"""The app: workspaces only under the workspace root, uploads in a private folder and gone
after the import, and imported data shown as text (a link or an image in it is never
rendered, so a tracking pixel in a ticket does not load)."""

from __future__ import annotations

import stat
import sys
from pathlib import Path

from conftest import add_pseudo, add_round, ids_of

APP = Path(__file__).resolve().parents[1] / "app"
sys.path.insert(0, str(APP))

import common  # noqa: E402
import workspace_view  # noqa: E402

PIXEL = "![pixel](http://127.0.0.1:9/track.png) [click](http://127.0.0.1:9/x)"


def app(monkeypatch, root: Path, workspace: Path):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("SEMIEVOL_WORKSPACE_ROOT", str(root))
    monkeypatch.setenv("SEMIEVOL_WORKSPACE", str(workspace))
    return AppTest.from_file(str(APP / "Home.py"), default_timeout=30)


def test_the_sidebar_opens_and_creates_workspaces_under_the_root_only(tmp_path, monkeypatch):
    root = tmp_path / "root"
    root.mkdir()
    outside = tmp_path / "outside"
    at = app(monkeypatch, root, outside).run()
    assert not at.exception
    assert any("is outside it" in e.value for e in at.error)
    assert not [b for b in at.button if b.key == "create_workspace"]
    assert not outside.exists()
    at.session_state[common.WORKSPACE_KEY] = "../outside"
    at.run()
    assert any("is outside it" in e.value for e in at.error) and not outside.exists()
    at.session_state[common.WORKSPACE_KEY] = "new-one"  # a name under the root
    at.run()
    at.button(key="create_workspace").click().run()
    assert (root / "new-one" / "workspace.db").exists() and not outside.exists()


def test_the_root_defaults_to_the_default_workspaces_folder():
    root = common.workspace_root(argv=["--", "--workspace", "workspaces/demo"], environ={})
    assert root == Path("workspaces").resolve()
    assert common.workspace_root(argv=["--", "--workspace-root", "/srv/ws"], environ={}) == \
        Path("/srv/ws")


def test_uploads_are_private_and_deleted_after_the_import(tmp_path):
    path = workspace_view.save_upload("labeled.csv", b"id,text\n1,a\n", "file-id/1")
    assert stat.S_IMODE(path.parent.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    workspace_view.discard_upload(path)
    assert not path.exists() and not path.parent.exists()


def test_imported_text_is_shown_as_text_never_rendered(filled_workspace, monkeypatch):
    ws = filled_workspace
    pool = ids_of(ws, "unlabeled")
    ws.conn.execute("UPDATE items SET question=? WHERE id=?", (PIXEL, pool[0]))
    neighbour = ws.scalar("SELECT neighbour_id FROM neighbours WHERE item_id=? AND rank=0",
                          (pool[0],))
    ws.conn.execute("UPDATE items SET question=?, external_id=? WHERE id=?",
                    (PIXEL, "L[x](http://127.0.0.1:9/id)", neighbour))
    add_pseudo(ws, add_round(ws), [(pool[0], "billing", "agreed", 0.1, 0.1)])
    at = app(monkeypatch, ws.path.parent, ws.path)
    at.session_state["review_mode"] = "focus"
    at.run().switch_page("pages/4_Review.py").run()
    assert not at.exception
    rendered = [e.value for kind in ("markdown", "caption", "info", "warning", "success",
                                     "error") for e in getattr(at, kind)]
    assert not [v for v in rendered if "](http" in v], "a link or image would render"
    assert PIXEL in [t.value for t in at.text]  # the question itself, as plain text
    assert any("\\]\\(http\\://127" in v for v in rendered)  # the id, escaped in Markdown

"""Team commands of the CLI: accounts (`semievol users ...`), agreement between reviewers
(`semievol agreement`) and the app's server (`semievol serve`, single-user or team mode).

A password is read from a prompt (twice) or from `--password-file`, never from an argument:
an argument is visible to every user of the machine in the process list and stays in the
shell's history.
"""

from __future__ import annotations

import getpass
import ipaddress
import json
import os
import socket
import sys
from pathlib import Path

from semievol.cli.engine import open_workspace
from semievol.cli.terminal import printable
from semievol.errors import SemiEvolError
from semievol.team.accounts import (ROLES, add_user, has_accounts, list_users, remove_user,
                                    reset_password)
from semievol.team.agreement import workspace_agreement
from semievol.team.handout import adjudicate, conflicts, overlap_share, set_overlap_share
from semievol.workspace.items import resolve_item


def read_password(password_file: str | None) -> str:
    """The new password: the first line of `password_file` ('-' = standard input), else
    typed twice at a prompt; refused when neither is possible."""
    if password_file:
        text = sys.stdin.read() if password_file == "-" else Path(password_file).read_text()
        lines = text.splitlines()
        if not lines or not lines[0]:
            raise SemiEvolError(f"{password_file} holds no password on its first line.")
        return lines[0]
    if not sys.stdin.isatty():
        raise SemiEvolError("No terminal to type a password in: give --password-file FILE "
                            "(its first line), or --password-file - to read standard input.")
    first = getpass.getpass("Password: ")
    if getpass.getpass("Password again: ") != first:
        raise SemiEvolError("The two passwords differ; nothing was changed.")
    return first


def cmd_users_add(args) -> int:
    ws = open_workspace(args.workspace)
    password = None if args.sso else read_password(args.password_file)
    account = add_user(ws, args.name, args.role, password, sso=args.sso)
    how = "single sign-on" if args.sso else "a password"
    print(printable(f"Added {account.name} ({account.role}, signs in with {how})."))
    return 0


def cmd_users_list(args) -> int:
    users = list_users(open_workspace(args.workspace))
    if args.json:
        print(json.dumps(users, indent=2))
        return 0
    if not users:
        print("No accounts: `semievol users add WORKSPACE NAME --role lead` adds the first.")
        return 0
    for u in users:
        state = ["locked"] if u["locked"] else []
        if u["failures"]:
            state.append(f"{u['failures']} failed sign-in(s)")
        state.append(f"{u['sessions']} live session(s)")
        print(printable(f"{u['name']:<24} {u['role']:<9} {u['sign_in']:<9} "
                        + ", ".join(state)))
    return 0


def cmd_users_remove(args) -> int:
    remove_user(open_workspace(args.workspace), args.name)
    print(printable(f"Removed {args.name}; their sessions ended, their decisions stay."))
    return 0


def cmd_users_reset(args) -> int:
    ws = open_workspace(args.workspace)
    reset_password(ws, args.name, read_password(args.password_file))
    print(printable(f"New password set for {args.name}; their sessions ended and any lock "
                    "is lifted."))
    return 0


def _fmt(value, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def cmd_agreement(args) -> int:
    found = workspace_agreement(open_workspace(args.workspace))
    if args.json:
        print(json.dumps(found, indent=2))
        return 0
    between = found["reviewers"]
    if not found["pace"]:
        print("No decisions yet.")
        return 0
    print(f"Krippendorff's alpha over {len(between['reviewers'])} reviewer(s): "
          f"{_fmt(between['alpha'])} on {between['items']} item(s) rated by two or more")
    for p in between["pairs"]:
        print(printable(f"  kappa {p['a']} / {p['b']}: {_fmt(p['kappa'])} on {p['items']} "
                        f"item(s), {p['agreed']} agreed"))
    for c in between["classes"]:
        print(printable(f"  class {c['class']}: alpha {_fmt(c['alpha'])} on {c['items']} "
                        "item(s)"))
    print("Reviewers and collaborators (share agreeing on the items the reviewer labeled):")
    for r in found["collaborators"]:
        classes = ", ".join(f"{c['class']} {c['agreement']:.0%} of {c['items']}"
                            for c in r["classes"])
        print(printable(f"  {r['reviewer']} / collaborator {r['collaborator']}: "
                        f"{_fmt(r['agreement'])} on {r['items']} item(s), kappa "
                        f"{_fmt(r['kappa'])}" + (f" ({classes})" if classes else "")))
    print("Pace and accuracy:")
    for who, p in found["pace"].items():
        acc = found["accuracy"].get(who)
        known = (f"; {acc['correct']} of {acc['items']} right on items with a known answer"
                 if acc else "; no item with a known answer")
        print(printable(f"  {who}: {p['decisions']} decision(s), median "
                        f"{_fmt(p['median_seconds'], 1)} s, {_fmt(p['per_hour'], 0)} an "
                        f"hour{known}"))
    return 0


def cmd_overlap(args) -> int:
    ws = open_workspace(args.workspace)
    if args.share is not None:
        set_overlap_share(ws, args.share)
    print(f"Overlap: {overlap_share(ws):.0%} of the items go to two reviewers.")
    return 0


def cmd_conflicts(args) -> int:
    found = conflicts(open_workspace(args.workspace))
    if args.json:
        print(json.dumps(found, indent=2))
        return 0
    print(f"{len(found)} conflict(s) wait for a lead.")
    for c in found:
        votes = "; ".join(f"{d['reviewer']} {d['action']}"
                          + (f" {d['label']}" if d["action"] == "relabel" else "")
                          for d in c["decisions"])
        print(printable(f"  {c['external_id']} (pseudo-label {c['pseudo_label']}): {votes}"))
    return 0


def cmd_adjudicate(args) -> int:
    ws = open_workspace(args.workspace)
    item = resolve_item(ws, args.item)
    if item is None:
        raise SemiEvolError(f"No item {args.item!r} in this workspace.")
    adjudicate(ws, item, args.action, lead=args.lead, label=args.label, note=args.note)
    label = f" as {args.label}" if args.label else ""
    print(printable(f"Adjudicated {args.item}: {args.action}{label} by {args.lead}."))
    return 0


# -- the server -------------------------------------------------------------------------------
def is_loopback(host: str) -> bool:
    """Whether `host` is reachable from this machine only (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        try:
            return all(ipaddress.ip_address(a[4][0]).is_loopback
                       for a in socket.getaddrinfo(host, None))
        except OSError:
            return False


def app_script() -> Path:
    return Path(__file__).resolve().parents[2] / "app" / "Home.py"


def serve_command(workspace: str, *, team: bool, host: str, port: int) -> list[str]:
    """The `streamlit run` command line for the app on `workspace`, after the refusals:
    single-user mode on a non-loopback address (anyone reaching the port could decide,
    train and export), team mode with no account (nobody could sign in)."""
    ws = open_workspace(workspace)
    if not team and not is_loopback(host):
        raise SemiEvolError(f"Single-user mode has no sign-in, so it serves 127.0.0.1 only; "
                            f"{host} would let anyone who reaches the port decide, train and "
                            "export. Use --team (with accounts) to serve a team.")
    if team and not has_accounts(ws):
        raise SemiEvolError("Team mode needs accounts and this workspace has none: add a "
                            "lead first, `semievol users add WORKSPACE NAME --role lead`.")
    if not app_script().exists():
        raise SemiEvolError(f"The app is not beside the library ({app_script()}): run serve "
                            "from a clone of the project.")
    options = ["--server.headless", "true", "--server.address", host, "--server.port",
               str(port), "--browser.gatherUsageStats", "false"]
    script_args = ["--workspace", str(ws.path)]
    if team:  # Streamlit's page list would show before sign-in: the app draws its own after
        options += ["--client.showSidebarNavigation", "false", "--client.toolbarMode",
                    "minimal"]
        script_args.append("--team")
    command = [sys.executable, "-m", "streamlit", "run", str(app_script()), *options, "--",
               *script_args]
    return command


def cmd_serve(args) -> int:
    command = serve_command(args.workspace, team=args.team, host=args.host, port=args.port)
    mode = "team mode (sign-in required)" if args.team else "single-user mode"
    print(f"Serving {args.workspace} in {mode} on http://{args.host}:{args.port}", flush=True)
    os.execv(command[0], command)
    return 0  # not reached: the server replaces this process


def add_team_commands(sub) -> None:
    p = sub.add_parser("users", help="team mode's accounts: add, list, remove, reset-password")
    users = p.add_subparsers(dest="users_command", required=True, metavar="ACTION")
    # No abbreviations: `--password X` must not pass as `--password-file X`.
    q = users.add_parser("add", help="add an account", allow_abbrev=False)
    q.add_argument("workspace")
    q.add_argument("name", help="the name recorded with every decision (for --sso: the "
                                "e-mail address the identity provider gives)")
    q.add_argument("--role", required=True, choices=ROLES)
    q.add_argument("--password-file", metavar="FILE",
                   help="read the password from the first line of FILE ('-': standard "
                        "input) instead of a prompt")
    q.add_argument("--sso", action="store_true",
                   help="the account signs in through single sign-on (no password)")
    q.set_defaults(func=cmd_users_add)
    q = users.add_parser("list", help="every account, its role and whether it is locked")
    q.add_argument("workspace")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_users_list)
    q = users.add_parser("remove", help="remove an account (its decisions stay)")
    q.add_argument("workspace")
    q.add_argument("name")
    q.set_defaults(func=cmd_users_remove)
    q = users.add_parser("reset-password", help="set a new password (unlocks the account)",
                         allow_abbrev=False)
    q.add_argument("workspace")
    q.add_argument("name")
    q.add_argument("--password-file", metavar="FILE")
    q.set_defaults(func=cmd_users_reset)

    p = sub.add_parser("agreement", help="reviewers' agreement (kappa, alpha), with the "
                                         "collaborators, pace and accuracy")
    p.add_argument("workspace")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_agreement)

    p = sub.add_parser("overlap", help="show or set the share of items two reviewers review")
    p.add_argument("workspace")
    p.add_argument("share", nargs="?", type=float, help="a fraction from 0 to 1, e.g. 0.2")
    p.set_defaults(func=cmd_overlap)

    p = sub.add_parser("conflicts", help="items reviewers disagree on, waiting for a lead")
    p.add_argument("workspace")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_conflicts)

    p = sub.add_parser("adjudicate", help="a lead settles a conflict (in force over the "
                                          "reviewers' decisions)")
    p.add_argument("workspace")
    p.add_argument("item", help="the item's id from your file, or its number")
    p.add_argument("--action", required=True, choices=("accept", "reject", "relabel"))
    p.add_argument("--label", help="the label, for relabel")
    p.add_argument("--lead", required=True, help="the lead's account name")
    p.add_argument("--note")
    p.set_defaults(func=cmd_adjudicate)

    p = sub.add_parser("serve", help="start the app on a workspace (--team: with sign-in)")
    p.add_argument("workspace")
    p.add_argument("--team", action="store_true",
                   help="team mode: sign-in, roles, the workspace fixed by the server")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8501)
    p.set_defaults(func=cmd_serve)

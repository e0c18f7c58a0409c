"""What the Team page reads, once per render: the accounts, the overlap share, the review's
progress by the team, the conflicts waiting for a lead, and the agreement statistics.
`semievol agreement`, `semievol conflicts` and `semievol users list` print the same reads."""

from __future__ import annotations

from dataclasses import dataclass

from semievol.curation.decisions import DECISION_RULES, decision_rule
from semievol.team.accounts import list_users
from semievol.team.agreement import workspace_agreement
from semievol.team.handout import conflicts, overlap_share
from semievol.views.focus import focus_queue, team_progress
from semievol.views.status import round_rows
from semievol.workspace.store import Workspace


@dataclass
class TeamPage:
    users: list[dict]
    rule: str
    rule_text: str
    overlap: float
    progress: dict | None
    conflicts: list[dict]
    agreement: dict


def team_page(ws: Workspace) -> TeamPage:
    rounds = round_rows(ws)
    progress = None
    if rounds and rounds[0]["pseudo_labels"]:  # newest first: the round under review
        progress = team_progress(ws, focus_queue(ws, rounds[0]["id"], "least_confident"))
        progress["round"] = rounds[0]["number"]
    rule = decision_rule(ws)
    return TeamPage(users=list_users(ws), rule=rule, rule_text=DECISION_RULES[rule],
                    overlap=overlap_share(ws),
                    progress=progress, conflicts=conflicts(ws),
                    agreement=workspace_agreement(ws))

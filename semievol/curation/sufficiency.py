"""Whether the labeled examples can teach each class, said before any compute: a class with
a handful of labels is learnt from one or two examples (fewer still once the calibration
slice is held out), its pseudo-labels come out wrong, and a round is spent finding that out.

`short_classes` is the one rule: a class is short of labels when it has fewer than half of
an even share of the labeled set (and fewer than MIN_PER_CLASS); the message names it, its
labeled and test counts, and about how many more labels would bring it to that share. Import
and Round setup show it, the CLI prints it, and a round refuses to start on it until someone
confirms (recorded with the round). The calibration hold-out takes nothing from a short
class (curation.calibration.hold_out).
"""

from __future__ import annotations

import math

from semievol.workspace.store import Workspace

MIN_PER_CLASS = 8
"""A class with at least this many labels is never called short."""


def label_counts_by_class(ws: Workspace) -> tuple[dict[str, int], dict[str, int]]:
    """({class: labels in the labeled set and the calibration slice}, {class: test items})
    of a choice task with a label set; ({}, {}) otherwise."""
    task = ws.task
    if task is None or task.kind != "choice" or not task.labels:
        return {}, {}
    labeled = dict.fromkeys(task.labels, 0)
    test = dict.fromkeys(task.labels, 0)
    for split, answer, n in ws.query(
            "SELECT split, answer, COUNT(*) FROM items WHERE split IN ('labeled', "
            "'calibration', 'test') AND answer IS NOT NULL GROUP BY split, answer"):
        target = test if split == "test" else labeled
        if answer in target:
            target[answer] += n
    return labeled, test


def short_classes(labeled: dict[str, int], test: dict[str, int] | None = None) -> list[dict]:
    """The classes short of labels: [{label, labeled, test, add, message}], fewest first."""
    total = sum(labeled.values())
    if not labeled or not total:
        return []
    enough = min(MIN_PER_CLASS, math.ceil(total / len(labeled) / 2))
    out = []
    for label, have in sorted(labeled.items(), key=lambda kv: kv[1]):
        if have >= enough:
            continue
        add = enough - have
        in_test = (test or {}).get(label)
        where = f" (test has {in_test})" if in_test else ""
        out.append({"label": label, "labeled": have, "test": in_test, "add": add,
                    "message": f"{label}: {have} labeled example{'s' * (have != 1)}{where}: "
                               f"add about {add} before a round, or it is learnt from too "
                               "few to label the pool."})
    return out


def label_warnings(ws: Workspace) -> list[dict]:
    """The workspace's short classes (see `short_classes`)."""
    return short_classes(*label_counts_by_class(ws))


MIX_SHIFT = 0.2
"""A class whose share of the selected pseudo-labels departs from its share of the labeled
examples by this much (either way) is named before training."""


def class_mix_shift(labeled: dict[str, int], pseudo: dict[str, int]) -> list[dict]:
    """The classes whose share of the pseudo-labels (`pseudo`: class -> count) departs from
    their labeled share by MIX_SHIFT or more: [{label, pseudo_share, labeled_share}], the
    largest departure first. Pure: counts in, the departures out."""
    total_labeled, total_pseudo = sum(labeled.values()), sum(pseudo.values())
    if not total_labeled or not total_pseudo:
        return []
    out = []
    for label in dict.fromkeys([*labeled, *pseudo]):
        ours = pseudo.get(label, 0) / total_pseudo
        theirs = labeled.get(label, 0) / total_labeled
        if abs(ours - theirs) >= MIX_SHIFT:
            out.append({"label": label, "pseudo_share": ours, "labeled_share": theirs})
    return sorted(out, key=lambda c: -abs(c["pseudo_share"] - c["labeled_share"]))

"""Rounds: the stored round (record), the one step runner every caller goes through
(steps), which model answers for each part of a round (backends), how rounds compare
(scores) and the guards before training (guards).

Coordinates the parts below it: may import everything but semievol.runs, semievol.views,
semievol.export and semievol.cli.
"""

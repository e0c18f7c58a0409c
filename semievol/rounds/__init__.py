"""Rounds: the stored round (record), the one step runner every caller goes through
(steps), which model answers for each part of a round (backends), how rounds compare
(scores), the guards before training (guards) and the experiment trackers a round also
reports to (tracking: TensorBoard, MLflow).

Coordinates the parts below it: may import everything but semievol.runs, semievol.views,
semievol.export and semievol.cli.
"""

"""Curation: what a round trains on and how far to trust it. Human decisions (decisions),
the selection applied over stored scores (selection_state), the training set and its
freeze (training_set), the calibration slice (calibration), the audit sample (audit) and
the unlabeled pool a round labels (pool).

Reads and writes the workspace; runs no model. May import the foundation, semievol.task,
semievol.workspace, semievol.model, semievol.method and semievol.training.
"""

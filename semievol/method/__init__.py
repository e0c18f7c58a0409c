"""The method (SemiEvol's steps 2-6 as functions): retrieval of labeled neighbours, the
collaborators' answers, pseudo-labels by agreement and reflection with their eq. 6 entropy,
selection, evaluation; and the scoring they share.

`scoring` and `selection` are pure numpy (no torch, no database, no other part). The rest
may import the foundation, semievol.task, semievol.workspace and semievol.model.
"""

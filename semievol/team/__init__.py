"""Team: several people on one workspace. Accounts, sign-in and sessions (accounts), what
each role may do (roles), and how far reviewers agree with each other and with the
collaborators (agreement).

Reads and writes the workspace; runs no model. May import the foundation, semievol.task,
semievol.workspace and semievol.curation.
"""

"""The workspace: the folder and its SQLite database (semievol.workspace.store), the items as
the engine reads them (items), task files read row by row (readers) and imported into a
split all-or-nothing (imports).

Knows nothing of models: may import the foundation and semievol.task only.
"""

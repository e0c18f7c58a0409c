"""Views: what the app's pages and the CLI read, one read model per page where a page reads
several things (workflow: where the workspace stands and the next action; status; review;
focus; lineage; the Workspace, Selection, Train and Rounds pages' models).

Pure reading: no model runs and nothing is written. May import everything but
semievol.export and semievol.cli.
"""

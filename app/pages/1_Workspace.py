"""Workspace and data: statistics, a paginated preview, import with validation, indexing."""

import streamlit as st
from common import page_setup, show_round_state
from workspace_view import show_import, show_index, show_preview, show_statistics

ws = page_setup("Workspace and data")
show_round_state(ws, here="workspace")
# Keyed and tracked, so the chosen tab survives the rerun after an upload or an import.
stats, browse, upload, index = st.tabs(
    ["Statistics", "Browse items", "Import a file", "Neighbours"], key="workspace_tab",
    on_change="rerun")
with stats:
    show_statistics(ws)
with browse:
    show_preview(ws)
with upload:
    show_import(ws)
with index:
    show_index(ws)

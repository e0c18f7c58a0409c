"""Workspace and data: statistics, a paginated preview, import with validation, indexing."""

import streamlit as st

from common import page_setup
from workspace_view import show_import, show_index, show_preview, show_statistics

ws = page_setup("Workspace and data")
stats, browse, upload, index = st.tabs(
    ["Statistics", "Browse items", "Import a file", "Neighbours"])
with stats:
    show_statistics(ws)
with browse:
    show_preview(ws)
with upload:
    show_import(ws)
with index:
    show_index(ws)

"""Export: a round's curated dataset (JSONL, CSV), adapter and merged model."""

from common import page_setup, show_round_state
from export_view import show_export

ws = page_setup("Export", icon=":material/download:")
show_round_state(ws, here="export")
show_export(ws)

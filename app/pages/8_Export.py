"""Export: a round's curated dataset (JSONL, CSV), adapter and merged model."""

from common import page_setup
from export_view import show_export

ws = page_setup("Export", icon=":material/download:")
show_export(ws)

"""Runs: every background and foreground run, with live progress, loss, log, cancel, resume."""

from common import page_setup, show_round_state
from runs_view import show_runs

ws = page_setup("Runs", icon=":material/monitoring:")
show_round_state(ws, here="runs")
show_runs(ws)

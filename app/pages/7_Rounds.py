"""Rounds: accuracy, pseudo-label volume and estimated precision per round, side by side,
and the lineage of one item."""

import streamlit as st
from common import page_setup, show_round_state
from rounds_view import show_lineage, show_rounds

ws = page_setup("Rounds", icon=":material/timeline:")
show_round_state(ws, here="rounds")
show_rounds(ws)
st.subheader("Item lineage")
show_lineage(ws)

"""SemiEvol Studio, the entry point: `streamlit run app/Home.py -- --workspace FOLDER`.

Pages in app/pages/ are discovered by Streamlit; each starts with `page_setup()`.
"""

import streamlit as st
from common import page_setup, show_round_state
from workspace_view import show_overview

ws = page_setup("SemiEvol Studio")
state = show_round_state(ws, here="home")
st.markdown(
    "Adapt a small language model to your task from **a few labeled examples and many "
    "unlabeled ones** (SemiEvol, Luo et al. 2024). Each round fine-tunes a warm-up adapter on "
    "the labeled set, retrieves labeled neighbours as demonstrations for every unlabeled "
    "item, lets several collaborators answer, keeps the confident pseudo-labels, and trains "
    "on them. You review the pseudo-labels before anything is trained: every decision is "
    "saved to the workspace at once.")
st.header("Workspace")
show_overview(ws, state)

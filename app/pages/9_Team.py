"""Team: agreement between reviewers and with the collaborators, each reviewer's pace and
accuracy; in team mode, the overlap share and the conflicts a lead adjudicates."""

import streamlit as st
from common import page_setup, team_mode, user_errors
from team_view import show_agreement, show_conflicts, show_overlap

from semievol.views.team import team_page

ws = page_setup("Team and agreement", icon=":material/groups:")
with user_errors():
    page = team_page(ws)
    if team_mode():
        show_overlap(ws, page)
        show_conflicts(ws, page)
    else:
        st.caption("Single-user mode: decisions carry the name typed in the sidebar. Team mode "
                   "(`semievol serve WORKSPACE --team`) adds sign-in, overlap and "
                   "adjudication.")
    show_agreement(page)

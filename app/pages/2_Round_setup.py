"""Round setup: the round config (model, LoRA, training, k, collaborators, selection) and
launch buttons for the whole round or one step."""

from common import page_setup
from setup_view import show_setup

ws = page_setup("Round setup", icon=":material/settings:")
show_setup(ws)

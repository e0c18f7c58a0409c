"""Selection: preview a policy and threshold over the stored entropies, with calibration
evidence, the leakage guard and the audit queue; apply it for training."""

from common import page_setup
from selection_view import show_selection

ws = page_setup("Selection", icon=":material/tune:")
show_selection(ws)

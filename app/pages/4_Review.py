"""Review: every unlabeled item of a round with its pseudo-label; decide on one item or on
everything the filters show. Every decision is saved at once, with the reviewer's name."""

from common import page_setup, user_errors
from review_view import show_review

ws = page_setup("Review")
with user_errors():
    show_review(ws)

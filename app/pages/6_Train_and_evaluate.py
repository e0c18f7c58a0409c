"""Train and evaluate: train the latest round on the curated set, evaluate it against base and
warm-up, inspect per-class results and the confusion matrix, start the next round."""

from common import page_setup
from train_view import show_train_and_evaluate

ws = page_setup("Train and evaluate", icon=":material/model_training:")
show_train_and_evaluate(ws)

"""Option log-probabilities from a GGUF file by llama.cpp, for tests/test_architectures.py.

Run with the llama.cpp environment's Python (`.venv-llama`, as the served tests use it):
reads {"gguf": PATH, "sequences": [[prompt_ids, continuation_ids], ...]} as JSON on stdin
and writes, for each sequence, the continuation's summed log-probability given the prompt;
or, given {"gguf": PATH, "texts": [...]}, how llama.cpp tokenizes each text (special tokens
parsed, no BOS added).
In-process through llama-cpp-python's bindings rather than its HTTP server: the server's
echo computes every position's log-probabilities in Python (about 2 s a request here), and
the served path has its own tests (test_served.py).
"""

import json
import sys

import numpy as np
from llama_cpp import Llama


def log_softmax(row: np.ndarray) -> np.ndarray:
    shifted = row - row.max()
    return shifted - np.log(np.exp(shifted).sum())


def main() -> None:
    request = json.load(sys.stdin)
    if "texts" in request:
        vocabulary = Llama(request["gguf"], vocab_only=True, verbose=False)
        json.dump([vocabulary.tokenize(t.encode("utf-8"), add_bos=False, special=True)
                   for t in request["texts"]], sys.stdout)
        return
    model = Llama(request["gguf"], logits_all=True, n_ctx=512, n_threads=2, verbose=False)
    totals = []
    for prompt, continuation in request["sequences"]:
        model.reset()
        model.eval(prompt + continuation)
        logits = np.asarray(model.scores[:len(prompt) + len(continuation)], dtype=np.float64)
        # Token j of the continuation is predicted at the position just before it.
        totals.append(float(sum(log_softmax(logits[len(prompt) + j - 1])[token]
                                for j, token in enumerate(continuation))))
    json.dump(totals, sys.stdout)


if __name__ == "__main__":
    main()

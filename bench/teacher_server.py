"""A simulated stronger collaborator: an OpenAI-compatible server on 127.0.0.1 that knows each
item's true answer and gives it with probability `accuracy`, else a wrong option, with
calibrated log-probabilities. It stands for a user's larger served or hosted model, so the
quality bench can measure what selection, review and training do when one collaborator
knows more than the student (`bench/quality.py --teacher-accuracy 0.9`).

Per item (a seeded draw from the question's text, so every request for it agrees):
- a confidence c ~ Beta(accuracy x 10, (1 - accuracy) x 10), kept within
  [1/K + 0.05, 0.99] for K options, so the picked option is always the most likely;
- the picked option is the true one with probability c, else one of the wrong options
  (uniformly: the simulation has no notion of which confusion is plausible);
- the distribution gives c to the picked option and (1 - c) / (K - 1) to each other one.
So among items where it says c it is right a share c of the time (calibrated), and it is
right on about `accuracy` of the items overall (`answer_of` gives the realised draw).

It answers the requests semievol.model.served makes in `echo` mode with token-id prompts:
`/v1/models`, and `/v1/completions` with `echo` and `logprobs` (the prompt as token ids or
text, decoded with the local model's tokenizer). The question is found in the decoded prompt
(the longest known question it contains); the option scored is the one the prompt ends with
(the option's words, or its letter in the options' order). The option's log-probability sits
on the last prompt token and every other echoed token gets 0, so the client's sum over the
continuation's tokens is exactly log p(option). Prompt log-probabilities and chat are not
served (the probe then settles on echo).
"""

from __future__ import annotations

import hashlib
import http.server
import json
import math
import threading

import numpy as np

CONCENTRATION = 10.0
"""Beta concentration of the per-item confidence: higher = every item near `accuracy`."""
SERVED_NAME = "teacher"


class TeacherServer:
    def __init__(self, items: dict[str, tuple[list[str], str]], tokenizer, *,
                 accuracy: float, seed: int = 0):
        """`items`: {question text: (its options in order, the true option)}."""
        if not 0 < accuracy <= 1:
            raise ValueError(f"the teacher's accuracy is a share in (0, 1], got {accuracy}")
        self.items, self.tokenizer = items, tokenizer
        self.accuracy, self.seed = accuracy, seed
        # Longest first: a question that contains another one is matched as itself.
        self._questions = sorted(items, key=len, reverse=True)
        self._answers: dict[str, tuple[str, np.ndarray]] = {}
        self.requests = 0
        teacher = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _send(self, status: int, payload: dict) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                if self.path.rstrip("/").endswith("/v1/models"):
                    self._send(200, {"object": "list", "data": [{"id": SERVED_NAME}]})
                else:
                    self._send(404, {"error": {"message": f"no route {self.path}"}})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                if not self.path.rstrip("/").endswith("/v1/completions"):
                    self._send(404, {"error": {"message": f"no route {self.path}"}})
                    return
                if not body.get("echo") or body.get("prompt_logprobs") is not None:
                    self._send(400, {"error": {"message": "only echo with logprobs is "
                                                          "served"}})
                    return
                teacher.requests += 1
                self._send(200, teacher.echo(body["prompt"]))

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    # -- the simulated model -------------------------------------------------------------
    def answer_of(self, question: str) -> tuple[str, np.ndarray]:
        """(the option it picks, its probability for each option) for a known question."""
        if question not in self._answers:
            options, truth = self.items[question]
            digest = hashlib.sha256(f"{self.seed}|{question}".encode()).digest()
            rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
            k = len(options)
            low = 1.0 / k + 0.05
            a = max(self.accuracy, 1e-6)
            c = float(np.clip(rng.beta(a * CONCENTRATION, max(1 - a, 1e-6) * CONCENTRATION),
                              low, 0.99)) if k > 1 else 1.0
            wrong = [o for o in options if o != truth]
            picked = truth if (not wrong or rng.random() < c) else wrong[rng.integers(len(wrong))]
            probs = np.full(k, (1 - c) / max(k - 1, 1))
            probs[options.index(picked)] = c
            self._answers[question] = (picked, probs)
        return self._answers[question]

    def _scored(self, text: str) -> float:
        """log p of the option the prompt ends with; 0 when the prompt is not an item's."""
        question = next((q for q in self._questions if q in text), None)
        if question is None:
            return 0.0
        options, _ = self.items[question]
        _, probs = self.answer_of(question)
        tail = text.rstrip()
        for k in sorted(range(len(options)), key=lambda j: -len(options[j])):
            if tail.endswith(options[k]):
                return math.log(probs[k])
        letter = tail[-1:]
        if tail[-2:-1].isspace() and letter.isalpha() and letter.isupper():
            k = ord(letter) - ord("A")
            if k < len(options):
                return math.log(probs[k])
        return 0.0

    def echo(self, prompt) -> dict:
        ids = prompt if isinstance(prompt, list) else \
            self.tokenizer(str(prompt), add_special_tokens=False)["input_ids"]
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        values = [None] + [0.0] * max(len(ids) - 1, 0)
        if len(ids) > 1:
            values[-1] = self._scored(text)
        pieces = [self.tokenizer.decode([t]) for t in ids]
        return {"id": "teacher", "object": "text_completion", "model": SERVED_NAME,
                "choices": [{"index": 0, "text": "", "finish_reason": "length",
                             "logprobs": {"tokens": pieces + [""],
                                          "token_logprobs": values + [0.0]}}]}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def teacher_config(url: str):
    """(the collaborator, the server) a round config adds for the teacher: the base model's
    name on the teacher's server, no demonstrations (it needs none), argmax answers."""
    from semievol.config import CollaboratorConfig, ServerConfig

    server = ServerConfig(name=SERVED_NAME, base_url=url, model=SERVED_NAME, mode="echo",
                          concurrency=8, retries=1, timeout=30.0)
    return CollaboratorConfig("base", 0, 0.0, 7, server=SERVED_NAME), server

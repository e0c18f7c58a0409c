"""The model behind collaborators, reflection, entropy and evaluation, as the engine calls it.

`Backend` is the protocol every engine module is typed against. Its implementations: a
model in this process (semievol.model.local) and a model on an OpenAI-compatible server
(semievol.model.served). `DeferredBackend` makes either on the first call that needs it.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol

import numpy as np

Progress = Callable[[int, int, str], None]


class Backend(Protocol):
    """A model that scores continuations and generates, as the engine needs it."""

    name: str
    """What its outputs depend on (model, adapter version, dtype or server): part of every
    cache key, so answers from different models never mix."""
    tokenizer: Any
    """The model's tokenizer: its chat template renders every prompt, and it counts tokens
    for the context budget."""

    @property
    def calls(self) -> int:
        """Model calls made so far (forward passes, or requests to a server): a re-run with
        everything cached shows 0."""

    def score_continuations(self, prompts: list[str], continuations: list[list[str]], *,
                            progress: Progress | None = None) -> list[list[np.ndarray]]:
        """Token log-probabilities of each continuation after its prompt: result[i][j] is
        one float per token of continuations[i][j]."""

    def option_distributions(self, prompts: list[str], options: list[list[str]], *,
                             progress: Progress | None = None) -> list[np.ndarray]:
        """A normalised probability over each prompt's options."""

    def generate(self, prompts: list[str], *, temperature: float = 0.0, seed: int = 0,
                 max_new_tokens: int = 32, progress: Progress | None = None
                 ) -> list[tuple[str, list[float]]]:
        """(text, per-token log-probabilities) per prompt."""


def backend_key(role: str, server: str = "") -> str:
    """Which backend answers: `role` (base, warmup, final) in this process, or
    `role@server` on a configured server (semievol.rounds.backends builds them)."""
    return f"{role}@{server}" if server else role


def normalised(per_option: list[np.ndarray]) -> np.ndarray:
    """The option distribution from each option's token log-probabilities (their sum is the
    option's log-likelihood), softmax-normalised over the options."""
    total = np.array([s.sum() for s in per_option])
    total = np.exp(total - total.max())
    return total / total.sum()








class DeferredBackend:
    """A backend made on the first call that needs it (subclasses say how in `_make`), so
    a step whose answers are all cached builds its prompts and touches no model."""

    _backend = None

    def _make(self):
        raise NotImplementedError

    def _made(self):
        if self._backend is None:
            self._backend = self._make()
        return self._backend

    @property
    def calls(self) -> int:
        return self._backend.calls if self._backend else 0

    def score_continuations(self, *args, **kwargs):
        return self._made().score_continuations(*args, **kwargs)

    def option_distributions(self, *args, **kwargs):
        return self._made().option_distributions(*args, **kwargs)

    def generate(self, *args, **kwargs):
        return self._made().generate(*args, **kwargs)

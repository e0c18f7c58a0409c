"""One context budget for every prompt: training, the collaborators, reflection, the eq. 6
entropy and evaluation build their prompts here, within the same number of tokens.

The rule, in order: the chat template, the instruction and the answer cue are never cut,
and room is kept for the answer (the longest option, the training target, or the tokens to
generate); an item longer than what remains is cut in the middle, keeping its beginning and
its end (a question often sits at the end) around a visible marker; then as many
demonstrations as still fit are added, nearest first (the least similar are dropped whole,
never cut). What was cut or dropped is counted, so a step can say so.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from semievol.config import TaskConfig
from semievol.model.loading import resolve_model_path
from semievol.task.formats import (Example, answer_target, build_messages, end_of_turn,
                                   option_targets, reflection_messages, render_prompt)

DEFAULT_BUDGET_CAP = 1024
"""The budget when none is set: the model's context window, capped here (compute: a step
over 1,024-token sequences on a CPU already takes tens of seconds)."""
MIN_ITEM_TOKENS = 32
"""An item is never cut below this many tokens (beginning and end together)."""
MARKER = "\n[... {n} tokens cut here to fit the context budget ...]\n"


def context_window(model_path: str | Path) -> int | None:
    """The model's own context window (config.json: max_position_embeddings), if stated."""
    try:
        config = json.loads((Path(model_path) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    window = config.get("max_position_embeddings")
    return int(window) if isinstance(window, int) and window > 0 else None


def resolve_budget(model_config) -> int:
    """The round's context budget in tokens: the configured one, else the model's window
    capped at DEFAULT_BUDGET_CAP."""
    if model_config.context_budget:
        return model_config.context_budget

    window = context_window(resolve_model_path(model_config.name_or_path))
    return min(window or DEFAULT_BUDGET_CAP, DEFAULT_BUDGET_CAP)


class PromptText(str):
    """A rendered prompt that keeps the messages it was rendered from: a chat-only server
    (semievol.model.served, chat mode) is sent those, everything else the text."""

    def __new__(cls, text: str, messages: list[dict] | None = None):
        rendered = super().__new__(cls, text)
        rendered.messages = messages or []
        return rendered

    def __reduce__(self):  # copies and pickles keep the messages (dataclasses.asdict copies)
        return PromptText, (str(self), self.messages)


@dataclass
class Prompt:
    text: str           # the chat-templated prompt (a PromptText), ending where the answer starts
    tokens: int         # its length in tokens
    demos_shown: int    # demonstrations that fit
    demos_asked: int    # demonstrations the caller wanted
    cut_tokens: int     # tokens removed from the middle of the item (0: it is whole)


@dataclass
class PromptStats:
    """What the budget did to the prompts of one step."""
    prompts: int = 0
    cut: int = 0                # prompts whose item was cut
    cut_tokens: int = 0         # tokens removed, over all of them
    short_of_demos: int = 0     # prompts that lost one or more demonstrations
    demos_dropped: int = 0
    over_budget: int = 0        # prompts longer than the budget even so (a huge template)
    longest: int = 0

    def add(self, prompt: Prompt, budget: int) -> None:
        self.prompts += 1
        self.cut += prompt.cut_tokens > 0
        self.cut_tokens += prompt.cut_tokens
        dropped = prompt.demos_asked - prompt.demos_shown
        self.short_of_demos += dropped > 0
        self.demos_dropped += dropped
        self.over_budget += prompt.tokens > budget
        self.longest = max(self.longest, prompt.tokens)

    def merge(self, other: "PromptStats") -> "PromptStats":
        """Add another step's (or tokenizer's) counts to these."""
        for key, value in other.__dict__.items():
            current = getattr(self, key)
            setattr(self, key, max(current, value) if key == "longest" else current + value)
        return self

    def summary(self) -> dict:
        return dict(self.__dict__)

    def line(self) -> str:
        """E.g. "120 prompts; 14 cut (3,205 tokens), 30 lost 41 demonstrations"."""
        if not self.prompts:
            return "no prompts"
        parts = [f"{self.prompts} prompt(s) within the budget"]
        if self.cut:
            parts.append(f"{self.cut} with the item cut ({self.cut_tokens:,} tokens in all)")
        if self.short_of_demos:
            parts.append(f"{self.short_of_demos} with fewer demonstrations "
                         f"({self.demos_dropped} dropped)")
        return "; ".join(parts)


@dataclass
class PromptBuilder:
    """Builds a task's prompts for one tokenizer within one budget, and counts what it cut."""
    task: TaskConfig
    tokenizer: object
    budget: int
    stats: PromptStats = field(default_factory=PromptStats)
    _reserves: dict = field(default_factory=dict, repr=False)

    def _render(self, messages: list[dict]) -> PromptText:
        return PromptText(render_prompt(self.tokenizer, messages), messages)

    def count(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _fit(self, question: str, make, demos: int, reserve: int) -> Prompt:
        """`make(question, k)` -> messages with k demonstrations."""
        limit = self.budget - reserve
        text = self._render(make(question, demos))
        tokens = self.count(text)
        if tokens <= limit:
            prompt = Prompt(text, tokens, demos, demos, 0)
            self.stats.add(prompt, self.budget)
            return prompt
        text = self._render(make(question, 0))
        tokens, cut = self.count(text), 0
        if tokens > limit:
            question, cut = self._cut(question, tokens - limit)
            text = self._render(make(question, 0))
            tokens = self.count(text)
        shown = 0
        for k in range(demos, 0, -1):  # the least similar demonstrations go first
            candidate = self._render(make(question, k))
            length = self.count(candidate)
            if length <= limit:
                text, tokens, shown = candidate, length, k
                break
        prompt = Prompt(text, tokens, shown, demos, cut)
        self.stats.add(prompt, self.budget)
        return prompt

    def _cut(self, question: str, over: int) -> tuple[str, int]:
        """The question with `over` tokens (and the marker's own) removed from its middle."""
        ids = self.tokenizer(question, add_special_tokens=False)["input_ids"]
        marker = self.count(MARKER.format(n=len(ids)))
        keep = max(MIN_ITEM_TOKENS, len(ids) - over - marker - 2)  # 2: merges at the seams
        if keep >= len(ids):
            return question, 0
        head = keep // 2
        tail = keep - head
        removed = len(ids) - keep
        text = (self.tokenizer.decode(ids[:head]) + MARKER.format(n=removed)
                + self.tokenizer.decode(ids[len(ids) - tail:]))
        return text, removed

    # -- the prompts of each step ---------------------------------------------------------
    def choice_reserve(self, options: list[str] | None) -> int:
        """Room for the longest option's target."""
        if not options:
            return 0
        key = tuple(options)
        if key not in self._reserves:
            self._reserves[key] = max(self.count(t) for t in
                                      option_targets(self.task, options, self.tokenizer))
        return self._reserves[key]

    def item(self, example: Example, demonstrations: list[Example] = (), *,
             reserve: int | None = None) -> Prompt:
        """A question with up to len(demonstrations) demonstrations (collaborators,
        evaluation, the eq. 6 entropy with none)."""
        reserve = self.choice_reserve(example.options) if reserve is None else reserve

        def make(question, k):
            return build_messages(self.task, Example(question, example.options),
                                  list(demonstrations)[:k])
        return self._fit(example.question, make, len(demonstrations), reserve)

    def reflection(self, example: Example, answers: list, *, reserve: int | None = None
                   ) -> Prompt:
        """The self-justification prompt (every collaborator's answer listed)."""
        reserve = self.choice_reserve(example.options) if reserve is None else reserve

        def make(question, k):
            return reflection_messages(self.task, Example(question, example.options), answers)
        return self._fit(example.question, make, 0, reserve)

    def training_response(self, example: Example, response: str) -> tuple[Prompt, str]:
        """The plain prompt and a whole response as the target (an open task that trains on
        reasoning), closed by the end-of-turn token."""
        target = response.strip() + end_of_turn(self.tokenizer)
        return self.item(Example(example.question, example.options),
                         reserve=self.count(target)), target

    def training(self, example: Example, answer: str) -> tuple[Prompt, str]:
        """The training prompt (the plain prompt, as eq. 6 scores it) and its target."""
        target = answer_target(self.task, answer, example.options, self.tokenizer)
        return self.item(Example(example.question, example.options),
                         reserve=self.count(target)), target


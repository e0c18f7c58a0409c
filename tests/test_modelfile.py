"""The exported model works as shipped: the Modelfile's SYSTEM prompt and TEMPLATE give the
prompt the round trained on, and the GGUF asked that way answers like the merged model.

- Unit: filling the Modelfile's template with its SYSTEM prompt and an item's bare text is
  exactly the app's prompt for that item (label tasks, per-item options, letters).
- Served: the demo task, a short real round on the bundled model, `export --what gguf`
  (float32), then llama.cpp asked with only the Modelfile's SYSTEM prompt and the bare item
  text: the same label answers as the merged model in transformers, greedy both ways.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import FakeEmbedder
from server_support import json_post, llama_server, require_llama

from semievol.config import TaskConfig
from semievol.export.modelfile import fill, modelfile, user_text
from semievol.task.formats import Example

ROOT = Path(__file__).resolve().parents[1]


def parse_modelfile(text: str) -> dict:
    """SYSTEM and TEMPLATE (triple-quoted) and the stop parameters of a Modelfile."""
    found = {k: re.search(rf'^{k} """(.*?)"""$', text, re.S | re.M).group(1)
             for k in ("SYSTEM", "TEMPLATE")}
    found["SYSTEM"] = found["SYSTEM"].replace('\\"\\"\\"', '"""')
    found["stop"] = re.findall(r'^PARAMETER stop "(.*)"$', text, re.M)
    return found


TASKS = {
    "labels": (TaskConfig(kind="choice", labels=["billing", "outage"], answer_format="words",
                          instruction='Route the message. Say """billing""" for money.'),
               "My bill doubled", None),
    "options": (TaskConfig(kind="choice", answer_format="words", instruction="Pick one."),
                "Which is a fruit?", ["apple", "chair"]),
    "letters": (TaskConfig(kind="choice", answer_format="letter", instruction="Choose."),
                "Which is a fruit?", ["apple", "chair"]),
}


@pytest.mark.parametrize("name", TASKS)
def test_the_modelfile_prompt_is_the_apps_prompt(name, tiny_model_dir):
    from transformers import AutoTokenizer

    from semievol.model.prompts import PromptBuilder

    task, question, options = TASKS[name]
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    parsed = parse_modelfile(modelfile("model.gguf", tokenizer, task))
    sent = user_text(task, question, options)  # the item's text (+ its own options)
    if task.labels:
        assert sent == question  # a label task's user sends the bare text
    app = PromptBuilder(task, tokenizer, 512).item(
        Example(question, options or task.labels)).text
    assert fill(parsed["TEMPLATE"], parsed["SYSTEM"], sent) == app
    assert parsed["stop"] == ["<|im_end|>"]


@pytest.fixture(scope="module")
def demo_export(tmp_path_factory):
    """The demo task on the bundled model: a short round (warm-up, labels for a few
    unlabeled items, training), exported as a float32 GGUF folder."""
    from test_engine_cli import semievol

    from semievol.cli.demo import create_demo_workspace
    from semievol.rounds.record import base_config, get_round, open_round
    from semievol.rounds.steps import run_steps
    from semievol.saved_config import round_config_from_dict, to_dict
    from semievol.workspace.store import Workspace

    require_llama()
    folder = tmp_path_factory.mktemp("modelfile")
    create_demo_workspace(folder / "demo", ROOT / "data" / "demo", embedder=FakeEmbedder())
    with Workspace(folder / "demo") as ws:
        config = to_dict(base_config(ws))
        config["model"]["dtype"] = "float32"
        # Short: what is tested is the export, not what the round learns.
        config["train"].update({"max_steps": 6, "min_steps": 0, "batch_size": 4})
        config.update(unlabeled_limit=4, collaborators=config["collaborators"][:2],
                      calibration={"fraction": 0.1})
        open_round(ws, round_config_from_dict(config))
        run_steps(ws, 1, ["warmup", "label", "select", "train"], confirm="test",
                  embedder=FakeEmbedder())
        rnd, task = get_round(ws, 1), ws.require_task()
        questions = [r[0] for r in ws.query(
            "SELECT question FROM items WHERE split='test' ORDER BY id LIMIT 12")]
    out = semievol("export", folder / "demo", "--what", "gguf", "--gguf-type", "f32",
                   "--out", folder / "out").stdout
    gguf = Path(re.search(r"in (\S+)$", out.strip().splitlines()[-1]).group(1))
    return {"folder": gguf, "round": rnd, "questions": questions, "task": task}


def test_the_gguf_asked_as_the_modelfile_says_answers_like_the_merged_model(demo_export,
                                                                           tmp_path):
    from semievol.model.local import LazyBackend
    from semievol.task.answers import extract_answer

    task, questions = demo_export["task"], demo_export["questions"]
    parsed = parse_modelfile((demo_export["folder"] / "Modelfile").read_text())
    card = (demo_export["folder"] / "README.md").read_text()
    assert "base_model: HuggingFaceTB/SmolLM2-135M-Instruct" in card
    from huggingface_hub import ModelCard  # the Hub's own parser reads the YAML header

    parsed_card = ModelCard.load(demo_export["folder"] / "README.md")
    assert parsed_card.data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert (parsed_card.data.license, parsed_card.data.library_name) == ("apache-2.0", "gguf")
    assert parsed_card.data.datasets == ["demo"]
    assert parsed["SYSTEM"] in card  # the card shows the exact system message
    assert task.instruction in parsed["SYSTEM"]
    prompts = [fill(parsed["TEMPLATE"], parsed["SYSTEM"], q) for q in questions]

    rnd = demo_export["round"]
    merged = LazyBackend(rnd.config.model, rnd.final_adapter)
    local = [text for text, _ in merged.generate(prompts, max_new_tokens=8)]
    with llama_server(demo_export["folder"] / "model.gguf", log=tmp_path / "server.log") as url:
        served = [json_post(f"{url}/completions", {
            "prompt": p, "max_tokens": 8, "temperature": 0, "stop": parsed["stop"]}
        )["choices"][0]["text"].strip() for p in prompts]

    def label(text):
        return extract_answer(task, text)

    assert [label(t) for t in served] == [label(t) for t in local], \
        json.dumps({"served": served, "local": local}, indent=1)
    answered = [label(t) for t in served if label(t) is not None]
    assert len(answered) >= len(questions) // 2, served  # label answers, not chatter

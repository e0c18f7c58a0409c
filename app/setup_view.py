"""The Round setup page: the round config as a form, the collaborator table, launch buttons,
and what the current round has done so far.

What the page shows is read once per render (semievol.views.setup.setup_page); the form
starts from the config the next launch would use (the latest round's, else the workspace's
recommended one). Plain functions first (`collaborator_frame`, `config_from_form`; tested
directly), then `show_*` functions that render them. Launching goes through
`semievol.runs.launch.start`, the same path as `semievol <step> --background`.
"""

from __future__ import annotations

import math

import pandas as pd
import streamlit as st
from common import RUNS_PAGE, launch_with_feedback, literal, reviewer_name, show_error

from semievol.config import (ADAPTER_LOADING, CLASS_BALANCE, COLLABORATOR_MODELS, DTYPES,
                             REFLECTION_MODELS, REPORT_TO, SELECTION_POLICIES,
                             SELECTION_SCORES, SELECTION_WEIGHTINGS, SERVER_MODES, START_FROM,
                             RoundConfig, ServedConfig, ServerConfig, field_docs, takes_theta)
from semievol.errors import SemiEvolError
from semievol.rounds.backends import probe_servers
from semievol.runs import launch
from semievol.runs.estimate import workspace_state
from semievol.saved_config import overridden, to_dict, to_json
from semievol.views.setup import SetupPage, model_note, setup_page
from semievol.workspace.store import Workspace

COLLABORATOR_COLUMNS = ["model", "demonstrations", "temperature", "seed", "server"]
SERVER_COLUMNS = ["name", "base_url", "model", "warmup_model", "adapter_loading",
                  "api_key_env", "mode", "concurrency"]


def collaborator_frame(config: RoundConfig) -> pd.DataFrame:
    return pd.DataFrame([{"model": c.model, "demonstrations": c.demonstrations,
                          "temperature": c.temperature, "seed": c.seed, "server": c.server}
                         for c in config.collaborators], columns=COLLABORATOR_COLUMNS)


def server_frame(config: RoundConfig) -> pd.DataFrame:
    return pd.DataFrame([{k: getattr(s, k) for k in SERVER_COLUMNS} for s in config.servers],
                        columns=SERVER_COLUMNS)


def servers_from_frame(frame: pd.DataFrame, base: RoundConfig) -> list[dict]:
    """The server editor's rows as server dicts (timeout and retries kept from the config);
    a row without a name or URL is an error."""
    kept = {s.name: s for s in base.servers}
    out, problems = [], []
    for n, row in enumerate(frame.to_dict("records"), start=1):
        if _missing(row.get("name")) or _missing(row.get("base_url")):
            problems.append(f"server row {n}: fill in name and base_url")
            continue
        values = {k: ("" if _missing(row.get(k)) else row[k]) for k in SERVER_COLUMNS}
        values["concurrency"] = int(values["concurrency"] or 4)
        values["adapter_loading"] = values["adapter_loading"] or "none"
        values["mode"] = values["mode"] or "auto"
        old = kept.get(values["name"])
        out.append({**to_dict(old or ServerConfig(name=str(values["name"]))), **values})
    if problems:
        raise SemiEvolError("The server table is incomplete.", problems=problems)
    return out


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA


def collaborators_from_frame(frame: pd.DataFrame) -> list[dict]:
    """The editor's rows as collaborator dicts; a row with an empty cell is an error."""
    out, problems = [], []
    for n, row in enumerate(frame.to_dict("records"), start=1):
        empty = [c for c in COLLABORATOR_COLUMNS[:4] if _missing(row.get(c))]
        if empty:
            problems.append(f"collaborator row {n}: fill in {', '.join(empty)}")
            continue
        try:
            out.append({"model": str(row["model"]), "demonstrations": int(row["demonstrations"]),
                        "temperature": float(row["temperature"]), "seed": int(row["seed"]),
                        "server": "" if _missing(row.get("server")) else str(row["server"])})
        except (TypeError, ValueError) as exc:
            problems.append(f"collaborator row {n}: {exc}")
    if problems:
        raise SemiEvolError("The collaborator table is incomplete.", problems=problems)
    if not out:
        raise SemiEvolError("A round needs at least one collaborator: add a row to the table.")
    return out


def config_from_form(base: RoundConfig, fields: dict, collaborators: pd.DataFrame,
                     servers: pd.DataFrame | None = None) -> RoundConfig:
    """`base` with the form's values: `fields` maps "section.key" (or a top-level key) to a
    value. Raises SemiEvolError (from the config's own validation) when it is not valid."""
    changes = {**fields, "collaborators": collaborators_from_frame(collaborators)}
    if servers is not None:
        changes["servers"] = servers_from_frame(servers, base)
    return overridden(base, changes)


def config_yaml(config: RoundConfig) -> str:
    import yaml

    return yaml.safe_dump(to_dict(config), sort_keys=False)


# -- rendering ----------------------------------------------------------------------------
def show_round_status(ws: Workspace, page: SetupPage) -> None:
    from common import show_round_state

    show_round_state(ws, here="setup", state=page.state)
    rnd = page.round
    if rnd is None:
        return
    frame = pd.DataFrame([{"step": s["step"], "done": "✓" if s["done"] else "",
                           "detail": s["detail"]} for s in page.steps])
    st.dataframe(frame, hide_index=True)
    if page.finished:
        st.success(f"Round {rnd.number} is finished. Launching now opens round "
                   f"{rnd.number + 1}.")
    elif page.next_step:
        st.markdown(f"Next step: **{page.next_step}**.")


def _model_fields(config: RoundConfig) -> dict:
    st.subheader("Model")
    left, right = st.columns([3, 1])
    fields = {
        "model.name_or_path": left.text_input(
            "Base model", value=config.model.name_or_path, key="setup_model",
            help="`bundled` (SmolLM2-135M-Instruct), a local Hugging Face folder, a GGUF "
                 "file, or a Hugging Face id already in the local cache. Llama, Mistral, "
                 "Qwen2, Qwen3, Gemma 2, Gemma 3 and Phi-3 models are supported.").strip(),
        "model.dtype": right.selectbox("dtype", DTYPES, index=DTYPES.index(config.model.dtype),
                                       key="setup_dtype"),
    }
    usable, note = model_note(fields["model.name_or_path"] or "bundled",
                              config.model.context_budget)
    (left.caption if usable else left.error)(literal(note))
    st.subheader("LoRA and training")
    c = st.columns(3)
    fields["lora.r"] = int(c[0].number_input("LoRA r", min_value=1, max_value=512, step=1,
                                             value=config.lora.r, key="setup_lora_r"))
    fields["lora.alpha"] = int(c[1].number_input("LoRA alpha", min_value=1, max_value=1024,
                                                 step=1, value=config.lora.alpha,
                                                 key="setup_lora_alpha"))
    fields["lora.dropout"] = float(c[2].number_input(
        "LoRA dropout", min_value=0.0, max_value=0.9, step=0.01, value=config.lora.dropout,
        key="setup_lora_dropout"))
    c = st.columns(4)
    fields["train.learning_rate"] = float(c[0].number_input(
        "Learning rate", min_value=0.0, value=config.train.learning_rate, step=1e-5,
        format="%.1e", key="setup_lr"))
    fields["train.epochs"] = float(c[1].number_input(
        "Epochs", min_value=0.0, value=float(config.train.epochs), step=0.5, key="setup_epochs"))
    max_steps = int(c[2].number_input(
        "Max steps (0 = none)", min_value=0, value=config.train.max_steps or 0, step=1,
        key="setup_max_steps", help="Stop after this many optimizer steps (overrides epochs)."))
    fields["train.max_steps"] = max_steps or None
    fields["train.min_steps"] = int(c[3].number_input(
        "Min steps", min_value=0, value=config.train.min_steps, step=1,
        key="setup_min_steps",
        help="At least this many optimizer steps whatever the epochs give: a few dozen "
             "labels at 2 epochs is too few steps to learn from."))
    if max_steps and max_steps < fields["train.min_steps"]:
        st.warning(f"Max steps {max_steps} is below the minimum of {fields['train.min_steps']} "
                   f"steps: training stops after {max_steps} steps, which is too few to learn "
                   "from on most tasks (set Max steps to 0 to use the minimum).",
                   icon=":material/warning:")
    c = st.columns(3)
    fields["train.batch_size"] = int(c[0].number_input(
        "Batch size", min_value=1, value=config.train.batch_size, step=1, key="setup_batch"))
    fields["train.grad_accum"] = int(c[1].number_input(
        "Grad accumulation", min_value=1, value=config.train.grad_accum, step=1,
        key="setup_grad_accum"))
    fields["train.class_balance"] = c[2].selectbox(
        "Class balance", CLASS_BALANCE, index=CLASS_BALANCE.index(config.train.class_balance),
        key="setup_class_balance", help="Small imbalanced sets collapse onto the majority "
                                        "class without it.")
    fields["train.processes"] = int(st.number_input(
        "Training processes", min_value=1, max_value=64, step=1,
        value=config.train.processes, key="setup_processes",
        help="Above 1, training runs under `accelerate launch` (DDP): CPU processes, or one "
             "per GPU, each taking a share of every batch."))
    return fields


def _round_fields(config: RoundConfig) -> dict:
    st.subheader("Retrieval and pool")
    c = st.columns(3)
    fields = {
        "retrieval.k": int(c[0].number_input("k (demonstrations retrieved)", min_value=1,
                                             max_value=32, value=config.retrieval.k, step=1,
                                             key="setup_k")),
        "calibration.fraction": float(c[1].number_input(
            "Calibration fraction", min_value=0.0, max_value=0.5, step=0.05,
            value=float(config.calibration.fraction), key="setup_calibration",
            help="Share of the labeled set held out to measure pseudo-label precision "
                 "(used by round 1's warm-up).")),
    }
    limit = int(c[2].number_input("Unlabeled limit (0 = all)", min_value=0, step=10,
                                  value=config.unlabeled_limit or 0, key="setup_unlabeled_limit"))
    fields["unlabeled_limit"] = limit or None
    fields["continue_from_warmup"] = st.checkbox(
        "Final training continues from the warm-up adapter", value=config.continue_from_warmup,
        key="setup_continue")
    fields["start_from"] = st.radio(
        "Round 2 and later start from", START_FROM, horizontal=True,
        index=START_FROM.index(config.start_from), key="setup_start_from",
        format_func={"best": "the best adapter so far", "previous": "the previous round's "
                     "adapter (paper)"}.get,
        help="The best: the earlier adapter (warm-ups included) with the highest accuracy on "
             "the test set (or calibration slice), so a round that got worse is not built on.")
    fields["report_to"] = st.radio(
        "Also report to", REPORT_TO, horizontal=True,
        index=REPORT_TO.index(config.report_to), key="setup_report_to",
        format_func={"none": "no tracker", "tensorboard": "TensorBoard",
                     "mlflow": "MLflow"}.get,
        help="The training losses, learning rate and test accuracy, kept in the workspace. "
             "TensorBoard: event files in tensorboard/ (`tensorboard --logdir "
             "WORKSPACE/tensorboard`). MLflow: a run per round with the config as params and "
             "the adapters as artifacts (`mlflow ui --backend-store-uri "
             "sqlite:///WORKSPACE/mlflow/mlflow.db`).")
    return fields


def _collaborator_table(config: RoundConfig) -> pd.DataFrame:
    st.subheader("Collaborators")
    st.caption("Each row answers every unlabeled item: the base model or the warm-up adapter, "
               "with 0..k retrieved demonstrations, at a sampling temperature (0 = argmax) "
               "and seed. Add or remove rows at the bottom of the table.")
    return st.data_editor(
        collaborator_frame(config), key="setup_collaborators", num_rows="dynamic",
        hide_index=True,
        column_config={
            "model": st.column_config.SelectboxColumn("model", options=list(COLLABORATOR_MODELS),
                                                      required=True, default="warmup"),
            "demonstrations": st.column_config.NumberColumn("demonstrations", min_value=0,
                                                            max_value=32, step=1, required=True,
                                                            default=0),
            "temperature": st.column_config.NumberColumn("temperature", min_value=0.0,
                                                         max_value=5.0, step=0.1, required=True,
                                                         default=1.0),
            "seed": st.column_config.NumberColumn("seed", min_value=0, step=1, required=True,
                                                  default=0),
            "server": st.column_config.TextColumn(
                "server", default="", help="The name of a server below that answers for "
                                           "this collaborator; empty = in this process."),
        })


def _server_table(config: RoundConfig) -> tuple[pd.DataFrame, dict]:
    """The served-model settings: the servers, and which runs reflection, entropy and
    evaluation."""
    with st.expander(f"Served models ({len(config.servers)} server(s))",
                     expanded=bool(config.servers)):
        st.caption("OpenAI-compatible servers (vLLM, llama.cpp, a hosted API). A collaborator "
                   "names one in its `server` column. API keys are read from the environment "
                   "variable named here and never stored. `chat` mode (hosted models without "
                   "echo) is an approximation from the top-20 log-probabilities, letters only.")
        frame = st.data_editor(
            server_frame(config), key="setup_servers", num_rows="dynamic", hide_index=True,
            column_config={
                "adapter_loading": st.column_config.SelectboxColumn(
                    "adapter_loading", options=list(ADAPTER_LOADING), default="none"),
                "mode": st.column_config.SelectboxColumn("mode", options=list(SERVER_MODES),
                                                         default="auto"),
                "concurrency": st.column_config.NumberColumn("concurrency", min_value=1,
                                                             step=1, default=4)})
        names = [""] + [str(n) for n in frame["name"] if not _missing(n)]
        c = st.columns(4)
        fields = {}
        for column, role, words in zip(c, ("reflection", "entropy", "evaluation"),
                                       ("Reflection on", "Eq. 6 entropy on", "Evaluation on")):
            current = getattr(config.served, role)
            fields[f"served.{role}"] = column.selectbox(
                words, names, index=names.index(current) if current in names else 0,
                key=f"setup_served_{role}", format_func=lambda n: n or "this process")
        fields["served.reflection_model"] = c[3].selectbox(
            "Reflection by", REFLECTION_MODELS,
            index=REFLECTION_MODELS.index(config.served.reflection_model),
            key="setup_served_reflection_model",
            format_func={"warmup": "the warm-up model (the paper)",
                         "base": "the server's base model"}.get,
            help=field_docs(ServedConfig)["reflection_model"])
    return frame, fields


def _selection_fields(config: RoundConfig) -> dict:
    st.subheader("Selection")
    sel = config.selection
    c = st.columns(4)
    policy = c[0].selectbox("Policy", SELECTION_POLICIES,
                            index=SELECTION_POLICIES.index(sel.policy), key="setup_policy")
    theta = float(c[1].number_input("θ (percentile)", min_value=0.0, max_value=100.0, step=5.0,
                                    value=float(sel.theta), key="setup_theta",
                                    disabled=not takes_theta(policy)))
    threshold = c[2].number_input("Threshold (absolute)", min_value=0.0, step=0.05,
                                  value=None if sel.threshold is None else float(sel.threshold),
                                  key="setup_threshold", disabled=policy != "absolute")
    score = c[3].selectbox("Score", SELECTION_SCORES, index=SELECTION_SCORES.index(sel.score),
                           key="setup_score")
    weighting = st.radio("Pseudo-label loss weight", SELECTION_WEIGHTINGS, horizontal=True,
                         index=SELECTION_WEIGHTINGS.index(sel.weighting), key="setup_weighting",
                         help="none: every kept pseudo-label counts in full; confidence: "
                              "weighted by the collaborators' confidence in it.")
    return {"selection.policy": policy, "selection.theta": theta,
            "selection.threshold": None if threshold is None else float(threshold),
            "selection.score": score, "selection.weighting": weighting}


def read_form(page: SetupPage) -> tuple[RoundConfig | None, SemiEvolError | None]:
    """Render the form; the config it describes, or the validation error."""
    base = page.config
    fields = _model_fields(base)
    fields.update(_round_fields(base))
    collaborators = _collaborator_table(base)
    servers, served = _server_table(base)
    fields.update(served)
    fields.update(_selection_fields(base))
    try:
        return config_from_form(base, fields, collaborators, servers), None
    except SemiEvolError as exc:
        return None, exc


def _launch(ws: Workspace, step: str, config: RoundConfig, *, review: bool = True,
            confirm: str | None = None) -> None:
    what = (("the whole round, unattended" if not review else "the round up to review")
            if step == "round" else f"step {step}")
    launch_with_feedback(ws, step, what, config=config, review=review, confirm=confirm)


def confirm_label_warnings(ws: Workspace, page: SetupPage) -> tuple[bool, str | None]:
    """The classes short of labels, with a box to confirm launching anyway (recorded with
    the round); (may launch, who confirmed)."""
    if not page.label_warnings:
        return True, None
    st.warning("**Some classes have too few labeled examples to be learnt** (round 1 would "
               "warm up on them):\n\n" + "\n".join(f"- {literal(w['message'])}"
                                                for w in page.label_warnings),
               icon=":material/warning:")
    confirmed = st.checkbox("I have read this and want to launch anyway (recorded with the "
                            "round)", key="confirm_labels")
    # Recorded with the round: the reviewer's name, or that no name was given.
    who = reviewer_name(ws) or "app user (no reviewer name set)"
    return confirmed, who if confirmed else None


def show_launch(ws: Workspace, page: SetupPage, config: RoundConfig | None,
                error: SemiEvolError | None) -> None:
    st.subheader("Launch")
    if error is not None:
        show_error(error)
        st.caption("Fix the settings above to launch.")
    if config is not None and config.servers and st.button(
            "Check the servers", key="check_servers",
            help="Ask each server what it can serve (echo, chat log-probabilities, the "
                 "models it lists); a round also checks before it starts."):
        try:
            st.code("\n".join(probe_servers(ws, config)), language=None)
        except SemiEvolError as exc:
            show_error(exc)
    rnd = page.round
    running = page.running
    if running:
        st.warning(f"Run {running[0]['id']} ({running[0]['kind']}) is writing a round: "
                   "launching waits until it has finished.", icon=":material/hourglass_top:")
        st.page_link(RUNS_PAGE, label="Follow it on the Runs page", icon=":material/monitoring:")
    busy = bool(running)
    labels_ok, confirm = confirm_label_warnings(ws, page)
    unattended = st.checkbox(
        "Unattended: also train and evaluate, without waiting for review", key="unattended",
        help="For scripts and benchmarks. By default a round stops after selection and "
             "waits for you to review its pseudo-labels and press Train.")
    # The estimate takes seconds (it counts the round's prompts): its place is kept above the
    # buttons, and it is filled in after them, so the page's controls never wait for it.
    estimate_slot = st.empty()
    left, right = st.columns([1, 2])
    if left.button("Launch round", type="primary", key="launch_round",
                   disabled=config is None or busy or not labels_ok):
        _launch(ws, "round", config, review=not unattended, confirm=confirm)
    right.caption("Warm-up, labeling and selection in one background run; the round then "
                  "waits for your review (Review page) before training"
                  + (" — unless unattended is ticked." if unattended else "."))
    st.caption("Or one step at a time:")
    columns = st.columns(len(page.step_names))
    for column, step in zip(columns, page.step_names):
        # Steps after warm-up work on an open round; a finished round's next one starts at
        # warmup.
        disabled = config is None or busy or (step != "warmup" and not page.open) or (
            step == "warmup" and not labels_ok)
        if column.button(f"Run {step}", key=f"launch_{step}", disabled=disabled):
            _launch(ws, step, config, confirm=confirm if step == "warmup" else None)
    if config is not None:
        name = f"round{rnd.number + page.finished if rnd else 1}_config.yaml"
        st.download_button("Save as YAML", config_yaml(config), file_name=name,
                           mime="application/x-yaml", key="save_yaml",
                           help="Use it with `semievol round WORKSPACE --config FILE`.")
        show_estimate(ws, config, review=not unattended, slot=estimate_slot)


def show_estimate(ws: Workspace, config: RoundConfig, *, review: bool, slot) -> None:
    """How long the round should take on this machine (launch.estimate), recomputed when
    the settings change."""
    key = (to_json(config), review, workspace_state(ws))
    cache = st.session_state.setdefault("setup_estimates", {})
    if key not in cache:
        cache.clear()
        cache[key] = launch.estimate(ws, "round", config=config, review=review)
    found = cache[key]
    if found and found.get("total"):
        slot.info(f"Estimated time for this round: {found['line']}.",
                  icon=":material/schedule:")


def show_setup(ws: Workspace) -> None:
    if ws.task is None:
        st.info("This workspace has no task yet: import a labeled file on the Workspace page "
                "first.")
        return
    page = setup_page(ws)
    show_round_status(ws, page)
    config, error = read_form(page)
    show_launch(ws, page, config, error)

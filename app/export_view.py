"""The Export page: a round's curated dataset (chat JSONL, CSV), its adapter (a zip built in
memory on download) and the merged model, written to the workspace's exports/ folder.

What is on disk is the truth: download buttons appear for the files exports/ holds, so they
survive reruns and page changes. `zip_folder` is tested directly.
"""

from __future__ import annotations

import io
import zipfile
from functools import partial
from pathlib import Path

import streamlit as st
from common import allow, flash, literal, user_errors

from semievol.export.dataset import export_dataset
from semievol.export.model import export_adapter, export_gguf, export_merged
from semievol.export.paths import export_folder, exported, human_size
from semievol.views.status import round_label, round_rows
from semievol.workspace.store import Workspace


def zip_folder(folder: Path) -> bytes:
    """The folder's files as a zip (in memory), paths relative to the folder's parent."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                archive.write(path, path.relative_to(folder.parent))
    return buffer.getvalue()


def _size(path: Path) -> str:
    """A file's or folder's size, in the one unit the CLI and the model card use."""
    return human_size(sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
                      if path.is_dir() else path.stat().st_size)


def show_export(ws: Workspace) -> None:
    rounds = {r["number"]: r for r in round_rows(ws)}
    if not rounds:
        st.info("No round yet: the curated dataset, the adapter and the merged model of a "
                "round can be exported once it has run (launch one on **Round setup**).")
        return
    numbers = list(rounds)  # newest first; the best trained round preselected
    best = next((i for i, n in enumerate(numbers) if rounds[n]["best"]), 0)
    number = st.selectbox("Round", numbers, index=best, key="export_round",
                          format_func=lambda n: round_label(rounds[n]))
    if not rounds[number]["best"] and any(r["best"] for r in rounds.values()):
        st.warning(f"Round {number} is not the best-scoring round: "
                   + next(round_label(r) for r in rounds.values() if r["best"]) + ".",
                   icon=":material/trending_down:")
    st.caption(f"Files are written to {literal(export_folder(ws))}.")
    dataset, adapter, merged, gguf = st.columns(4)

    with dataset:
        st.markdown("**Curated dataset**: labeled items, human labels and the selected "
                    "pseudo-labels of rounds up to this one, then the labels held out for "
                    "calibration (chat JSONL; CSV and Parquet with your files' column names).")
        if st.button("Export dataset", key="export_dataset", type="primary"):
            with user_errors():
                allow(ws, "export")
                paths = export_dataset(ws, number)
                flash(f"Exported {paths['trained']} training example(s) of round {number}"
                      f" and {paths['calibration']} held-out calibration label(s), marked "
                      f"as such, to {literal(paths['jsonl'].name)}, "
                      f"{literal(paths['csv'].name)}, {literal(paths['parquet'].name)} and "
                      f"the Hugging Face datasets folder {literal(paths['dataset'].name)}.")
                st.rerun()
    with adapter:
        st.markdown("**Adapter**: the round's LoRA adapter (load it with PEFT on the base "
                    "model).")
        if st.button("Export adapter", key="export_adapter"):
            with user_errors():
                allow(ws, "export")
                path = export_adapter(ws, number)
                flash(f"Copied round {number}'s adapter to {literal(path)}.")
                st.rerun()
    with merged:
        st.markdown("**Merged model**: the base model with the adapter merged in, saved with "
                    "its tokenizer (loads the model: can take a while).")
        if st.button("Export merged model", key="export_merged"):
            with user_errors(), st.spinner("Loading the model and merging the adapter…"):
                allow(ws, "export")
                path = export_merged(ws, number)
                flash(f"Saved the merged model of round {number} to {literal(path)}.")
                st.rerun()
    with gguf:
        st.markdown("**GGUF for llama.cpp / Ollama**: the merged model as one file, with an "
                    "Ollama Modelfile and a model card stating the round's metrics.")
        kind = st.selectbox("Weights", ("f16", "q8_0", "f32"), key="export_gguf_type")
        if st.button("Export GGUF", key="export_gguf"):
            with user_errors(), st.spinner("Merging the adapter and writing the GGUF…"):
                allow(ws, "export")
                info = export_gguf(ws, number, gguf_type=kind)
                flash(f"Wrote {literal(info['path'])} ({human_size(info['bytes'])}) with its "
                      "Modelfile and model card." + (f" {info['note']}" if info["note"] else ""))
                st.rerun()
    show_downloads(ws, number)


def show_downloads(ws: Workspace, number: int) -> None:
    files = exported(ws, number)
    if not files:
        st.caption(f"Nothing exported for round {number} yet.")
        return
    st.subheader("Exported files")
    for kind, mime in (("jsonl", "application/jsonl"), ("csv", "text/csv"),
                       ("parquet", "application/vnd.apache.parquet")):
        if kind in files:
            path = files[kind]
            st.download_button(f"Download {path.name} ({_size(path)})", path.read_bytes(),
                               file_name=path.name, mime=mime, key=f"download_{kind}",
                               on_click="ignore")
    if "adapter" in files:
        path = files["adapter"]
        # Zipped only when clicked (a callable runs on download, not on every rerun).
        st.download_button(f"Download {path.name}.zip ({_size(path)} unzipped)",
                           partial(zip_folder, path), file_name=f"{path.name}.zip",
                           mime="application/zip", key="download_adapter", on_click="ignore")
    if "merged" in files:
        st.markdown(f"Merged model ({_size(files['merged'])}): {literal(files['merged'])}")
    if "gguf" in files:
        folder = files["gguf"]
        st.markdown(f"GGUF folder ({_size(folder)}): {literal(folder)} (model.gguf, Modelfile, "
                    "README.md)")
        gguf = folder / "model.gguf"
        if gguf.exists():  # read only when clicked: the file is hundreds of megabytes
            st.download_button(f"Download model.gguf ({_size(gguf)})",
                               partial(gguf.read_bytes), file_name="model.gguf",
                               mime="application/octet-stream", key="download_gguf",
                               on_click="ignore")
        modelfile = folder / "Modelfile"
        if modelfile.exists():  # beside model.gguf, `ollama create NAME -f Modelfile`
            st.download_button("Download Modelfile", modelfile.read_bytes(),
                               file_name="Modelfile", mime="text/plain",
                               key="download_modelfile", on_click="ignore")
        card = folder / "README.md"
        if card.exists():
            with st.expander("Model card (README.md)"):
                st.code(card.read_text(encoding="utf-8"), language="markdown")

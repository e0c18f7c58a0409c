"""Adaptation quality on a real task: base, base + demonstrations, warm-up SFT, SemiEvol
rounds and ablations, a simulated reviewer and extra gold labels, measured side by side on
the same test split.

    .venv/bin/python bench/quality.py            # fpb, 64 and 452 labeled (hours: bench/README.md)
    .venv/bin/python bench/quality.py --reduced  # every configuration, tiny sizes (~5 min)

Per seed and answer format one workspace is built through the library (import, calibration
hold-out, retrieval index); the unlabeled split is imported without its answers, which stay
in this process's memory only, to score the pseudo-labels afterwards. Work is shared where
the workspace allows: base evaluations are done once per format and copied into the
class-balance-off fork; the ablations are forks of the round-1 workspace taken after
labeling, so their identical collaborator requests are answered from the response cache
(the no-selection and per-class ablations label nothing at all); so are the reviewer
variants (quality_review.simulate_review). SFT with extra gold labels forks the freshly
built workspace.

Modules: quality_data (splits, import files, workspaces, configs), quality_review (the
simulated reviewer), quality_runner (one seed: every format and configuration),
quality_report (summary, Markdown, plots, files).

Writes bench/results/quality_<task>_<labeled>.{json,md} and PNGs (reduced mode:
bench/results/reduced/).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, RESULTS, log, machine_info, model_dtype_name, repo_path  # noqa: E402
from quality_data import load_task  # noqa: E402
from quality_merge import MergeRefused, held_variants  # noqa: E402
from quality_report import write_results  # noqa: E402
from quality_review import REVIEW_ORDERS  # noqa: E402
from quality_runner import ABLATION_NAMES, Runner  # noqa: E402
from readme_summary import update_readmes  # noqa: E402

DEFAULT_TASK = Path(__file__).resolve().parents[1] / "../shared/datasets/fpb"
FORMATS = ("words", "letter")
REDUCED = {"labeled": [32], "unlabeled": 16, "test": 30, "max_steps": 2, "seeds": [0],
           "review_sizes": [4], "gold_sizes": [4]}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", type=Path, default=DEFAULT_TASK,
                   help="folder with labeled.csv / unlabeled.csv / test.csv (default: "
                        "../shared/datasets/fpb)")
    p.add_argument("--labeled", type=int, nargs="+", default=[64, 452],
                   help="labeled subsample sizes, one result file each (default 64 452)")
    p.add_argument("--unlabeled", type=int, default=200,
                   help="unlabeled subsample size; 0 = all (default 200)")
    p.add_argument("--test", type=int, default=0, help="test subsample size; 0 = all (default)")
    p.add_argument("--rounds", type=int, default=2, help="SemiEvol rounds, primary format")
    p.add_argument("--secondary-rounds", type=int, default=1,
                   help="SemiEvol rounds for the other answer format(s) (default 1)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0],
                   help="seeds (labeled/unlabeled draws, training); the spread is reported")
    p.add_argument("--formats", nargs="+", choices=FORMATS, default=list(FORMATS),
                   help="answer formats; the first is the primary one (default words letter)")
    p.add_argument("--balance", nargs="+", choices=("sampler", "none"),
                   default=["sampler", "none"], help="class balance variants of the warm-up SFT")
    p.add_argument("--ablations", nargs="*", choices=tuple(ABLATION_NAMES),
                   default=list(ABLATION_NAMES), help="round-1 ablations (primary format)")
    p.add_argument("--review-sizes", type=int, nargs="*", default=[10, 25, 50],
                   help="items a simulated reviewer decides before round 1 trains (primary "
                        "format; default 10 25 50)")
    p.add_argument("--review-orders", nargs="*", choices=tuple(REVIEW_ORDERS),
                   default=["audit", "least_confident", "random"],
                   help="which items the reviewer takes: the Review page's queues, or random "
                        "items given their true answer (default: audit least_confident "
                        "random)")
    p.add_argument("--gold-sizes", type=int, nargs="*", default=[10, 25, 50],
                   help="extra random unlabeled items given their true answer for plain SFT "
                        "(default 10 25 50)")
    p.add_argument("--skip-held", nargs="*", default=[], metavar="RUN.json",
                   help="earlier results of these seeds (quality_*.json, same settings): a "
                        "variant one of them holds is not run again, since the bench is "
                        "deterministic and would only reproduce it; merge the runs afterwards "
                        "with bench/quality_merge.py")
    p.add_argument("--model", default="bundled", help="model id or folder (default bundled)")
    p.add_argument("--dtype", default="auto", choices=("auto", "bfloat16", "float32"))
    p.add_argument("--k", type=int, default=3, help="retrieved demonstrations")
    p.add_argument("--epochs", type=float, default=2.0)
    p.add_argument("--lr", type=float, default=1e-3,
                   help="peak learning rate (default 1e-3: the paper's 1e-4 barely moves the "
                        "135M bundled model in 2 epochs on a few dozen examples)")
    p.add_argument("--max-steps", type=int, default=None, help="cap optimizer steps per training")
    p.add_argument("--lora-dropout", type=float, default=None,
                   help="LoRA dropout (default: the library's, LoraConfig.dropout)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--calibration", type=float, default=0.2,
                   help="share of the labeled set held out for calibration")
    p.add_argument("--instruction", default=None,
                   help="task instruction shown in every prompt (default: the task's own, "
                        "from its task.json or bench/tasks.json)")
    p.add_argument("--reduced", action="store_true",
                   help=f"tiny sizes for a smoke run under 10 minutes: {REDUCED}")
    p.add_argument("--out", type=Path, default=None,
                   help="results folder (default bench/results; reduced: bench/results/reduced)")
    p.add_argument("--workdir", type=Path, default=None,
                   help="where temporary workspaces go (default: the system temp folder)")
    p.add_argument("--keep", action="store_true", help="keep the temporary workspaces")
    p.add_argument("--teacher-accuracy", type=float, default=None, metavar="P",
                   help="add a simulated stronger collaborator (bench/teacher_server.py): a "
                        "served model right on a share P of the items, calibrated, to the "
                        "default collaborators (not to the no-demos and single ablations)")
    p.add_argument("--teacher-reflects", action="store_true",
                   help="the teacher's base model also settles the collaborators' "
                        "disagreements (served.reflection_model base), instead of the warm-up")
    args = p.parse_args(argv)
    if args.teacher_accuracy is not None and not 0 < args.teacher_accuracy <= 1:
        p.error(f"--teacher-accuracy is a share in (0, 1], got {args.teacher_accuracy}")
    if args.teacher_reflects and args.teacher_accuracy is None:
        p.error("--teacher-reflects needs a teacher: give --teacher-accuracy P too")
    if args.reduced:
        defaults = {a.dest: a.default for a in p._actions}
        for key, value in REDUCED.items():
            if getattr(args, key) == defaults[key]:  # explicit flags still win
                setattr(args, key, value)
    args.out = args.out or (RESULTS / "reduced" if args.reduced else RESULTS)
    args.unlabeled = args.unlabeled or None
    args.test = args.test or None
    return args

def main(argv=None) -> int:
    args = parse_args(argv)
    from semievol.config import ModelConfig
    from semievol.method.retrieval import SentenceTransformerEmbedder
    from semievol.model.loading import set_offline
    from semievol.model.local import LazyBackend

    set_offline()
    task = load_task(args.task)
    args.instruction = args.instruction or task["description"]["instruction"]
    if args.ablations is None:
        args.ablations = []
    model_config = ModelConfig(name_or_path=args.model, dtype=args.dtype)
    machine = machine_info(model_dtype_name(model_config))
    try:
        held = held_variants([Path(p) for p in args.skip_held], task["name"], vars(args),
                             machine["model_dtype"])
    except MergeRefused as e:
        print(f"quality.py: {e}", file=sys.stderr)
        return 2
    log(f"quality bench on {task['name']}: labeled {args.labeled}, unlabeled "
        f"{args.unlabeled or 'all'}, test {args.test or 'all'}, seeds {args.seeds}, formats "
        f"{args.formats}, rounds {args.rounds}/{args.secondary_rounds}, ablations "
        f"{args.ablations}, review {args.review_orders} x {args.review_sizes}, gold "
        f"{args.gold_sizes}; torch threads {machine['torch_threads']}, {machine['model_dtype']}")
    embedder = SentenceTransformerEmbedder("bundled")
    base = LazyBackend(model_config, None)  # one base model for every workspace
    teacher = start_teacher(args, task, model_config) if args.teacher_accuracy else None
    written = []
    for labeled in args.labeled:
        started = time.time()
        runs = []
        for seed in args.seeds:
            root = Path(tempfile.mkdtemp(prefix=f"semievol-quality-{labeled}-{seed}-",
                                         dir=args.workdir))
            try:
                runs.append(Runner(args, task, labeled, seed, root, embedder, base,
                                   held.get((labeled, seed), set())).run())
            finally:
                if args.keep:
                    log(f"kept workspaces in {root}")
                else:
                    shutil.rmtree(root, ignore_errors=True)
            # Written after every seed: a long run that stops later keeps what it measured.
            paths, text = write_results(args, task, labeled, machine, runs, started,
                                        complete=seed == args.seeds[-1])
        written += paths
        print(text.split("## Training runs")[0])
        if not args.reduced and args.out.resolve() == RESULTS.resolve():
            for readme in update_readmes():
                log(f"updated the results summary in {readme.relative_to(REPO)}")
    log("wrote " + ", ".join(repo_path(p) for p in written))
    if teacher is not None:
        teacher.close()
    return 0


def start_teacher(args, task: dict, model_config):
    """The simulated stronger collaborator over every item of the task (it knows their
    answers); round configs add it through args.teacher_url (quality_data.round_config)."""
    import json as json_

    from common import true_option
    from teacher_server import TeacherServer

    from semievol.model.loading import load_tokenizer, resolve_model_path

    items = {}
    for frame in task["frames"].values():
        for _, row in frame.iterrows():
            options = json_.loads(row["options"])
            items[row["question"]] = (options, true_option(row, options))
    teacher = TeacherServer(items, load_tokenizer(resolve_model_path(model_config.name_or_path)),
                            accuracy=args.teacher_accuracy)
    args.teacher_url = teacher.url
    log(f"simulated teacher (accuracy {args.teacher_accuracy}) at {teacher.url}")
    return teacher


if __name__ == "__main__":
    sys.exit(main())
"""Print the paper-style results grid of an MLflow experiment, with the paper's numbers beside ours.

One block per dataset: rows are our variants, columns shot counts; each cell is the test metric's mean ± std
over seeds, the paper's number in parentheses, the best of each column in bold, and "—", "running" or
"failed" for cells of the experiment's sweeps that have no finished run yet.  The table is also stored in
MLflow, as the artifact table.<format> of the experiment's "results-table" run.

Examples:
  fskp table --experiment table1
  fskp table --experiment table1 --metric other --format tex --out table7.tex   # the paper's Table 7
  fskp table --experiment table3 --format html --out table3.html
"""
from __future__ import annotations

HELP = "print the results grid of an experiment (Markdown, LaTeX or HTML) beside the paper's numbers"


def register(p):
    p.add_argument("--experiment", default="fskp", help="MLflow experiment (default fskp)")
    p.add_argument("--format", choices=("md", "tex", "html"), default="md", help="output format (default md)")
    p.add_argument("--metric", choices=("main", "other", "nme", "pck"), default="main",
                   help="main: each dataset's own metric (default); other: the other one of NME and PCK "
                        "(the paper's Table 7); nme or pck: that one for every dataset")
    p.add_argument("--out", help="also write the table to this file")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)")
    p.add_argument("--no-log", action="store_true", help="do not store the table in MLflow")


def run(args) -> int:
    import sys
    from pathlib import Path

    from jobs.table import build_table, log_table

    text = build_table(args.experiment, args.tracking_uri, args.format, args.metric)
    print(text, end="")
    if args.out:
        Path(args.out).write_text(text)
    if not args.no_log:
        run_id = log_table(text, args.experiment, args.format, args.tracking_uri)
        print(f"stored as table.{args.format} in MLflow run {run_id} (experiment {args.experiment})", file=sys.stderr)
    return 0

"""Score a trained model on a prepared dataset with its card's metric.

  fskp evaluate --run RUN_ID --data data/synth_face          # the checkpoint recorded in an MLflow run
  fskp evaluate --checkpoint runs/.../checkpoint_.../ --data D --split test
"""
from __future__ import annotations

HELP = "score a trained model (MLflow run or checkpoint) on a prepared dataset"


def register(p):
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", help="MLflow run id whose checkpoint to evaluate")
    src.add_argument("--checkpoint", help="checkpoint folder or model.pt")
    p.add_argument("--data", required=True, help="prepared dataset folder")
    p.add_argument("--split", default="test", help="split to score (default test)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)")
    p.add_argument("--out", help="folder for evaluation.json and predictions.png")


def run(args) -> int:
    from jobs.evaluation import evaluate_model, load_checkpoint, write_eval_artifacts
    from pipeline.prepared import PreparedDataset

    ckpt = args.checkpoint
    if args.run:
        import mlflow

        from jobs.tracking import resolve_tracking_uri

        mlflow.set_tracking_uri(resolve_tracking_uri(args.tracking_uri))
        run = mlflow.get_run(args.run)
        ckpt = run.data.tags.get("checkpoint_path")
        if not ckpt:
            raise ValueError(f"MLflow run {args.run} has no checkpoint_path tag (did it finish?)")
    ds = PreparedDataset(args.data)
    model, state = load_checkpoint(ckpt, card=ds.card)
    result = evaluate_model(model, ds, split=args.split)
    for k, v in sorted(result["metrics"].items()):
        if k.count("/") == 1:
            print(f"{k:32s} {v:8.3f}")
    if args.out:
        from pathlib import Path

        Path(args.out).mkdir(parents=True, exist_ok=True)
        write_eval_artifacts(args.out, result)
        print(f"wrote {args.out}/evaluation.json and predictions.png")
    return 0

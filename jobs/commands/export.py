"""Export a trained detector for use outside fskp: an ONNX file for onnxruntime, TensorRT, OpenCV's dnn, ...

The graph is the detector alone (paper §3.1, Eq. 1; the reconstruction branch is only for training):

  input   "images"       float32 [N, 3, S, S]  RGB in [0, 1], S = the model's image size (metadata
                                               "image_size"): the frame cut with the run's crop (metadata
                                               "crop_box", x0, y0, x1, y1 in frame pixels) and resized
  outputs "keypoints"    float32 [N, K, 2]     x, y in [-1, 1] (pixel centres: px = (k + 1) / 2 * S, the
                                               prepared convention; frame px = x0 + px * (x1 - x0) / S)
          "uncertainty"  float32 [N, K]        1 - sigmoid(v) in (0, 1), the model's own certainty (Eq. 7)
          "likelihood"   float32 [N, K]        what fskp's outputs write as likelihood: calibrated on the held-out
                                               frames of `fskp label` when its confidence.npz lies beside the
                                               checkpoint (jobs/labeling/confidence.py: the certainty and the
                                               frame's distance to the training frames, in the graph), else
                                               1 - uncertainty (metadata "likelihood" says which)

N is dynamic.  The metadata also holds the keypoint names and links (JSON) and the card's name.  After
writing, onnxruntime (when installed) runs the file on two images; the largest keypoint difference to
PyTorch is printed, in the model's input pixels, and more than 0.1 px is an error, as is a likelihood more
than 0.01 away from the one `fskp predict` writes.

Examples:
  fskp export --run RUN_ID --format onnx --out detector.onnx
  fskp export --run out/reaching/runs/label-dlc-reaching/.../checkpoint_000001 --format onnx --out detector.onnx
"""
from __future__ import annotations

HELP = "export a trained detector (MLflow run or checkpoint) to ONNX"

#: ONNX operator set written (onnxruntime >= 1.14 runs it)
OPSET = 18
#: largest keypoint difference (model input pixels) between onnxruntime and PyTorch accepted after export
PARITY_PX = 0.1
#: largest likelihood difference between onnxruntime and `fskp predict` accepted after export
PARITY_LIKELIHOOD = 0.01


def register(p):
    p.add_argument("--run", required=True, metavar="RUN_OR_CHECKPOINT",
                   help="MLflow run id (its checkpoint and crop), or a checkpoint folder / model.pt")
    p.add_argument("--format", default="onnx", choices=["onnx"], help="export format (default onnx)")
    p.add_argument("--out", required=True, help="file to write, e.g. detector.onnx")
    p.add_argument("--opset", type=int, default=OPSET, help=f"ONNX opset (default {OPSET})")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)")


def resolve(run_or_checkpoint: str, tracking_uri: str | None = None) -> tuple[str, list[float] | None]:
    """(checkpoint path, crop box or None): an existing path is a checkpoint; anything else an MLflow run id
    whose ``checkpoint_path`` (and ``crop_box``, written by fskp label) tags are read."""
    import json
    from pathlib import Path

    if Path(run_or_checkpoint).exists():
        return run_or_checkpoint, None
    import mlflow
    from mlflow.exceptions import MlflowException

    from jobs.tracking import resolve_tracking_uri

    mlflow.set_tracking_uri(resolve_tracking_uri(tracking_uri))
    try:
        tags = mlflow.get_run(run_or_checkpoint).data.tags
    except MlflowException as e:
        raise FileNotFoundError(f"--run {run_or_checkpoint}: neither a checkpoint on disk nor an MLflow run "
                                f"({e.message.splitlines()[0]})") from None
    ckpt = tags.get("checkpoint_path")
    if not ckpt:
        raise ValueError(f"MLflow run {run_or_checkpoint} has no checkpoint_path tag (did it finish?)")
    return ckpt, json.loads(tags["crop_box"]) if tags.get("crop_box") else None


def exported_detector(model, calibration=None):
    """``model``'s detector as a module images [N, 3, S, S] in [0, 1] -> (keypoints [N, K, 2], uncertainty
    [N, K], likelihood [N, K]); the likelihood is ``calibration``'s (a jobs.labeling.confidence.Calibration)
    when given, else 1 - uncertainty."""
    import numpy as np
    import torch

    from jobs.inference import embedding_projection
    from jobs.labeling.confidence import EPS

    class ExportedDetector(torch.nn.Module):
        def __init__(self, detector):
            super().__init__()
            self.detector = detector
            self.calibrated = calibration is not None
            if self.calibrated:
                with torch.no_grad():
                    channels = detector.detect_and_embed(torch.zeros(1, 3, 32, 32))[1].shape[1]
                proj = embedding_projection(channels)
                ref = np.asarray(calibration.reference, np.float64)
                ref = ref / (np.linalg.norm(ref, axis=1, keepdims=True) + 1e-12)
                self.project = proj is not None
                self.register_buffer("projection", torch.tensor(proj if proj is not None else np.eye(channels),
                                                                dtype=torch.float32))
                self.register_buffer("reference", torch.tensor(ref, dtype=torch.float32))
                self.register_buffer("coef", torch.tensor(np.r_[calibration.coef, calibration.intercept],
                                                          dtype=torch.float32))

        def forward(self, images):
            det, embedding = self.detector.detect_and_embed(images)
            uncertainty = 1.0 - torch.sigmoid(det.certainty)
            if not self.calibrated:
                return det.keypoints, uncertainty, 1.0 - uncertainty
            e = embedding.float() @ self.projection if self.project else embedding.float()
            e = e.half().float()                                   # the float16 embeddings fskp predict keeps
            e = e / (e.norm(dim=1, keepdim=True) + 1e-12)
            novelty = (1.0 - (e @ self.reference.T).amax(dim=1)).clamp(0.0, 2.0)       # confidence.novelty
            certainty = (1.0 - uncertainty).clamp(EPS, 1.0 - EPS)
            z = (self.coef[0] * torch.log(certainty / (1.0 - certainty))               # confidence.features
                 + self.coef[1] * torch.log(novelty + EPS)[:, None] + self.coef[2])
            return det.keypoints, uncertainty, torch.sigmoid(z)

    return ExportedDetector(model.detector).eval()


def export_onnx(checkpoint: str, out: str, crop: list[float] | None = None, opset: int = OPSET) -> dict:
    """Write the checkpoint's detector to ``out`` as ONNX (see the module docstring for its inputs and
    outputs); returns {"path", "image_size", "keypoints", "likelihood" (which), "parity_px" and
    "parity_likelihood" (None without onnxruntime)}."""
    import json
    import tempfile
    from pathlib import Path

    import numpy as np
    import onnx
    import torch

    from jobs.evaluation import load_checkpoint
    from jobs.inference import reduce_embedding
    from jobs.labeling.confidence import find_calibration
    from pipeline.atomic import atomic_path

    model, state = load_checkpoint(checkpoint)
    size = int(model.config.image_size)
    calibration = find_calibration(checkpoint)
    module = exported_detector(model, calibration)
    which = "1 - uncertainty (not calibrated: no confidence.npz beside the checkpoint)" if calibration is None \
        else f"calibrated on {calibration.fitted_on} held-out keypoints of fskp label (confidence.npz)"
    names = list(state.get("keypoint_names") or [f"kp{i}" for i in range(state["num_keypoints"])])
    example = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    with tempfile.TemporaryDirectory() as d:
        raw = Path(d) / "detector.onnx"
        torch.onnx.export(module, (example,), str(raw), input_names=["images"],
                          output_names=["keypoints", "uncertainty", "likelihood"], opset_version=opset, dynamo=True,
                          dynamic_shapes={"images": {0: torch.export.Dim("batch")}}, external_data=False,
                          verbose=False)
        graph = onnx.load(str(raw))
    meta = {"image_size": str(size), "keypoint_names": json.dumps(names),
            "links": json.dumps([list(map(int, link)) for link in model.config.links]),
            "card_name": str(state.get("card_name", "")), "input": "RGB float32 [N, 3, S, S] in [0, 1]",
            "keypoints": "[N, K, 2] x, y in [-1, 1]; pixel = (k + 1) / 2 * image_size",
            "uncertainty": "[N, K] 1 - sigmoid(v), the model's own certainty",
            "likelihood": f"[N, K] {which}",
            "checkpoint": str(checkpoint)}
    if crop is not None:
        meta["crop_box"] = json.dumps([float(c) for c in crop])
    onnx.helper.set_model_props(graph, meta)
    onnx.checker.check_model(graph)
    with atomic_path(out) as tmp:
        onnx.save(graph, str(tmp))
    parity, parity_likelihood = None, None
    try:
        import onnxruntime
    except ImportError:
        onnxruntime = None
    if onnxruntime is not None:
        session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        keypoints, uncertainty, likelihood = session.run(None, {"images": example.numpy()})
        with torch.no_grad():
            det, embedding = model.detector.detect_and_embed(example)
        u = 1.0 - torch.sigmoid(det.certainty).numpy()
        written = 1.0 - u if calibration is None else calibration.likelihood(u, reduce_embedding(embedding.numpy()))
        parity = float(np.abs(keypoints - det.keypoints.numpy()).max() * size / 2)
        parity_likelihood = float(np.abs(likelihood - written).max())
        if parity > PARITY_PX or parity_likelihood > PARITY_LIKELIHOOD:
            Path(out).unlink()
            raise ValueError(f"{out}: onnxruntime differs from PyTorch by {parity:.3f} px in the keypoints "
                             f"(at most {PARITY_PX}) and {parity_likelihood:.4f} in the likelihood (at most "
                             f"{PARITY_LIKELIHOOD}); the export was removed")
    return {"path": str(out), "image_size": size, "keypoints": names, "likelihood": which, "parity_px": parity,
            "parity_likelihood": parity_likelihood}


def run(args) -> int:
    ckpt, crop = resolve(args.run, args.tracking_uri)
    result = export_onnx(ckpt, args.out, crop, opset=args.opset)
    print(f"wrote {result['path']}: images [N, 3, {result['image_size']}, {result['image_size']}] in [0, 1] -> "
          f"keypoints [N, {len(result['keypoints'])}, 2] in [-1, 1], uncertainty [N, {len(result['keypoints'])}]")
    if crop is not None:
        print(f"  crop of the run (metadata crop_box): {', '.join(f'{c:.1f}' for c in crop)}")
    print(f"  likelihood [N, {len(result['keypoints'])}]: {result['likelihood']}")
    if result["parity_px"] is None:
        print("  onnxruntime not installed: parity not checked (pip install 'fskp[lab]')")
    else:
        print(f"  onnxruntime vs PyTorch: largest keypoint difference {result['parity_px']:.5f} px, "
              f"likelihood {result['parity_likelihood']:.5f}")
    return 0

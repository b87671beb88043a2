"""The likelihood every output writes: calibrated on held-out labeled frames so that it predicts error.

The model's own certainty sigmoid(v) (paper Eq. 7) says which body part is hard, hardly which frame: on the
reaching project its AUROC for a right keypoint is 0.58-0.62.  What does tell a bad frame is how unlike the
training frames it looks -- the novelty, 1 - the cosine similarity of the detector's pooled features to the
nearest training frame.  ``Calibration`` combines the two by a logistic regression fitted on the held-out
labeled frames of `fskp label` (right = within the PCK threshold of jobs/labeling/scoring.py):

    likelihood = sigmoid(a * logit(sigmoid(v)) + b * log(novelty) + c)

so a likelihood of 0.8 means that about 80 % of such keypoints were right on the user's own frames, and a
pcutoff means what DeepLabCut users expect of it.  Frames predicted with test-time crops (jobs/inference.py)
have a third sign of a wrong keypoint, how far the crops' predictions disagree (``spread``, a share of the crop
side); a second regression adds + d * log(spread) and serves those frames, the first the frames without it.
Without held-out frames there is nothing to fit on; the
outputs then carry the uncalibrated sigmoid(v) and `fskp label` says so.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: fewer held-out keypoints than this, or fewer of either class (right / wrong), and no calibration is fitted
MIN_KEYPOINTS, MIN_PER_CLASS = 20, 5
#: file name of a calibration beside a checkpoint's model.pt and in a label output folder
FILE_NAME = "confidence.npz"
EPS = 1e-6
#: added to the spread (a share of the crop side) before its log: crops that agree to 1/10,000 agree
SPREAD_FLOOR = 1e-4


def novelty(embedding: np.ndarray, reference: np.ndarray, chunk: int = 65536) -> np.ndarray:
    """[N] 1 - the largest cosine similarity of each row of ``embedding`` [N, D] to a row of ``reference``
    [T, D] (the training frames); 0 for a training frame itself.  Chunked: a long video's rows stay small."""
    ref = np.asarray(reference, np.float64)
    ref = ref / (np.linalg.norm(ref, axis=1, keepdims=True) + 1e-12)
    out = np.empty(len(embedding), np.float64)
    for s in range(0, len(embedding), chunk):
        e = np.asarray(embedding[s:s + chunk], np.float64)
        e = e / (np.linalg.norm(e, axis=1, keepdims=True) + 1e-12)
        out[s:s + chunk] = 1.0 - (e @ ref.T).max(axis=1)
    return np.clip(out, 0.0, 2.0)


def features(uncertainty: np.ndarray, frame_novelty: np.ndarray, spread: np.ndarray | None = None) -> np.ndarray:
    """[N, K, 2]: logit of the model's certainty 1 - u, and log novelty of the keypoint's frame; [N, K, 3] with
    log spread.  uncertainty [N, K] in (0, 1); frame_novelty [N]; spread [N, K] (Predictions.spread)."""
    lk = np.clip(1.0 - np.asarray(uncertainty, np.float64), EPS, 1.0 - EPS)
    nov = np.broadcast_to(np.log(np.asarray(frame_novelty, np.float64) + EPS)[:, None], lk.shape)
    columns = [np.log(lk / (1.0 - lk)), nov]
    if spread is not None:
        columns.append(np.log(np.nan_to_num(np.asarray(spread, np.float64), nan=0.0) + SPREAD_FLOOR))
    return np.stack(columns, axis=-1)


@dataclass
class Calibration:
    """likelihood = sigmoid(coef . features + intercept) (module docstring); ``reference`` [T, D] are the
    training frames' embeddings the novelty is measured against; ``spread_coef`` / ``spread_intercept`` the
    regression with the spread as well, for frames predicted with test-time crops (None: fitted without)."""

    coef: np.ndarray             # [2]: on logit(certainty), on log(novelty)
    intercept: float
    reference: np.ndarray        # [T, D] float32
    fitted_on: int               # held-out keypoints the regression saw
    cross_validated_auroc: float | None   # AUROC for "right" of out-of-fold likelihoods (frames as groups)
    spread_coef: np.ndarray | None = None         # [3]: on logit(certainty), log(novelty), log(spread)
    spread_intercept: float | None = None

    @property
    def uses_spread(self) -> bool:
        return self.spread_coef is not None

    def likelihood(self, uncertainty: np.ndarray, embedding: np.ndarray,
                   spread: np.ndarray | None = None) -> np.ndarray:
        """[N, K] calibrated likelihood in (0, 1); NaN where the uncertainty is NaN (no prediction).
        uncertainty [N, K]; embedding [N, D] of the same frames; spread [N, K] where they were predicted with
        test-time crops (NaN rows: frames that were not), used when the calibration was fitted with it."""
        u = np.asarray(uncertainty, np.float64)
        x = features(np.nan_to_num(u, nan=0.5), novelty(embedding, self.reference), spread)
        z = x[..., :2] @ self.coef + self.intercept
        if spread is not None and self.uses_spread:
            has = np.isfinite(np.asarray(spread, np.float64))
            z = np.where(has, x @ self.spread_coef + self.spread_intercept, z)
        out = 1.0 / (1.0 + np.exp(-z))
        out[~np.isfinite(u)] = np.nan
        return out

    def describe(self) -> str:
        auroc = "" if self.cross_validated_auroc is None else \
            f", AUROC for a right keypoint {self.cross_validated_auroc:.2f} cross-validated"
        inputs = "certainty, frame novelty and test-time-crop spread" if self.uses_spread else \
            "certainty and frame novelty"
        return f"likelihood calibrated on {self.fitted_on} held-out keypoints ({inputs}{auroc})"

    def save(self, path: str | Path) -> Path:
        """Write to ``path`` (a folder gets ``FILE_NAME``); atomic: a partial file never has the final name."""
        path = Path(path)
        path = path / FILE_NAME if path.is_dir() else path
        tmp = path.with_name(path.name + ".tmp.npz")
        meta = {"fitted_on": self.fitted_on, "cross_validated_auroc": self.cross_validated_auroc,
                "features": ["logit(1 - uncertainty)", "log(novelty)"]
                + (["log(spread + 1e-4)"] if self.uses_spread else [])}
        spread = dict(spread_coef=self.spread_coef, spread_intercept=np.float64(self.spread_intercept)) \
            if self.uses_spread else {}
        np.savez(tmp, coef=self.coef, intercept=np.float64(self.intercept), reference=self.reference,
                 meta=np.array(json.dumps(meta)), **spread)
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Calibration":
        path = Path(path)
        path = path / FILE_NAME if path.is_dir() else path
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                return cls(coef=z["coef"].astype(np.float64), intercept=float(z["intercept"]),
                           reference=z["reference"].astype(np.float32), fitted_on=int(meta["fitted_on"]),
                           cross_validated_auroc=meta["cross_validated_auroc"],
                           spread_coef=z["spread_coef"].astype(np.float64) if "spread_coef" in z else None,
                           spread_intercept=float(z["spread_intercept"]) if "spread_intercept" in z else None)
        except (KeyError, ValueError, OSError) as e:
            raise ValueError(f"{path}: not a likelihood calibration written by fskp label ({e})") from e


def find_calibration(checkpoint: str | Path) -> Calibration | None:
    """The calibration saved beside a checkpoint (its folder, or the folder of its model.pt), if any."""
    folder = Path(checkpoint)
    folder = folder if folder.is_dir() else folder.parent
    return Calibration.load(folder / FILE_NAME) if (folder / FILE_NAME).exists() else None


def fit_calibration(uncertainty: np.ndarray, embedding: np.ndarray, reference: np.ndarray, right: np.ndarray,
                    scored: np.ndarray, spread: np.ndarray | None = None
                    ) -> tuple[Calibration | None, np.ndarray | None]:
    """Fit the likelihood on held-out frames.  uncertainty [N, K]; embedding [N, D]; reference [T, D] (the
    training frames); right, scored [N, K] bool (jobs.labeling.scoring.right_keypoints); spread [N, K] when
    the frames were predicted with test-time crops (then a second regression with it is fitted too).

    Returns (calibration, out-of-fold likelihood [N, K]): the second is each held-out frame's likelihood from a
    regression fitted without that frame (5 folds of frames) -- the one with the spread when given --, the
    honest input of a held-out reliability report; NaN where not scored.  (None, None) when too few keypoints
    or too few of a class to fit."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import GroupKFold, cross_val_predict

    scored = np.asarray(scored, bool)
    y = np.asarray(right, bool)[scored]
    if len(y) < MIN_KEYPOINTS or min(int(y.sum()), int((~y).sum())) < MIN_PER_CLASS:
        return None, None
    x = features(uncertainty, novelty(embedding, reference), spread)[scored]
    frames = np.broadcast_to(np.arange(scored.shape[0])[:, None], scored.shape)[scored]
    folds = min(5, len(np.unique(frames)))
    oof = np.full(scored.shape, np.nan)
    auroc = None
    if folds >= 2:                  # judged: the regression the outputs use for these frames
        oof[scored] = cross_val_predict(LogisticRegression(max_iter=1000), x, y, groups=frames,
                                        cv=GroupKFold(folds), method="predict_proba")[:, 1]
        auroc = float(roc_auc_score(y, oof[scored]))
    plain = LogisticRegression(max_iter=1000).fit(x[:, :2], y)
    calibration = Calibration(coef=plain.coef_[0].astype(np.float64), intercept=float(plain.intercept_[0]),
                              reference=np.asarray(reference, np.float32), fitted_on=int(len(y)),
                              cross_validated_auroc=auroc)
    if spread is not None:
        with_spread = LogisticRegression(max_iter=1000).fit(x, y)
        calibration.spread_coef = with_spread.coef_[0].astype(np.float64)
        calibration.spread_intercept = float(with_spread.intercept_[0])
    return calibration, (oof if folds >= 2 else None)

"""The method and its ablations by name: which losses and inputs each variant uses, in one place.

``full`` is §3, its labeled images augmented like the baselines' (the paper does not say; without it the method
memorises its few shots and predicts one point on every other image, see ``no-label-aug`` and the README);
``no-recon``, ``no-2d``, ``no-3d`` and ``no-uncertainty`` are the rows of Table 3; ``scale-free`` divides
Eq. 3 and Eq. 5 by each predicted shape's spread, so that shrinking every prediction does not lower them (not
the paper's; measured in the README); ``only-recon``, ``only-2d`` and ``only-3d`` are the other direction of
Table 3: the supervised baseline (Eq. 2 on the augmented labeled images) plus one unsupervised term on the
unlabeled images -- Eq. 9, Eq. 3 or Eq. 5 -- to see what each term does on its own; ``shared-batch`` is their
control, the supervised baseline with the unlabeled images in its detector batch and no term on them (what sharing
BatchNorm statistics with them does);
``supervised`` is the same detector trained on the labeled examples alone with the paper's few-shot loss
(soft-argmax L1, Eq. 2) and standard augmentation; ``xiao`` is the baseline of Tables 1 and 5-7 as Xiao et
al. [92] train it: heatmap regression (MSE to Gaussians around the labels, arg-max decoding with a quarter-pixel
shift) with their augmentation (rotation +-40 deg, scale 0.65-1.35, flips; no colour or translation);
``xiao-depth`` is Table 2's baseline: ``xiao`` with the depth of Eq. 4 additionally learned from the labeled
examples' 3D keypoints (models/losses.py::depth_loss; needs a dataset with ``keypoints_3d``).  Random instead of k-means shots (Table 3's last
ablation) is a choice of examples made by the data side, not a model variant.
"""
from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass(frozen=True)
class Variant:
    name: str
    recon: bool = True            # Eq. 9: edge map + masked image -> UNet -> image
    geo2d: bool = True            # Eq. 3: equivariance to 2D transformations
    geo3d: bool = True            # Eq. 5: part-wise 3D similarity
    uncertainty: bool = True      # Eq. 7: uncertain keypoints draw fainter edges (off: every keypoint certain)
    smoothing: bool = True        # Supplement A: landmark smoothing, where the card has smoothing groups
    unlabeled: bool = True        # uses the unlabeled images at all
    augment_labeled: bool = True  # random affine + flip + colour jitter on the labeled images: without it the
                                  # method memorises its few shots and collapses on every other image (README)
    scale_invariant: bool = False  # Eq. 3 and Eq. 5 divided by each shape's spread: blind to shrinking
    heatmap_regression: bool = False  # Xiao et al.: MSE to Gaussian heatmaps instead of Eq. 2, arg-max decoding
    depth_supervised: bool = False    # Table 2's baseline: depth learned from 3D labels (ours needs 2D only)

    @property
    def definition(self) -> str:
        """The switches as one short string, e.g. "recon geo2d geo3d uncertainty smoothing unlabeled
        augment_labeled": recorded with every run, so a run of an older definition of a name is not mistaken
        for one of today's (jobs/grid.py::job_settings)."""
        return " ".join(f.name for f in fields(self) if f.type in (bool, "bool") and getattr(self, f.name))


VARIANTS: dict[str, Variant] = {v.name: v for v in (
    Variant("full"),
    Variant("no-recon", recon=False),
    Variant("no-2d", geo2d=False),
    Variant("no-3d", geo3d=False),
    Variant("no-uncertainty", uncertainty=False),
    Variant("no-label-aug", augment_labeled=False),
    Variant("scale-free", scale_invariant=True),
    Variant("only-recon", geo2d=False, geo3d=False, smoothing=False),
    Variant("only-2d", recon=False, geo3d=False, uncertainty=False, smoothing=False),
    Variant("only-3d", recon=False, geo2d=False, uncertainty=False, smoothing=False),
    Variant("shared-batch", recon=False, geo2d=False, geo3d=False, uncertainty=False, smoothing=False),
    Variant("supervised", recon=False, geo2d=False, geo3d=False, uncertainty=False, smoothing=False,
            unlabeled=False),
    Variant("xiao", recon=False, geo2d=False, geo3d=False, uncertainty=False, smoothing=False,
            unlabeled=False, heatmap_regression=True),
    Variant("xiao-depth", recon=False, geo2d=False, geo3d=False, uncertainty=False, smoothing=False,
            unlabeled=False, heatmap_regression=True, depth_supervised=True),
)}

#: Xiao et al.'s augmentation (their COCO recipe), applied to the labeled images of the ``xiao`` variant
XIAO_AUGMENTATION = dict(rotation_deg=40.0, scale_min=0.65, scale_max=1.35, translation=0.0, colour=0.0)


def get_variant(name: str) -> Variant:
    try:
        return VARIANTS[name]
    except KeyError:
        raise ValueError(f"unknown variant {name!r}; known: {', '.join(VARIANTS)}") from None

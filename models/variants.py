"""The method and its ablations by name: which losses and inputs each variant uses, in one place.

``full`` is §3; ``no-recon``, ``no-2d``, ``no-3d`` and ``no-uncertainty`` are the rows of Table 3;
``supervised`` is the Xiao et al. [92] baseline of Tables 1 and 5-7 (the same detector trained on the
labeled examples alone, with standard augmentation).  Random instead of k-means shots (Table 3's last
ablation) is a choice of examples made by the data side, not a model variant.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Variant:
    name: str
    recon: bool = True            # Eq. 9: edge map + masked image -> UNet -> image
    geo2d: bool = True            # Eq. 3: equivariance to 2D transformations
    geo3d: bool = True            # Eq. 5: part-wise 3D similarity
    uncertainty: bool = True      # Eq. 7: uncertain keypoints draw fainter edges (off: every keypoint certain)
    smoothing: bool = True        # Supplement A: landmark smoothing, where the card has smoothing groups
    unlabeled: bool = True        # uses the unlabeled images at all
    augment_labeled: bool = False  # random affine + flip + colour jitter on the labeled images (supervised)


VARIANTS: dict[str, Variant] = {v.name: v for v in (
    Variant("full"),
    Variant("no-recon", recon=False),
    Variant("no-2d", geo2d=False),
    Variant("no-3d", geo3d=False),
    Variant("no-uncertainty", uncertainty=False),
    Variant("supervised", recon=False, geo2d=False, geo3d=False, uncertainty=False, smoothing=False,
            unlabeled=False, augment_labeled=True),
)}


def get_variant(name: str) -> Variant:
    try:
        return VARIANTS[name]
    except KeyError:
        raise ValueError(f"unknown variant {name!r}; known: {', '.join(VARIANTS)}") from None

"""`fskp label`: label a dataset from a few examples (paper §1, §6).

Modules: ``inputs`` (reading projects and labels, links), ``shots`` (shots, crop, the prepared dataset),
``job`` (``label``: training, prediction, scoring), ``scoring`` (held-out error), ``outputs`` (the files
`fskp label` and `fskp predict` write).

    labeled frames + unlabeled frames/videos  ->  shots (k-means, or all)  ->  crop  ->  prepared dataset
    ->  Ray Train (the full method, `fskp train`'s machinery)  ->  Ray Data batch prediction of every frame
    ->  held-out error (with --shots)  ->  DeepLabCut CSV, COCO JSON, overlays, suggestions

Inputs (``read_*``): a DeepLabCut project, or a folder of images / a video with a COCO keypoints JSON
or a DeepLabCut CSV.  Every labeled frame becomes an ``Instance`` in *source* pixels.

Crop (documented choice): one fixed square crop for every frame, the box around the training shots'
labeled keypoints made square and enlarged by ``margin`` of its larger side on each side (DeepLabCut
users know this as the project's crop).  Only the shots' labels place it, never held-out ones.  A user
who knows the region passes ``--crop x0,y0,x1,y1``.  The detector then works at ``size`` pixels on that
region instead of squeezing a whole arena into it.

Held-out scoring (``--shots N``): in source pixels; a keypoint is correct within 10 % of the largest side
of that frame's labeled-keypoint box, never under 20 px -- the scoring of ../shared/data/README.md that
DeepLabCut's and SLEAP's reference numbers use.
"""

"""The embedded benchmark: procedurally rendered 3D objects with exact 2D/3D keypoints and visibility.

Categories (each with a card in pipeline/cards/): ``synth_face`` (a soft, deformable head),
``synth_car`` (a rigid car), ``synth_animal`` (an articulated four-legged animal).  ``fskp synth``
writes a prepared dataset of any size from a seed; see ``dataset.generate``.

This module imports nothing heavy: the category names are listed here for the command line.
"""
from __future__ import annotations

CATEGORIES = ("face", "car", "animal")


def load_category(name: str):
    """The Category object for 'face', 'car' or 'animal' (or the card name 'synth_face', ...)."""
    short = name.removeprefix("synth_")
    if short == "face":
        from pipeline.synth.face import Face
        return Face()
    if short == "car":
        from pipeline.synth.car import Car
        return Car()
    if short == "animal":
        from pipeline.synth.animal import Animal
        return Animal()
    raise ValueError(f"unknown synthetic category {name!r} (one of {', '.join(CATEGORIES)})")

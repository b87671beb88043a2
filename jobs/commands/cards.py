"""List the dataset cards, or show and validate one.

  fskp cards              # every card with its keypoint count and metric
  fskp cards wflw         # one card in full
  fskp cards --check F    # validate a card file of your own
"""
from __future__ import annotations

HELP = "list, show or validate dataset cards"


def register(p):
    p.add_argument("name", nargs="?", help="card name (e.g. wflw) or path to a card YAML")
    p.add_argument("--check", metavar="FILE", help="validate a card file and report what it defines")


def run(args) -> int:
    from pipeline.card import card_names, load_card

    if args.check or args.name:
        card = load_card(args.check or args.name)
        if args.check:
            print(f"{args.check}: ok — {card.num_keypoints} keypoints, {len(card.links)} links, "
                  f"{len(card.parts)} parts, {len(card.flip_pairs)} flip pairs, metric {card.metric.label}")
        else:
            print(card.to_yaml())
        return 0
    for name in card_names():
        card = load_card(name)
        print(f"{name:22s} {card.num_keypoints:4d} keypoints  {card.metric.label:14s} {card.title}")
    return 0

"""Fetch, verify and unpack a dataset described by its card, into ROOT/<name>/.

  fskp download dlc-reaching                       # into ./datasets/dlc-reaching
  fskp download my-card.yaml --root ~/datasets     # a card file of your own

Each file of the card's source.downloads is fetched with a progress line on stderr, checked against the
card's sha256 (or, where the card has none, against the sha256 recorded in ROOT/<name>/.checksums.json at
its first download), then archives (.zip, .tar, .tar.gz, .tgz) are unpacked next to it.  A broken download
leaves <file>.part; running the same command again resumes it.  Files already in place and verified are
not fetched again.

Where the dataset's license does not allow automatic download (source.auto_download: false), nothing is
fetched: the command prints the homepage, license, how to obtain the files, the folder layout
`fskp prepare` expects, and the citation.

Exit status: 0 when the files are in place, and also when only the instructions were printed;
2 on an error (HTTP error, checksum mismatch, a connection that broke after --retries attempts).
"""
from __future__ import annotations

HELP = "fetch, verify and unpack a dataset from its card (or print how to obtain it)"


def register(p):
    p.add_argument("name", help="card name (e.g. dlc-reaching) or path to a card YAML")
    p.add_argument("--root", default="datasets", help="folder to download into; the dataset goes to ROOT/<name> "
                                                      "(default ./datasets)")
    p.add_argument("--retries", type=int, default=3,
                   help="times to resume a download whose connection breaks, before giving up (default 3)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the server (default 30)")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")


def run(args) -> int:
    import sys

    from pipeline.card import load_card
    from pipeline.download import download_card, manual_instructions

    card = load_card(args.name)
    if not card.source.auto_download:
        print(manual_instructions(card, args.root))
        return 0
    folder = download_card(card, args.root, retries=max(args.retries, 0), timeout=args.timeout,
                           progress=None if args.quiet else sys.stderr)
    print(f"{folder}: {len(card.source.downloads)} file(s) downloaded and verified")
    if card.source.layout:
        print("expected layout:\n" + "\n".join("  " + ln for ln in card.source.layout.rstrip().splitlines()))
    return 0

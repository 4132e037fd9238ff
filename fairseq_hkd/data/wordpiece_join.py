"""WordPiece tokens -> the words of the normalised transcript they came from.

A BERT tokenizer splits every punctuation character off as a token of its own, without ``##``
("i'll" -> ``i ' ll``), so the spaces of the text are not in the tokens. ``join_wordpieces``
puts them back by rule; it is exact (``join_wordpieces(tokenize(t)) == normalise(t)``) for:

- ``##`` pieces: glued to the previous token;
- apostrophes (``'`` and ``’``) inside words ("i'll", "don't", "o'clock", "ma'am", "fo'c'sle",
  "james's", "i'd've"), at the start of a text ("'tis ...") and at its end ("... the boys'");
- trailing apostrophes before a word: after a word of 2+ letters ending in ``s`` (plural
  possessive: "the boys' toys") or in ``in`` (dropped g: "goin' home"), unless the next token is a
  contraction suffix (s t d ll ve re m: "this'll", "ain't");
- leading apostrophes after a word, before ``tis twas twere twill em til cause neath gainst bout
  un`` ("give 'em", "and 'tis");
- hyphens between words ("twenty-one", "mother-in-law");
- closing punctuation ``. , ! ? ; : % ) ] }`` (no space before), opening ``( [ { $`` (no space
  after), and ``. , :`` between digits ("3.5", "1,000", "10:30").

Not exact (documented, tested): apostrophes that break these rules ("a cup o' tea" -> "a cup
o'tea", "rock 'n' roll" -> "rock'n'roll" (the synthesized corpus spells it so), "jesus'sake" ->
"jesus' sake"), a hyphen used as a dash between spaced words ("yes - no" -> "yes-no"), repeated
punctuation ("--", "..."), ``"`` and other punctuation (kept as separate words), and words the
tokenizer maps to ``[UNK]``. Every sentence of the synthesized corpus's sources round trips
(tests/test_wordpiece_join.py).
"""
from __future__ import annotations

from typing import List, Sequence

APOSTROPHES = frozenset("'\u2019")
HYPHENS = frozenset("-")
CLOSING = frozenset(".,!?;:%)]}")
OPENING = frozenset("([{$")
DIGIT_SEPARATORS = frozenset(".,:")
RULED = APOSTROPHES | HYPHENS | CLOSING | OPENING
CONTRACTION_SUFFIXES = frozenset({"s", "t", "d", "ll", "ve", "re", "m"})
LEADING_APOSTROPHE_WORDS = frozenset(
    {"tis", "twas", "twere", "twill", "em", "til", "cause", "neath", "gainst", "bout", "un"})


def merge_pieces(tokens: Sequence[str]) -> List[str]:
    """Glue ``##`` continuation pieces to the previous token (a leading one just loses ``##``)."""
    items: List[str] = []
    for t in tokens:
        if t.startswith("##") and len(t) > 2:
            if items:
                items[-1] += t[2:]
            else:
                items.append(t[2:])
        else:
            items.append(t)
    return items


def _word(items: Sequence[str], i: int):
    """items[i] when it exists and is not a ruled punctuation character, else None."""
    return items[i] if 0 <= i < len(items) and items[i] not in RULED else None


def _apostrophe(items: Sequence[str], i: int):
    """(join left, join right) for the apostrophe items[i]."""
    left, right = _word(items, i - 1), _word(items, i + 1)
    if left is None or right is None:
        return left is not None, right is not None
    if right in LEADING_APOSTROPHE_WORDS:
        return False, True
    if right not in CONTRACTION_SUFFIXES and len(left) > 1 and left.endswith(("s", "in")):
        return True, False
    return True, True


def join_wordpieces(tokens: Sequence[str]) -> str:
    """WordPiece tokens -> text with single spaces (rules in the module docstring)."""
    items = merge_pieces(tokens)
    glue = [False] * max(len(items) - 1, 0)  # glue[i]: no space between items[i] and items[i + 1]
    for i, it in enumerate(items):
        if it not in RULED:
            continue
        left, right = _word(items, i - 1) is not None, _word(items, i + 1) is not None
        if it in APOSTROPHES:
            left, right = _apostrophe(items, i)
        elif it in DIGIT_SEPARATORS and left and right and items[i - 1][-1].isdigit() and items[i + 1][0].isdigit():
            pass  # 3.5, 1,000, 10:30
        elif it in CLOSING:
            left, right = i > 0, False
        elif it in OPENING:
            left, right = False, i + 1 < len(items)
        # hyphens: joined to the words on either side
        if left and i > 0:
            glue[i - 1] = True
        if right and i < len(glue):
            glue[i] = True
    out = items[:1]
    for i, it in enumerate(items[1:]):
        out.append(it if glue[i] else " " + it)
    return "".join(out)

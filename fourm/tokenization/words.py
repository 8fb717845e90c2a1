"""Text <-> words: BERT's uncased pre-tokenization in Python, and the spacing that joins words back.

4M-21 (arXiv 2406.09406) writes captions and class names over BERT's uncased WordPiece vocabulary
(BERT, arXiv 1810.04805, section 3 and ``tokenization.py``: lower case, accents stripped, punctuation
split off). :func:`split_words` does that normalisation and pre-tokenization, one whitespace word at a
time so that truncation never cuts a word in half; :func:`join_words` is its inverse up to spacing,
and :func:`normalize_text` is the canonical form a caption round-trips to.
"""

from __future__ import annotations

import re
import unicodedata


def _is_punctuation(ch: str) -> bool:
    # BERT's rule (and HF's BertPreTokenizer): every ASCII non-alphanumeric symbol, plus Unicode P*
    cp = ord(ch)
    return 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126 or \
        unicodedata.category(ch).startswith("P")


def _is_cjk(cp: int) -> bool:
    return (0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x20000 <= cp <= 0x2A6DF or 0x2A700 <= cp <= 0x2B73F
            or 0x2B740 <= cp <= 0x2B81F or 0x2B820 <= cp <= 0x2CEAF or 0xF900 <= cp <= 0xFAFF
            or 0x2F800 <= cp <= 0x2FA1F)


def _normalize_chars(text: str) -> str:
    """HF ``BertNormalizer(clean_text, handle_chinese_chars, strip_accents, lowercase)`` in Python."""
    if text.isascii():
        return text.translate(_ASCII_CLEAN).lower()
    out = []
    for ch in text:
        cp = ord(ch)
        if cp == 0 or cp == 0xFFFD or (ch not in "\t\n\r" and unicodedata.category(ch) in ("Cc", "Cf", "Cn", "Co")):
            continue
        if ch.isspace():
            out.append(" ")
        elif _is_cjk(cp):
            out.append(f" {ch} ")
        else:
            out.append(ch)
    text = unicodedata.normalize("NFD", "".join(out))
    return "".join(ch for ch in text if unicodedata.category(ch) != "Mn").lower()


_ASCII_CLEAN = {**{c: None for c in [*range(0, 9), 11, 12, *range(14, 32), 127]}, 9: " ", 10: " ", 13: " "}
_ASCII_PIECES = re.compile(r"[!-/:-@\[-`{-~]|[^!-/:-@\[-`{-~]+")  # one ASCII punctuation mark, or a run of others


def split_words(text: str) -> list[list[str]]:
    """Normalised text as whitespace words, each split into its BERT pre-tokens (punctuation alone)."""
    words = []
    for chunk in _normalize_chars(text).split():
        if chunk.isascii():
            words.append(_ASCII_PIECES.findall(chunk))
            continue
        pieces, current = [], ""
        for ch in chunk:
            if _is_punctuation(ch):
                if current:
                    pieces.append(current)
                pieces.append(ch)
                current = ""
            else:
                current += ch
        if current:
            pieces.append(current)
        words.append(pieces)
    return words


_CLOSING = set(".,;:!?%)]}")
_OPENING = set("([{$#")
_GLUE = set("-/'’")  # no space on either side: "t-shirt", "it's", "and/or"


def join_words(words: list[str]) -> str:
    """Pre-tokens back to text with the usual spacing of English prose.

    No space before closing punctuation, after opening brackets, around ``- / '``; double quotes
    alternate between opening and closing; ``3 . 5``, ``1 , 000th`` and ``10 : 30`` (digits around . , :) join.
    Spacing the rules cannot tell apart is normalised (``a - b`` becomes ``a-b``).
    """
    out: list[str] = []
    quote_open = False
    for i, w in enumerate(words):
        prev = words[i - 1] if i else None
        space = prev is not None and not (w in _CLOSING or w in _GLUE or prev in _OPENING or prev in _GLUE)
        if prev == '"' and quote_open:  # just after an opening quote
            space = False
        if prev in (".", ",", ":") and i >= 2 and words[i - 2][-1].isdigit() and w[0].isdigit():
            space = False
        if w == '"':
            space = space and not quote_open
            quote_open = not quote_open
        if space:
            out.append(" ")
        out.append(w)
    return "".join(out)


def normalize_text(text: str) -> str:
    """The canonical form a caption round-trips to: lower case, accents stripped, spacing of :func:`join_words`."""
    return join_words([p for w in split_words(text) for p in w])

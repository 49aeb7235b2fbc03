"""The fixed character vocabulary of the token datasets (shakespeare): LEAF's 80 characters plus
one unknown token.

Fixed rather than derived from the data, so every subset of clients, every seed and every run
share one id for one character, and a saved model stays readable. Id i is CHARACTERS[i]:

- ids 0..79: LEAF's characters, in LEAF's order: newline, space, ! " & ' ( ) , - . 0-9 : ; > ?
  A-Z [ ] a-z }
- id 80 (UNKNOWN_ID): every other character; it decodes to U+FFFD, the replacement character.
"""

from __future__ import annotations

import numpy as np

LEAF_CHARACTERS = "\n !\"&'(),-.0123456789:;>?ABCDEFGHIJKLMNOPQRSTUVWXYZ[]abcdefghijklmnopqrstuvwxyz}"
UNKNOWN = "\ufffd"
CHARACTERS = LEAF_CHARACTERS + UNKNOWN
UNKNOWN_ID = len(LEAF_CHARACTERS)

# Code point -> id for the ASCII range (LEAF's characters are all ASCII); anything above is unknown.
_ASCII_IDS = np.full(128, UNKNOWN_ID, dtype=np.int64)
_ASCII_IDS[[ord(c) for c in LEAF_CHARACTERS]] = np.arange(len(LEAF_CHARACTERS))


def encode(text: str) -> np.ndarray:
    """int64 ids [len(text)] of `text`'s characters (UNKNOWN_ID for characters outside the vocabulary)."""
    points = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    return np.where(points < 128, _ASCII_IDS[np.minimum(points, 127)], UNKNOWN_ID)


def decode(ids: np.ndarray) -> str:
    """The characters of `ids` (each in [0, len(CHARACTERS)))."""
    ids = np.asarray(ids)
    if ids.size and (ids.min() < 0 or ids.max() >= len(CHARACTERS)):
        raise ValueError(f"ids must lie in [0, {len(CHARACTERS)}), got [{ids.min()}, {ids.max()}]")
    return "".join(CHARACTERS[i] for i in ids.reshape(-1).tolist())

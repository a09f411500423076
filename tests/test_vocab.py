import random

import pandas as pd
import pytest

from ltnb.text import divergence, vocab
from ltnb.base.config import VocabSettings
from ltnb.base._io import write_parquet
from ltnb.text.tokens import load_splits

WORDS = ("good great bad awful movie phone food service plot screen battery tasty slow fast "
         "love hate wonderful terrible boring exciting actor camera waiter price").split()


def _corpus(tmp_path, n=60):
    rng = random.Random(0)
    rows = []
    for domain in ("alpha", "beta"):
        for i in range(n):
            split = "train" if i < n // 2 else ("validation" if i < 3 * n // 4 else "test")
            text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12)))
            rows.append({"text": text, "label": i % 2, "domain": domain, "source": "test", "split": split})
    study = tmp_path / "study"
    (study / "data").mkdir(parents=True)
    write_parquet(study / "data" / "corpus.parquet", pd.DataFrame(rows))  # as the data stage writes it
    return study, pd.DataFrame(rows)


def test_build_encodes_every_domain_and_round_trips(tmp_path):
    study, table = _corpus(tmp_path)
    info = vocab.build(study, VocabSettings(vocab_size=60, max_len=500), log=lambda *_: None)
    assert info["vocab_size"] == 60 and info["domains"] == ["alpha", "beta"]
    sp = vocab.processor(study)
    assert sp.pad_id() == vocab.PAD_ID and sp.unk_id() == vocab.UNK_ID
    splits, size = vocab.load_encoded(study, "beta")
    assert size == 60
    beta = table[table.domain == "beta"]
    for split in ("train", "validation", "test"):
        part = beta[beta.split == split]
        assert len(splits[split]) == len(part)
        assert splits[split].labels.tolist() == part.label.tolist()
        # decoding the cached ids gives back the text
        assert sp.decode(splits[split].sequence(0).tolist()) == part.text.iloc[0]
    assert 0 not in splits["train"].ids.tolist()  # the pad id never appears in real text


def test_cache_is_reused_and_keyed_by_settings(tmp_path):
    study, _ = _corpus(tmp_path)
    said = []
    a = vocab.build(study, VocabSettings(vocab_size=60), log=said.append)
    b = vocab.build(study, VocabSettings(vocab_size=60), log=said.append)
    assert a["key"] == b["key"] and "already built" in said[-1]
    c = vocab.build(study, VocabSettings(vocab_size=50), log=said.append)
    assert c["key"] != a["key"] and vocab.data_key(study) == c["key"]
    assert (vocab.vocab_root(study) / a["key"] / "info.json").exists()  # old encodings kept


def test_no_training_sentence_is_dropped_for_its_length(tmp_path):
    """SentencePiece skips sentences longer than max_sentence_length (default 4192 bytes) silently; the
    vocabulary sets it to the longest training sentence, so a long text's rare characters are learnt."""
    study, table = _corpus(tmp_path)
    long = " ".join(["zeta\u03b6\u03b6 " + w for w in WORDS] * 30)  # ~6 KB, the only text with a zeta
    assert len(long.encode()) > 4192
    table.loc[0, "text"] = long
    write_parquet(study / "data" / "corpus.parquet", table)
    vocab.build(study, VocabSettings(vocab_size=60, character_coverage=1.0, max_len=5000), log=lambda *_: None)
    sp = vocab.processor(study)
    assert sp.piece_to_id("\u03b6") != sp.unk_id()
    assert vocab.UNK_ID not in sp.encode(long)


def test_truncation_to_max_len(tmp_path):
    study, _ = _corpus(tmp_path)
    info = vocab.build(study, VocabSettings(vocab_size=60, max_len=4), log=lambda *_: None)
    splits = load_splits(vocab.current(study) / "tokens" / "alpha.safetensors")
    assert int(splits["train"].lengths.max()) <= 4
    assert info["truncated_sequences"] > 0


def test_too_large_vocabulary_names_the_largest_size(tmp_path):
    study, _ = _corpus(tmp_path)
    with pytest.raises(vocab.VocabError, match=r"vocab_size=8000 is too large.*at most \d+ pieces.*vocab_size=\d+"):
        vocab.build(study, VocabSettings(vocab_size=8000), log=lambda *_: None)
    assert not (vocab.vocab_root(study) / "CURRENT.json").exists()


def test_missing_data_stage_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="run the data stage"):
        vocab.build(tmp_path / "nothing")
    with pytest.raises(FileNotFoundError, match="run the data stage"):
        vocab.load_encoded(tmp_path / "nothing", "alpha")


def test_divergence_of_a_built_study(tmp_path):
    study, _ = _corpus(tmp_path)
    vocab.build(study, VocabSettings(vocab_size=60), log=lambda *_: None)
    m = divergence.compute(study, log=lambda *_: None)
    assert m.shape == (2, 2) and 0 < m.loc["alpha", "beta"] < 1
    assert (study / "divergence" / "jsd.parquet").exists()

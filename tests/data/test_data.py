from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from puzzle.data import (
    EOS_TOKEN,
    cached_tokens,
    encode_corpus,
    eos_id,
    is_held_out,
    iter_batches,
    load_tokenizer,
    pack,
    pack_tensor,
    read_corpus,
    read_default_corpus,
    save_tokenizer,
    split_corpus,
    train_bpe,
)
from puzzle.errors import DataError

SAMPLE = (
    "def add(a, b):\n    return a + b\n\n\nclass Point:\n    def __init__(self, x, y):\n        self.x = x\n"
    "        self.y = y\n\n    def norm(self):\n        return (self.x ** 2 + self.y ** 2) ** 0.5\n"
)


def make_tree(root: Path, n: int = 40) -> Path:
    for i in range(n):
        sub = root / f"pkg{i % 4}"
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"mod_{i}.py").write_text(f"# module {i}\n" + SAMPLE.replace("add", f"add_{i}"))
    return root


@pytest.fixture(scope="module")
def bpe(tmp_path_factory: pytest.TempPathFactory):
    root = make_tree(tmp_path_factory.mktemp("bpe_corpus"))
    return train_bpe(read_corpus(root), vocab_size=400)


# --- corpus readers ---------------------------------------------------------------------------------------


def test_read_text_file(tmp_path: Path) -> None:
    file = tmp_path / "a.txt"
    file.write_text("hello world\n")
    corpus = read_corpus(file)
    assert [(d.name, d.text) for d in corpus.documents] == [("a.txt", "hello world\n")]


def test_read_directory_recursive_skips_binary_and_empty(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "deep.py").write_text("x = 1\n")
    (tmp_path / "top.md").write_text("# title\n")
    (tmp_path / "blob.bin").write_bytes(b"\x00\x01\x02\xff")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    (tmp_path / "empty.txt").write_text("  \n")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    corpus = read_corpus(tmp_path)
    assert [d.name for d in corpus.documents] == ["a/b/deep.py", "top.md"]


def test_read_jsonl(tmp_path: Path) -> None:
    file = tmp_path / "data.jsonl"
    file.write_text(json.dumps({"text": "first doc", "id": 1}) + "\n\n" + json.dumps({"text": "second"}) + "\n")
    corpus = read_corpus(file)
    assert [(d.name, d.text) for d in corpus.documents] == [("data.jsonl:1", "first doc"), ("data.jsonl:3", "second")]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"text": "ok"}\nnot json\n', "data.jsonl:2: not valid JSON"),
        ('{"body": "no text field"}\n', 'string "text" field'),
        ('["a list"]\n', 'string "text" field'),
    ],
)
def test_bad_jsonl_names_the_line(tmp_path: Path, content: str, message: str) -> None:
    file = tmp_path / "data.jsonl"
    file.write_text(content)
    with pytest.raises(DataError, match=message.replace("[", r"\[")):
        read_corpus(file)


def test_missing_empty_and_binary_inputs(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        read_corpus(tmp_path / "nope.txt")
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(DataError, match="holds no text"):
        read_corpus(tmp_path / "empty.txt")
    (tmp_path / "bin.dat").write_bytes(b"\x00\x00abc")
    with pytest.raises(DataError, match="not UTF-8 text"):
        read_corpus(tmp_path / "bin.dat")
    empty_dir = tmp_path / "emptydir"
    empty_dir.mkdir()
    with pytest.raises(DataError, match="no readable text files"):
        read_corpus(empty_dir)


def test_unreadable_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    file = tmp_path / "secret.txt"
    file.write_text("text")
    file.chmod(0)
    try:
        if _can_read(file):  # root ignores permissions: cause the same OS error the only other way
            real = Path.read_bytes

            def denied(self: Path) -> bytes:
                if self == file:
                    raise PermissionError(13, "Permission denied")
                return real(self)

            monkeypatch.setattr(Path, "read_bytes", denied)
        with pytest.raises(DataError, match=r"cannot read corpus file .*secret\.txt: Permission denied"):
            read_corpus(file)
    finally:
        file.chmod(0o644)


def _can_read(file: Path) -> bool:
    try:
        file.read_bytes()
    except OSError:
        return False
    return True


def test_default_corpus_is_stdlib_without_tests() -> None:
    corpus = read_default_corpus()
    names = [d.name for d in corpus.documents]
    assert "os.py" in names and "json/decoder.py" in names
    assert not any(n.startswith(("test/", "site-packages/", "encodings/")) for n in names)
    assert 3_000_000 < corpus.n_chars < 30_000_000


# --- split ----------------------------------------------------------------------------------------------


def test_split_is_deterministic_and_by_file(tmp_path: Path) -> None:
    corpus = read_corpus(make_tree(tmp_path, n=200))
    train_a, held_a = split_corpus(corpus, 0.2)
    train_b, held_b = split_corpus(read_corpus(tmp_path), 0.2)
    assert [d.name for d in held_a.documents] == [d.name for d in held_b.documents]
    assert [d.name for d in train_a.documents] == [d.name for d in train_b.documents]
    train_names, held_names = {d.name for d in train_a.documents}, {d.name for d in held_a.documents}
    assert not train_names & held_names
    assert train_names | held_names == {d.name for d in corpus.documents}
    assert 20 <= len(held_names) <= 60  # ~20 % of 200 files
    # A file's side depends only on its own name: removing other files does not move it.
    for name in list(held_names)[:5]:
        (tmp_path / name).unlink()
    _, held_c = split_corpus(read_corpus(tmp_path), 0.2)
    assert {d.name for d in held_c.documents} == held_names - set(list(held_names)[:5])


def test_split_of_default_corpus_holds_out_about_five_percent() -> None:
    corpus = read_default_corpus()
    train, held = split_corpus(corpus)
    assert 0.02 < len(held.documents) / len(corpus.documents) < 0.1
    assert all(is_held_out(d.name) for d in held.documents)
    assert not any(is_held_out(d.name) for d in train.documents)


# --- tokenizer ------------------------------------------------------------------------------------------


def test_bpe_training_round_trips_and_compresses(bpe, tmp_path: Path) -> None:
    assert bpe.get_vocab_size() <= 400
    assert eos_id(bpe) == bpe.token_to_id(EOS_TOKEN) == 0
    text = SAMPLE + "unseen ünïcödé ☃ text\n"
    ids = bpe.encode(text).ids
    assert bpe.decode(ids) == text
    assert len(SAMPLE) / len(bpe.encode(SAMPLE).ids) > 2.5  # merges learned from the corpus
    assert len(bpe.encode("self").ids) == 1
    save_tokenizer(bpe, tmp_path, model_max_length=64)
    loaded = load_tokenizer(tmp_path)
    assert loaded.encode(text).ids == ids
    assert json.loads((tmp_path / "tokenizer_config.json").read_text())["eos_token"] == EOS_TOKEN


def test_load_tokenizer_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"tokenizer\.json"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(DataError, match="cannot load tokenizer"):
        load_tokenizer(tmp_path)


# --- packing and cache ----------------------------------------------------------------------------------


def test_pack_predicts_every_token_once() -> None:
    tokens = np.arange(23, dtype=np.int32)
    rows = pack(tokens, 5)
    assert [r.tolist() for r in rows] == [list(range(i, i + 6)) for i in (0, 5, 10, 15)]
    full = pack(tokens, 5, drop_last=False)
    assert full[-1].tolist() == [20, 21, 22]
    targets = np.concatenate([r[1:] for r in full])
    assert targets.tolist() == list(range(1, 23))
    assert pack_tensor(tokens, 5).shape == (4, 6)
    with pytest.raises(DataError, match="too few"):
        pack_tensor(tokens[:4], 5)


def test_encode_separates_documents_with_eos(bpe, tmp_path: Path) -> None:
    corpus = read_corpus(make_tree(tmp_path, n=3))
    tokens = encode_corpus(corpus, bpe)
    assert tokens.dtype == np.int32
    assert (tokens == eos_id(bpe)).sum() == 3 and tokens[-1] == eos_id(bpe)
    pieces = np.split(tokens, np.flatnonzero(tokens == eos_id(bpe))[:-1] + 1)
    assert [bpe.decode(p[:-1].tolist()) for p in pieces] == [d.text for d in corpus.documents]


def test_token_cache_is_reused_and_keyed(bpe, tmp_path: Path) -> None:
    corpus = read_corpus(make_tree(tmp_path / "corpus", n=6))
    cache = tmp_path / "cache"
    first = cached_tokens(corpus, bpe, "train", cache)
    files = list(cache.iterdir())
    assert len(files) == 1 and files[0].suffix == ".npy"
    # Second run reads the file: prove it by planting a marker value in it.
    planted = first.copy()
    planted[0] = 12345
    np.save(files[0], planted)
    assert cached_tokens(corpus, bpe, "train", cache)[0] == 12345
    # Another split name, or changed contents, is another key.
    cached_tokens(corpus, bpe, "held_out", cache)
    (tmp_path / "corpus" / "pkg0" / "mod_0.py").write_text("changed = True\n")
    changed = cached_tokens(read_corpus(tmp_path / "corpus"), bpe, "train", cache)
    assert len(list(cache.glob("*.npy"))) == 3
    assert not np.array_equal(changed, first)
    assert not list(cache.glob(".*.tmp"))  # no temp files left behind


def test_batches_depend_only_on_step() -> None:
    rows = np.arange(50).reshape(10, 5)
    run = iter_batches(rows, 3, seed=7)
    straight = [next(run) for _ in range(8)]
    resumed = iter_batches(rows, 3, seed=7, start_step=5)
    assert all(np.array_equal(straight[5 + i], next(resumed)) for i in range(3))
    epoch0 = np.concatenate(straight[:3])[:, 0] // 5
    assert len(set(epoch0.tolist())) == 9  # no row repeats within an epoch
    other_seed = iter_batches(rows, 3, seed=8)
    assert not all(np.array_equal(a, next(other_seed)) for a in straight)


def test_single_file_corpus_is_split_by_chunks_of_lines(tmp_path: Path) -> None:
    """One text file is a valid corpus: too few files to hold one out, so its lines are split instead."""
    file = tmp_path / "book.txt"
    file.write_text("".join(f"line {i} of the only file\n" for i in range(5000)))
    corpus = read_corpus(file)
    assert len(corpus.documents) == 1
    train, held = split_corpus(corpus, 0.05)
    assert train.documents and held.documents
    assert 0.01 < held.n_chars / corpus.n_chars < 0.15
    # Every line lands on exactly one side, and the split is the same on a second read.
    assert sorted("".join(d.text for d in train.documents + held.documents).splitlines()) == sorted(
        corpus.documents[0].text.splitlines()
    )
    again_train, again_held = split_corpus(read_corpus(file), 0.05)
    assert [d.name for d in again_held.documents] == [d.name for d in held.documents]
    assert [d.name for d in again_train.documents] == [d.name for d in train.documents]
    assert all(d.name.startswith("book.txt:lines ") for d in held.documents)


def test_tiny_corpus_still_holds_something_out(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("alpha\nbeta\ngamma\n")
    (tmp_path / "b.txt").write_text("delta\n")
    train, held = split_corpus(read_corpus(tmp_path), 0.05)
    assert len(held.documents) == 1 and len(train.documents) == 3
    assert split_corpus(read_corpus(tmp_path), 0.0)[1].documents == ()

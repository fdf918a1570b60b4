"""Text data: corpora, the train / held-out split, tokenizers, packing and the on-disk token cache.

* A **corpus** is a tuple of named documents read from a text file, a directory (recursively, every file that
  decodes as UTF-8 text) or a JSONL file (one document per line, its ``text`` field). With no path, the
  default corpus is the Python standard library source of the running interpreter: real text nobody here
  wrote, present on every machine (site-packages, test suites and the generated ``encodings`` /
  ``pydoc_data`` tables are left out; about 10 MB, 2.5 M tokens).
* The **split** is by document and deterministic: a document is held out when the SHA-256 of its name
  (the path relative to the corpus root) falls in the first ``held_out_fraction`` of the hash range, so it
  never depends on random state, file order or the other files present. A corpus of too few files for that
  (one text file) is split the same way by chunks of lines instead.
* The **tokenizer** is a HF ``tokenizers`` tokenizer: read from a checkpoint's ``tokenizer.json``, or a
  byte-level BPE trained on the corpus for the demo parents. ``EOS`` (``<|endoftext|>``) separates documents.
* **Packing** concatenates the documents' tokens (EOS after each) into one stream and cuts it into rows of
  ``seq_len + 1`` tokens with stride ``seq_len``, so each token is predicted exactly once.
* The **token cache** stores a split's token stream as ``.npy`` under a key made of the split's document
  fingerprint, the tokenizer hash and the split name, written atomically; a second run reuses it.
"""

from __future__ import annotations

import hashlib
import json
import os
import sysconfig
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from puzzle.errors import DataError
from puzzle.files import atomic_path, write_text

if TYPE_CHECKING:
    from tokenizers import Tokenizer

EOS_TOKEN = "<|endoftext|>"
DEFAULT_VOCAB_SIZE = 8192
DEFAULT_HELD_OUT_FRACTION = 0.05

# Directories never read from the default (standard library) corpus: installed third-party packages, test
# suites (larger than the library itself) and generated tables that are not prose or code anyone wrote.
_STDLIB_SKIP_DIRS = frozenset(
    {"site-packages", "dist-packages", "__pycache__", "test", "tests", "idle_test", "encodings", "pydoc_data"}
)
# Directory readers skip these: version control, caches and virtual environments are not corpus text.
_DIR_SKIP = frozenset({".git", ".hg", ".svn", "__pycache__", ".venv", "node_modules", ".mypy_cache", ".ruff_cache"})


@dataclass(frozen=True)
class Document:
    """One text of a corpus; ``name`` is its path relative to the corpus root (``file.jsonl:7`` for JSONL lines)."""

    name: str
    text: str


@dataclass(frozen=True)
class Corpus:
    """Documents in a stable order (sorted by name), with the path they came from."""

    source: str
    documents: tuple[Document, ...]

    @property
    def n_chars(self) -> int:
        return sum(len(d.text) for d in self.documents)

    def fingerprint(self) -> str:
        """SHA-256 over every document's name and text: equal iff the same documents with the same contents."""
        digest = hashlib.sha256()
        for doc in self.documents:
            for part in (doc.name, doc.text):
                data = part.encode("utf-8", errors="surrogatepass")
                digest.update(len(data).to_bytes(8, "little"))
                digest.update(data)
        return digest.hexdigest()


# --- corpora ---------------------------------------------------------------------------------------------


def default_corpus_path() -> Path:
    """The standard library directory of the running interpreter."""
    return Path(sysconfig.get_paths()["stdlib"])


def read_default_corpus() -> Corpus:
    """The Python standard library sources (``*.py``), without site-packages, tests and generated tables."""
    root = default_corpus_path()
    if not root.is_dir():
        raise DataError(f"the Python standard library was not found at {root}; pass a corpus path instead")
    files = [
        p
        for p in root.rglob("*.py")
        if p.is_file() and not _STDLIB_SKIP_DIRS.intersection(p.relative_to(root).parts[:-1])
    ]
    docs = [d for p in files if (d := _read_text_file(p, root, strict=False)) is not None]
    return _corpus(str(root), docs)


def read_corpus(path: str | os.PathLike[str] | None = None) -> Corpus:
    """Read a corpus from a text file, a directory (recursive) or a ``.jsonl`` file; ``None`` = the default.

    Raises ``DataError`` when the path is missing, unreadable, not text, or holds no text at all.
    """
    if path is None:
        return read_default_corpus()
    p = Path(path)
    if not p.exists():
        raise DataError(f"corpus {p} does not exist; pass a text file, a directory of text files or a .jsonl file")
    if p.is_dir():
        return _read_directory(p)
    if p.suffix.lower() == ".jsonl":
        return _corpus(str(p), _read_jsonl(p, p.parent))
    doc = _read_text_file(p, p.parent, strict=True)
    assert doc is not None  # strict mode raises instead of returning None
    return _corpus(str(p), [doc])


def _corpus(source: str, docs: Iterable[Document]) -> Corpus:
    kept = sorted((d for d in docs if d.text.strip()), key=lambda d: d.name)
    if not kept:
        raise DataError(f"corpus {source} holds no text (all files empty or whitespace); point it at real text")
    return Corpus(source=source, documents=tuple(kept))


def _read_directory(root: Path) -> Corpus:
    docs: list[Document] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _DIR_SKIP)
        for name in sorted(filenames):
            file = Path(dirpath) / name
            if not file.is_file():
                continue
            if file.suffix.lower() == ".jsonl":
                docs.extend(_read_jsonl(file, root))
            elif (doc := _read_text_file(file, root, strict=False)) is not None:
                docs.append(doc)
    if not docs:
        raise DataError(f"corpus directory {root} contains no readable text files (UTF-8, no binary files)")
    return _corpus(str(root), docs)


def _read_text_file(file: Path, root: Path, *, strict: bool) -> Document | None:
    """The file as a document; binary / non-UTF-8 files raise (``strict``) or are skipped."""
    try:
        data = file.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read corpus file {file}: {exc.strerror or exc}") from exc
    try:
        if b"\x00" in data:
            raise UnicodeDecodeError("utf-8", data, 0, 1, "NUL byte: binary file")
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        if strict:
            raise DataError(f"corpus file {file} is not UTF-8 text ({exc.reason}); convert it to UTF-8") from exc
        return None
    return Document(name=file.relative_to(root).as_posix(), text=text)


def _read_jsonl(file: Path, root: Path) -> list[Document]:
    rel = file.relative_to(root).as_posix()
    try:
        lines = file.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise DataError(f"cannot read corpus file {file}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise DataError(f"JSONL corpus {file} is not UTF-8 text ({exc.reason})") from exc
    docs = []
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{file}:{lineno}: not valid JSON ({exc.msg}); each line must be an object") from exc
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise DataError(f'{file}:{lineno}: each JSONL line must be an object with a string "text" field')
        docs.append(Document(name=f"{rel}:{lineno}", text=record["text"]))
    return docs


# --- split -----------------------------------------------------------------------------------------------


def is_held_out(name: str, held_out_fraction: float = DEFAULT_HELD_OUT_FRACTION) -> bool:
    """Whether the document ``name`` belongs to the held-out split (a stable hash of the name, no RNG)."""
    return _bucket(name) < held_out_fraction


def split_problem(train: Corpus, held: Corpus, held_out_fraction: float) -> str | None:
    """Why a (train, held-out) split of ``split_corpus`` cannot feed training and evaluation (None when it can)."""
    if held.documents and train.documents:
        return None
    which = "held-out" if not held.documents else "training"
    return (
        f"the corpus has no {which} text at held_out_fraction={held_out_fraction:g} (train "
        f"{len(train.documents)}, held out {len(held.documents)} documents)"
    )


def split_corpus(corpus: Corpus, held_out_fraction: float = DEFAULT_HELD_OUT_FRACTION) -> tuple[Corpus, Corpus]:
    """(train, held-out) by document name; by chunks of lines when too few documents leave a side empty.

    A corpus of one or a few files (a single text file is a valid corpus) has nothing to hold out by file, so
    its documents are cut into chunks of up to ``CHUNK_LINES`` lines (fewer for short corpora, so that there
    are about ``MIN_CHUNKS``), each named ``NAME:lines A-B`` and split by the same hash of its name. If the
    hash still leaves a side empty, the chunk with the smallest hash is held out (or the one with the largest
    kept for training). Only a corpus of fewer than two lines stays all train.
    """
    if not 0.0 <= held_out_fraction < 1.0:
        raise DataError(f"held-out fraction must be in [0, 1), got {held_out_fraction}")
    train, held = _split_by_name(corpus.documents, held_out_fraction)
    if held_out_fraction == 0.0 or (train and held):
        return Corpus(corpus.source, train), Corpus(corpus.source, held)
    chunks = _line_chunks(corpus.documents)
    if len(chunks) < 2:
        return corpus, Corpus(source=corpus.source, documents=())
    train, held = _split_by_name(chunks, held_out_fraction)
    if not held or not train:
        ranked = sorted(chunks, key=lambda d: _bucket(d.name))
        pick = ranked[0] if not held else ranked[-1]
        held = (pick,) if not held else tuple(d for d in held if d is not pick)
        held_names = {d.name for d in held}
        train = tuple(d for d in chunks if d.name not in held_names)
    return Corpus(corpus.source, train), Corpus(corpus.source, held)


CHUNK_LINES = 64
MIN_CHUNKS = 40


def _bucket(name: str) -> float:
    return int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:8], "big") / 2**64


def _split_by_name(docs: tuple[Document, ...], fraction: float) -> tuple[tuple[Document, ...], tuple[Document, ...]]:
    held = tuple(d for d in docs if is_held_out(d.name, fraction))
    return tuple(d for d in docs if not is_held_out(d.name, fraction)), held


def _line_chunks(docs: tuple[Document, ...]) -> tuple[Document, ...]:
    """Every document cut into chunks of whole lines (see ``split_corpus``), in order."""
    lines = [d.text.splitlines(keepends=True) for d in docs]
    total = sum(len(x) for x in lines)
    size = max(1, min(CHUNK_LINES, total // MIN_CHUNKS))
    out = []
    for doc, doc_lines in zip(docs, lines, strict=True):
        for a in range(0, len(doc_lines), size):
            part = doc_lines[a : a + size]
            out.append(Document(f"{doc.name}:lines {a + 1}-{a + len(part)}", "".join(part)))
    return tuple(out)


# --- tokenizers ------------------------------------------------------------------------------------------


def load_tokenizer(path: str | os.PathLike[str]) -> Tokenizer:
    """A tokenizer from ``tokenizer.json`` or a checkpoint directory holding one."""
    from tokenizers import Tokenizer

    file = Path(path)
    if file.is_dir():
        file = file / "tokenizer.json"
    if not file.is_file():
        raise DataError(f"no tokenizer at {file}; a checkpoint directory must contain tokenizer.json")
    try:
        return Tokenizer.from_file(str(file))
    except Exception as exc:  # tokenizers raises a bare Exception on malformed files
        raise DataError(f"cannot load tokenizer {file}: {exc}") from exc


def train_bpe(corpus: Corpus, vocab_size: int = DEFAULT_VOCAB_SIZE) -> Tokenizer:
    """A byte-level BPE (GPT-2 style, ``<|endoftext|>`` = id 0) trained on ``corpus``; encodes any text losslessly."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if vocab_size < 257 + 1:
        raise DataError(f"BPE vocab size must exceed the 256 byte symbols plus EOS, got {vocab_size}")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator((d.text for d in corpus.documents), trainer, length=len(corpus.documents))
    return tokenizer


def tokenizer_hash(tokenizer: Tokenizer) -> str:
    """SHA-256 of the tokenizer's canonical JSON: changes whenever the encoding could."""
    return hashlib.sha256(tokenizer.to_str().encode("utf-8")).hexdigest()


def eos_id(tokenizer: Tokenizer) -> int:
    """The id of ``<|endoftext|>`` (or of the tokenizer's own end-of-text token)."""
    for token in (EOS_TOKEN, "</s>", "<|end_of_text|>", "<eos>"):
        if (token_id := tokenizer.token_to_id(token)) is not None:
            return token_id
    raise DataError("the tokenizer has no end-of-text token (<|endoftext|>, </s>, <|end_of_text|> or <eos>)")


def save_tokenizer(tokenizer: Tokenizer, directory: str | os.PathLike[str], *, model_max_length: int) -> None:
    """Write ``tokenizer.json`` and a ``tokenizer_config.json`` that ``transformers`` understands, atomically."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    eos = tokenizer.id_to_token(eos_id(tokenizer))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": eos,
        "eos_token": eos,
        "unk_token": None,
        "model_max_length": model_max_length,
        "clean_up_tokenization_spaces": False,
    }
    write_text(directory / "tokenizer.json", tokenizer.to_str(pretty=True))
    write_text(directory / "tokenizer_config.json", json.dumps(config, indent=2) + "\n")


# --- tokens, packing, cache ------------------------------------------------------------------------------


def encode_corpus(corpus: Corpus, tokenizer: Tokenizer) -> np.ndarray:
    """One int32 token stream: every document's tokens followed by EOS, in corpus order."""
    eos = eos_id(tokenizer)
    parts: list[np.ndarray] = []
    batch = 256
    for start in range(0, len(corpus.documents), batch):
        docs = corpus.documents[start : start + batch]
        for enc in tokenizer.encode_batch([d.text for d in docs], add_special_tokens=False):
            parts.append(np.asarray(enc.ids, dtype=np.int32))
            parts.append(np.asarray([eos], dtype=np.int32))
    if not parts:
        return np.zeros(0, dtype=np.int32)
    return np.concatenate(parts)


def default_cache_dir() -> Path:
    """``$PUZZLE_CACHE_DIR`` or ``$XDG_CACHE_HOME/puzzle`` (default ``~/.cache/puzzle``), plus ``/tokens``."""
    if env := os.environ.get("PUZZLE_CACHE_DIR"):
        return Path(env) / "tokens"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "puzzle" / "tokens"


def cache_key(corpus: Corpus, tokenizer: Tokenizer, split: str) -> str:
    return f"{split}-{corpus.fingerprint()[:20]}-{tokenizer_hash(tokenizer)[:20]}"


def cached_tokens(
    corpus: Corpus, tokenizer: Tokenizer, split: str, cache_dir: str | os.PathLike[str] | None = None
) -> np.ndarray:
    """``encode_corpus`` through the on-disk cache: read it when present, else encode and write it atomically."""
    directory = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    file = directory / f"{cache_key(corpus, tokenizer, split)}.npy"
    if file.is_file():
        try:
            return np.load(file, allow_pickle=False)
        except (OSError, ValueError):
            pass  # a damaged cache file is rebuilt below
    tokens = encode_corpus(corpus, tokenizer)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with atomic_path(file) as tmp, open(tmp, "wb") as fh:
            np.save(fh, tokens, allow_pickle=False)
    except OSError as exc:
        raise DataError(f"cannot write the token cache in {directory}: {exc.strerror or exc}") from exc
    return tokens


def pack(tokens: np.ndarray, seq_len: int, *, drop_last: bool = True) -> list[np.ndarray]:
    """Rows of ``seq_len + 1`` tokens with stride ``seq_len`` (row i predicts tokens i*seq_len+1 ... (i+1)*seq_len).

    With ``drop_last=False`` a final shorter row (at least 2 tokens) keeps every token of the stream.
    """
    if seq_len < 1:
        raise DataError(f"sequence length must be positive, got {seq_len}")
    rows = []
    for start in range(0, max(len(tokens) - 1, 0), seq_len):
        row = tokens[start : start + seq_len + 1]
        if len(row) < seq_len + 1 and drop_last:
            break
        rows.append(row)
    return rows


def pack_tensor(tokens: np.ndarray, seq_len: int) -> np.ndarray:
    """``pack`` with ``drop_last`` as one (N, seq_len + 1) int64 array."""
    rows = pack(tokens, seq_len)
    if not rows:
        raise DataError(
            f"only {len(tokens)} tokens: too few for one training sequence of {seq_len + 1}; "
            "use a larger corpus or a shorter --seq-len"
        )
    return np.stack(rows).astype(np.int64)


def iter_batches(rows: np.ndarray, batch_size: int, seed: int, start_step: int = 0) -> Iterator[np.ndarray]:
    """Batches of row indices for steps ``start_step, start_step + 1, ...``: a seeded permutation per epoch.

    Step s always gets the same rows for the same (rows, batch_size, seed), so a resumed run sees exactly
    the data an uninterrupted one would.
    """
    n = len(rows)
    if n < batch_size:
        raise DataError(f"{n} training sequences are fewer than the batch size {batch_size}; lower --batch-size")
    per_epoch = n // batch_size
    step, epoch, order = start_step, -1, np.arange(n)
    while True:
        step_epoch, offset = divmod(step, per_epoch)
        if step_epoch != epoch:
            epoch, order = step_epoch, np.random.default_rng([seed, step_epoch]).permutation(n)
        yield rows[order[offset * batch_size : (offset + 1) * batch_size]]
        step += 1

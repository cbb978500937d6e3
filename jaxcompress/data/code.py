"""A language-modelling corpus that ships with every machine: the Python standard library's own source.

The files are every ``*.py`` under the running interpreter's stdlib directory
(``sysconfig.get_paths()["stdlib"]``), excluding ``site-packages`` and test directories
(``test``, ``tests``, ``idle_test``), in sorted relative-path order. A file goes to ``train``,
``validation`` or ``test`` by the CRC32 of its relative path (so a file's split never depends on
which other files exist, and no file is shared between splits; lines are never split apart).
A byte-level BPE (``tokenizers``) is trained on the train split only; token ids of each split
are the files' encodings joined by an ``<|endoftext|>`` token. Tokenizer and token arrays are
cached under ``cache_dir`` keyed by a hash of the file contents, the vocabulary size and the
split rule, so two fresh runs on the same Python build give identical tokens.

>>> import pathlib, tempfile
>>> src = pathlib.Path(tempfile.mkdtemp())          # any source tree; the default is the stdlib
>>> for i in range(12):
...     _ = (src / f"m{i}.py").write_text(f"def f{i}(x):\\n    return x + {i}\\n" * 30)
>>> c = stdlib_code(vocab_size=270, fractions=(0.5, 0.25), root=str(src), cache_dir=tempfile.mkdtemp())
>>> c.tokens["train"].dtype, c.vocab_size, sum(len(f) for f in c.files.values())
(dtype('int32'), 270, 12)
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pathlib
import sysconfig
import zlib
from typing import NamedTuple

import numpy as np

SPLITS = ("train", "validation", "test")
SKIP_DIRS = frozenset({"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"})
EOT = "<|endoftext|>"


class CodeCorpus(NamedTuple):
    """Token ids per split (int32), the files of each split, the tokenizer (``tokenizers.Tokenizer``)."""

    tokens: dict
    files: dict
    tokenizer: object
    vocab_size: int
    fingerprint: str

    def counts(self) -> dict:
        """``{"tokens_train": n, "tokens_validation": n, "tokens_test": n, "files_train": n, ...}``."""
        out = {f"tokens_{s}": int(self.tokens[s].size) for s in SPLITS}
        out.update({f"files_{s}": len(self.files[s]) for s in SPLITS})
        return out


def stdlib_files(root: str | None = None) -> list[pathlib.Path]:
    """The sorted ``*.py`` files of the stdlib (no site-packages, no test directories)."""
    base = pathlib.Path(root or sysconfig.get_paths()["stdlib"])
    return sorted((p for p in base.rglob("*.py")
                   if not set(p.relative_to(base).parts[:-1]) & SKIP_DIRS and p.is_file()),
                  key=lambda p: p.relative_to(base).as_posix())


def split_of(relpath: str, fractions: tuple[float, float] = (0.9, 0.05)) -> str:
    """``"train"`` / ``"validation"`` / ``"test"`` for a file, by the CRC32 of its relative path."""
    u = (zlib.crc32(relpath.encode()) % 10_000) / 10_000
    return "train" if u < fractions[0] else ("validation" if u < fractions[0] + fractions[1] else "test")


def _default_cache() -> str:
    return os.environ.get("JAXCOMPRESS_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "jaxcompress"))


def _write_atomic(path: str, data: bytes) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def stdlib_code(vocab_size: int = 4096, fractions: tuple[float, float] = (0.9, 0.05), cache_dir: str | None = None,
                max_files: int | None = None, root: str | None = None) -> CodeCorpus:
    """The stdlib-source corpus, tokenized by a byte-level BPE trained on its train split (cached).

    Args:
      vocab_size: BPE vocabulary size (>= 258: the 256 bytes, the end-of-text token and merges).
      fractions: ``(train, validation)`` shares of the files; the rest is ``test``.
      cache_dir: where the tokenizer and token arrays are cached (default ``$JAXCOMPRESS_CACHE`` or
        ``~/.cache/jaxcompress``).
      max_files: only the first ``max_files`` files of the sorted list (tests, smoke runs).
      root: another source tree instead of the stdlib.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if not isinstance(vocab_size, int) or vocab_size < 258:
        raise ValueError(f"vocab_size must be an int >= 258, got {vocab_size!r}")
    if len(fractions) != 2 or min(fractions) <= 0 or sum(fractions) >= 1:
        raise ValueError(f"fractions must be (train, validation) > 0 with a sum < 1, got {fractions!r}")
    files = stdlib_files(root)[:max_files]
    base = pathlib.Path(root or sysconfig.get_paths()["stdlib"])
    texts, names = {s: [] for s in SPLITS}, {s: [] for s in SPLITS}
    h = hashlib.sha256(json.dumps([vocab_size, list(fractions), 1]).encode())
    for p in files:
        rel = p.relative_to(base).as_posix()
        text = p.read_bytes().decode("utf-8", errors="replace")
        s = split_of(rel, fractions)
        texts[s].append(text)
        names[s].append(rel)
        h.update(rel.encode() + b"\0" + text.encode() + b"\0")
    for s in SPLITS:
        if not texts[s]:
            raise ValueError(f"split {s!r} of the corpus is empty ({len(files)} files, fractions={fractions}); "
                             "use more files (max_files) or other fractions")
    fp = h.hexdigest()[:16]
    cache = os.path.join(cache_dir or _default_cache(), f"stdlib_code-{fp}")
    tok_path, arr_path = os.path.join(cache, "tokenizer.json"), os.path.join(cache, "tokens.npz")
    if os.path.exists(tok_path) and os.path.exists(arr_path):
        tok = Tokenizer.from_file(tok_path)
        with np.load(arr_path) as z:
            tokens = {s: z[s] for s in SPLITS}
        return CodeCorpus(tokens, names, tok, vocab_size, fp)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOT], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts["train"], trainer=trainer)
    if tok.get_vocab_size() != vocab_size:  # a tiny corpus cannot fill the vocabulary
        raise ValueError(f"the train split yields only {tok.get_vocab_size()} BPE tokens, fewer than "
                         f"vocab_size={vocab_size}; use a smaller vocab_size or more files")
    eot = tok.token_to_id(EOT)
    tokens = {}
    for s in SPLITS:
        ids = []
        for enc in tok.encode_batch(texts[s]):
            ids.extend(enc.ids)
            ids.append(eot)
        tokens[s] = np.asarray(ids, np.int32)
    os.makedirs(cache, exist_ok=True)
    buf = io.BytesIO()
    np.savez(buf, **tokens)
    _write_atomic(arr_path, buf.getvalue())
    _write_atomic(tok_path, tok.to_str().encode())
    return CodeCorpus(tokens, names, tok, vocab_size, fp)


__all__ = ["CodeCorpus", "stdlib_code", "stdlib_files", "split_of", "SPLITS", "EOT"]

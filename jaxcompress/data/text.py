"""A text corpus that ships with every machine: sentences from Python's standard library docstrings.

Sentences are taken from the docstrings of a fixed list of standard-library modules (the
module, its public functions and classes, and their public methods, visited in sorted name
order), split on sentence ends, filtered (5-60 words, mostly letters, no code or doctest
lines) and de-duplicated. A sentence goes to the calibration or the evaluation split by a
CRC32 hash of its text, so the splits are disjoint and each sentence's split never depends on
which other sentences exist. The corpus is identical across runs on the same Python minor
version (docstrings change between Python releases).

>>> c = stdlib_corpus()
>>> len(c.eval) >= 1000 and not set(c.calib) & set(c.eval)
True
"""

from __future__ import annotations

import functools
import importlib
import inspect
import re
import sys
import warnings
import zlib
from typing import NamedTuple

# Pure, side-effect-free modules present in every CPython build (no GUI, no network on import).
MODULES = (
    "abc argparse array ast asyncio base64 bisect builtins bz2 calendar cmath codecs collections "
    "collections.abc colorsys concurrent.futures configparser contextlib copy csv dataclasses datetime "
    "decimal difflib dis email enum filecmp fileinput fnmatch fractions ftplib functools gc getopt gettext "
    "glob gzip hashlib heapq hmac html html.parser http http.client http.cookies imaplib inspect io "
    "ipaddress itertools json keyword linecache locale logging logging.handlers lzma mailbox math "
    "mimetypes multiprocessing numbers operator optparse os os.path pathlib pickle pickletools pkgutil "
    "platform plistlib poplib pprint profile pstats queue quopri random re reprlib sched secrets "
    "selectors shelve shlex shutil signal smtplib socket socketserver sqlite3 ssl stat statistics string "
    "struct subprocess symtable sys sysconfig tabnanny tarfile tempfile textwrap threading time timeit "
    "token tokenize trace traceback types typing unicodedata unittest unittest.mock urllib.parse "
    "urllib.request uuid warnings wave weakref xml.dom.minidom xml.etree.ElementTree zipfile zlib"
).split()

_SPLIT = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
_BAD = re.compile(r">>>|\.\.\.|::|==|\bdef\b|\(\)|\w\(|\[|\]|\{|\}|\\|`|\*|#|=|http|@|<|>|\|")


class TextCorpus(NamedTuple):
    """Disjoint ``calib`` and ``eval`` lists of sentences (plus the Python version they came from)."""

    calib: list[str]
    eval: list[str]
    python: str


def _docstrings(modname: str) -> list[str]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mod = importlib.import_module(modname)
    except Exception:  # pragma: no cover - a build without e.g. sqlite3/ssl
        return []
    docs = [mod.__doc__ or ""]
    for name in sorted(vars(mod)):
        if name.startswith("_"):
            continue
        obj = vars(mod)[name]
        if getattr(obj, "__module__", None) != mod.__name__ or not (inspect.isclass(obj) or callable(obj)):
            continue
        docs.append(obj.__doc__ or "")
        if inspect.isclass(obj):
            for mname in sorted(vars(obj)):
                if not mname.startswith("_"):
                    m = vars(obj)[mname]
                    if callable(m) and isinstance(getattr(m, "__doc__", None), str):
                        docs.append(m.__doc__)
    return [d for d in docs if isinstance(d, str) and d]


def _sentences(doc: str) -> list[str]:
    out = []
    for para in re.split(r"\n\s*\n", doc):
        if re.search(r"^\s{4,}\S", para, re.M) and ">>>" in para:
            continue
        text = " ".join(para.split())
        for s in _SPLIT.split(text):
            words = s.split()
            letters = sum(ch.isalpha() or ch == " " for ch in s)
            if (5 <= len(words) <= 60 and s[0].isupper() and s[-1] in ".!?" and not _BAD.search(s)
                    and letters >= 0.85 * len(s)):
                out.append(s)
    return out


@functools.lru_cache(maxsize=4)
def stdlib_corpus(calib_fraction: float = 0.6, modules: tuple[str, ...] = tuple(MODULES)) -> TextCorpus:
    """Build the corpus (cached; a few seconds the first time).

    Args:
      calib_fraction: share of sentences hashed into the calibration split (0 < f < 1).
      modules: the standard-library modules to read (default :data:`MODULES`).

    Returns:
      A :class:`TextCorpus`; each split keeps first-seen order.

    Raises:
      ValueError: if ``calib_fraction`` is not in (0, 1).
    """
    if not 0.0 < calib_fraction < 1.0:
        raise ValueError(f"calib_fraction must be in (0, 1), got {calib_fraction}")
    seen, calib, evals = set(), [], []
    for modname in modules:
        for doc in _docstrings(modname):
            for s in _sentences(doc):
                if s in seen:
                    continue
                seen.add(s)
                h = zlib.crc32(s.encode("utf-8")) / 2**32
                (calib if h < calib_fraction else evals).append(s)
    return TextCorpus(calib, evals, f"{sys.version_info.major}.{sys.version_info.minor}")

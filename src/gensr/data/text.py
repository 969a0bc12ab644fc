"""Text analysis shared by query generation (Ai et al. 2017) and BM25.

Stemming uses the Krovetz stemmer (the one Ai et al.'s public code used) when the
``KrovetzStemmer`` package is importable, else a documented light plural stemmer (Harman's
S-stemmer). :func:`stemmer_name` reports which one ran, and adapters write it in their report.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import lru_cache

# A small English stopword list (the SMART/Lucene core): category paths rarely carry more.
STOPWORDS = frozenset(
    """a an and are as at be but by for from has have in into is it its of on or s such
    t that the their then there these they this to was will with""".split()
)

_LETTERS = re.compile(r"[^a-z ]+")
_ALNUM_TOKEN = re.compile(r"[a-z0-9]+")


def _s_stem(word: str) -> str:
    """Harman's S-stemmer: the fallback when Krovetz is not installed."""
    if len(word) > 3 and word.endswith("ies") and not word.endswith(("eies", "aies")):
        return word[:-3] + "y"
    if len(word) > 3 and word.endswith("es") and not word.endswith(("aes", "ees", "oes")):
        return word[:-1]
    if len(word) > 2 and word.endswith("s") and not word.endswith(("us", "ss")):
        return word[:-1]
    return word


@lru_cache(maxsize=1)
def _stem_function():
    try:
        import krovetzstemmer  # type: ignore[import-not-found]

        stemmer = krovetzstemmer.Stemmer()
        return "krovetz", stemmer.stem
    except ImportError:  # pragma: no cover - depends on the environment
        return "s-stemmer", _s_stem


def stemmer_name() -> str:
    """Name of the stemmer in use: ``krovetz`` or ``s-stemmer``."""
    return _stem_function()[0]


@lru_cache(maxsize=200_000)
def stem(word: str) -> str:
    """Stem one lower-case word."""
    return _stem_function()[1](word)


def analyze(text: str) -> list[str]:
    """Tokenize for retrieval: lower-case alphanumeric tokens, stopwords dropped, stemmed."""
    return [stem(t) for t in _ALNUM_TOKEN.findall(text.lower()) if t not in STOPWORDS]


def category_query(path: Iterable[str], vocabulary: set[str] | None = None) -> str:
    """Turn one category path into a query the way Ai et al. (2017) did.

    Join the level names, keep letters and spaces only, lower-case, tokenize, drop stopwords,
    stem, keep only words in ``vocabulary`` (when given: the stemmed review vocabulary), and
    remove duplicate words keeping each word's *last* occurrence.

    >>> category_query(["Kindle Store", "Kindle eBooks", "Mystery, Thriller & Suspense"])
    'store kindle ebook mystery thriller suspense'
    """
    joined = " ".join(path).lower()
    words = [stem(w) for w in _LETTERS.sub(" ", joined).split() if w not in STOPWORDS]
    if vocabulary is not None:
        words = [w for w in words if w in vocabulary]
    last = {w: i for i, w in enumerate(words)}
    return " ".join(w for i, w in enumerate(words) if last[w] == i)

"""Word vocabularies of the text-reading baselines (UniSAR, TEM).

Words are :func:`gensr.data.text.analyze` terms; id = position in the sorted vocabulary + 1
(0 = padding). The vocabulary is saved beside a run's weights, so that a reloaded model maps
words to the same rows even when the data directory later gains queries.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

import torch

from gensr.data.dataset import SRData
from gensr.data.text import analyze
from gensr.errors import RunError
from gensr.files import read_json
from gensr.models.base import RUN_AGAIN
from gensr.outputs import write_atomic


def build_vocabulary(data: SRData, with_items: bool) -> list[str]:
    """Sorted analysed words of every query (and item text): id = position + 1."""
    words: set[str] = set()
    for text in data.query_text[1:]:
        words.update(analyze(text))
    if with_items:
        for text in data.item_text[1:]:
            words.update(analyze(text))
    return sorted(words)


def word_table(texts: list[str], index: dict[str, int], width: int) -> torch.Tensor:
    """(len(texts), width) word ids of each text (first ``width`` known words, 0-padded)."""
    table = torch.zeros((len(texts), width), dtype=torch.long)
    for row, text in enumerate(texts):
        ids = [index[w] for w in analyze(text) if w in index][:width]
        if ids:
            table[row, : len(ids)] = torch.tensor(ids)
    return table


class WordVocabularyArtifacts:
    """Mixin for an ``SRModel`` whose constructor takes ``vocabulary=``: the vocabulary is the
    run directory artifact ``vocab_file``, written by ``save_artifacts`` and read by ``build``."""

    vocab_file: ClassVar[str]
    vocabulary: list[str]

    @classmethod
    def build(cls, config, data: SRData, artifacts: Path | None = None):
        vocabulary = None
        if artifacts is not None and (artifacts / cls.vocab_file).exists():
            path = artifacts / cls.vocab_file
            vocabulary = read_json(path, RunError, expect=None, hint=RUN_AGAIN)
            if not isinstance(vocabulary, list):
                raise RunError(f"{path}: expected a list of words")
        return cls(config, data, vocabulary=vocabulary)

    def save_artifacts(self, directory: Path) -> None:
        write_atomic(directory / self.vocab_file, json.dumps(self.vocabulary), None)

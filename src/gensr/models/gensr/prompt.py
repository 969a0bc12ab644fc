"""Task unifying prompts (Eq. 7): templates as data, parsed once into segments and slots.

A template is text with four *vector slots* — ``{cf_history}``, ``{sem_history}``,
``{cf_candidate}``, ``{sem_candidate}`` — each exactly once, cutting it into five text segments
T1..T5 (gensr's ``user_vector`` lever adds a fifth, ``{cf_user}``: the user's own CF vector,
by default right before ``{cf_history}``); ``{query}`` (search templates) is a *text slot*
filled with the query's tokens, ``{candidate_text}`` (gensr's ``candidate_text_len`` lever,
off in the paper) is filled with the candidate's first text tokens, and ``{items}`` /
``{item}`` are the domain nouns. The builder lays a batch's prompts out as token ids with
slot markers, which :meth:`GenSR.prompt_embeddings` turns into ``inputs_embeds``:

    X = [emb(T1), h_cf, emb(T2), h_sem, emb(T3), e_cf_c, emb(T4), e_sem_c, emb(T5), </s>]

Parsing with one regular expression (not chained ``str.split``) and validating the slots up
front makes the reference code's bugs — a segment cut at the wrong place, ``<Query>`` never
filled — impossible; tests check every segment appears once and in order.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from gensr.errors import ConfigError

VECTOR_SLOTS: tuple[str, ...] = ("cf_history", "sem_history", "cf_candidate", "sem_candidate")
# gensr's user_vector lever (off in the paper): the user's own CF vector, one more vector slot
USER_SLOT = "cf_user"
ALL_VECTOR_SLOTS: tuple[str, ...] = (*VECTOR_SLOTS, USER_SLOT)
TEXT_SLOTS: tuple[str, ...] = ("query", "candidate_text")
CANDIDATE_TEXT_MARKER = -(len(ALL_VECTOR_SLOTS) + 1)  # laid-out id of a candidate-text position
_SLOT = re.compile(r"\{(\w+)\}")


@dataclass(frozen=True)
class PromptTemplate:
    """A parsed template: ``pieces`` alternate text and slot names, in order."""

    source: str
    # ("text", words) | ("vector", slot) | ("query", "") | ("candidate_text", "")
    pieces: tuple[tuple[str, str], ...]

    @classmethod
    def parse(cls, template: str, *, plural: str, singular: str, needs_query: bool,
              candidate_text: bool = False, user_vector: bool = False) -> PromptTemplate:
        """Parse and validate: each vector slot exactly once, ``{query}`` iff ``needs_query``;
        with ``candidate_text``, ``{candidate_text}`` where the template puts it, else right
        after ``{sem_candidate}`` (without it, the template may not hold that slot); with
        ``user_vector``, ``{cf_user}`` where the template puts it, else right before
        ``{cf_history}`` (likewise refused without it)."""
        text = template.replace("{items}", plural).replace("{item}", singular)
        found = _SLOT.findall(text)
        unknown = sorted(set(found) - set(ALL_VECTOR_SLOTS) - set(TEXT_SLOTS))
        if unknown:
            raise ConfigError(f"template has unknown slot(s) {unknown}; known: "
                              f"{list(VECTOR_SLOTS) + list(TEXT_SLOTS) + ['items', 'item']}")
        for slot in VECTOR_SLOTS:
            if found.count(slot) != 1:
                raise ConfigError(f"template must hold {{{slot}}} exactly once "
                                  f"(found {found.count(slot)}): {template!r}")
        n_query = found.count("query")
        if needs_query and n_query != 1:
            raise ConfigError(f"the search template must hold {{query}} exactly once: {template!r}")
        if not needs_query and n_query:
            raise ConfigError(f"the rec template cannot hold {{query}}: {template!r}")
        n_text = found.count("candidate_text")
        if n_text > 1 or (n_text and not candidate_text):
            raise ConfigError("{candidate_text} may appear at most once, and only with "
                              f"candidate_text_len > 0: {template!r}")
        n_user = found.count(USER_SLOT)
        if n_user > 1 or (n_user and not user_vector):
            raise ConfigError("{cf_user} may appear at most once, and only with user_vector: "
                              f"true: {template!r}")
        pieces: list[tuple[str, str]] = []
        last = 0
        for match in _SLOT.finditer(text):
            if match.start() > last:
                pieces.append(("text", text[last : match.start()]))
            name = match.group(1)
            if name == "cf_history" and user_vector and not n_user:
                pieces.append(("vector", USER_SLOT))
            pieces.append((name, "") if name in TEXT_SLOTS else ("vector", name))
            if name == "sem_candidate" and candidate_text and not n_text:
                pieces.append(("candidate_text", ""))
            last = match.end()
        if last < len(text):
            pieces.append(("text", text[last:]))
        return cls(source=template, pieces=tuple(pieces))


class PromptBuilder:
    """Pre-tokenises the task templates; per batch lays out the prompts' token ids.

    ``layout(task, query, query_tokens)`` returns, for B instances, ``ids`` (B, T), right-padded,
    where vector slot k (in :data:`VECTOR_SLOTS` order) holds ``slot_marker(k)`` (a negative
    number, never a token id), and the attention mask (B, T). The model finds the slots by
    their markers when it splices the vectors in. A ``{candidate_text}`` slot is laid out as
    ``candidate_text_len`` positions holding :data:`CANDIDATE_TEXT_MARKER`.
    """

    def __init__(self, tokenizer, rec: PromptTemplate, src: PromptTemplate, eos_id: int | None,
                 pad_id: int, candidate_text_len: int = 0) -> None:
        self.pad_id = pad_id
        self.eos_id = eos_id
        self.candidate_text_len = int(candidate_text_len)
        self.templates = (rec, src)
        # per task: list of ("ids", LongTensor) | ("vector", k) | ("query", None)
        self.compiled: list[list[tuple[str, object]]] = []
        for template in self.templates:
            parts: list[tuple[str, object]] = []
            for kind, value in template.pieces:
                if kind == "text":
                    ids = tokenizer(value, add_special_tokens=False)["input_ids"]
                    if ids:
                        parts.append(("ids", torch.tensor(ids, dtype=torch.long)))
                elif kind == "vector":
                    parts.append(("vector", ALL_VECTOR_SLOTS.index(value)))
                elif kind == "candidate_text":
                    parts.append(("ids", torch.full((self.candidate_text_len,),
                                                    CANDIDATE_TEXT_MARKER, dtype=torch.long)))
                else:
                    parts.append(("query", None))
            self.compiled.append(parts)
        self._cache: dict[tuple[int, int], torch.Tensor] = {}

    @staticmethod
    def slot_marker(k: int) -> int:
        """The placeholder id of vector slot ``k`` in laid-out ids (never a real token)."""
        return -(k + 1)

    def row(self, task: int, query_tokens: torch.Tensor) -> torch.Tensor:
        """The laid-out ids of one prompt: text tokens, slot markers, query tokens, </s>."""
        seq: list[torch.Tensor] = []
        for kind, value in self.compiled[task]:
            if kind == "ids":
                seq.append(value)  # type: ignore[arg-type]
            elif kind == "vector":
                seq.append(torch.tensor([self.slot_marker(int(value))]))  # type: ignore[arg-type]
            else:
                seq.append(query_tokens)
        if self.eos_id is not None:
            seq.append(torch.tensor([self.eos_id]))
        return torch.cat(seq)

    def layout(self, task: torch.Tensor, query: torch.Tensor, query_tokens: list[torch.Tensor]
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids (B, T) with slot markers, right-padded, and the attention mask (B, T).

        ``task`` (B,) 0 = rec, 1 = src; ``query`` (B,) query ids; ``query_tokens[q]`` the
        token ids of query q. Rows are cached per (task, query id): they depend on nothing else.
        """
        rows = []
        for t, q in zip(task.tolist(), query.tolist()):
            key = (t, q if t == 1 else 0)
            if key not in self._cache:
                if len(self._cache) > 100_000:
                    self._cache.clear()
                self._cache[key] = self.row(t, query_tokens[q])
            rows.append(self._cache[key])
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.bool)
        for b, r in enumerate(rows):
            ids[b, : len(r)] = r
            mask[b, : len(r)] = True
        return ids.to(task.device), mask.to(task.device)

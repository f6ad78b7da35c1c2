"""``SearchEnvironment``: the swarm tasks' tools, ``search`` and ``open``, over a local corpus.

Lexical and deterministic on purpose: a result depends only on the query and the
corpus, so scripted baselines replay exactly and rewards are reproducible. The
index is built once in ``__init__`` and only read afterwards, so any number of
agents (threads or coroutines) may call one environment at the same time.
A bad call returns a text starting with ``error:`` for the agent to read; it never raises.
"""

from __future__ import annotations

import math
import re
from collections import Counter

from kimi_lab.swarm.corpus import Corpus
from kimi_lab.swarm.types import ToolSpec

MAX_INPUT_CHARS = 256  # a query or an id is short; longer inputs are a confused model
_TOKEN = re.compile(r"[a-z0-9]+")
_TITLE_WEIGHT = 2.0  # a query term in the title counts this much more than one in the body
_EXACT_TITLE_BONUS = 5.0  # querying an entity's full name finds that entity first

TOOLS = [
    ToolSpec("search", "search the local corpus; returns the best document ids and titles", "a search query"),
    ToolSpec("open", "read one document of the local corpus", "a document id, e.g. doc-0042"),
]


def tokens(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


def is_error(observation: str) -> bool:
    return observation.startswith("error:")


class SearchEnvironment:
    """The Environment protocol over a ``Corpus``: ``call("search", query)``, ``call("open", doc_id)``."""

    def __init__(self, corpus: Corpus, top_k: int = 5, max_doc_chars: int = 1000) -> None:
        self.corpus, self.top_k, self.max_doc_chars = corpus, top_k, max_doc_chars
        self.tools = list(TOOLS)
        self._titles = [" ".join(tokens(d.title)) for d in corpus.docs]
        self._title_terms = [set(tokens(d.title)) for d in corpus.docs]
        self._body_tf = [Counter(tokens(d.text)) for d in corpus.docs]
        self._postings: dict[str, list[int]] = {}
        for i, (title, body) in enumerate(zip(self._title_terms, self._body_tf)):
            for t in title | set(body):
                self._postings.setdefault(t, []).append(i)
        n = len(corpus.docs)
        self._idf = {t: math.log(1.0 + n / len(p)) for t, p in self._postings.items()}

    def call(self, name: str, tool_input: str) -> str:
        if name not in ("search", "open"):
            return f"error: unknown tool {str(name)[:40]!r}; this environment has search and open"
        if not isinstance(tool_input, str):
            return f"error: {name} takes text input"
        text = tool_input.strip()
        if len(text) > MAX_INPUT_CHARS:
            return f"error: {name} input is {len(text)} characters; at most {MAX_INPUT_CHARS}"
        return self.search(text) if name == "search" else self.open(text)

    def ranked(self, query: str) -> list[int]:
        """Indices of the documents matching ``query``, best first (ties: by id)."""
        terms = set(tokens(query))
        scores: dict[int, float] = {}
        for t in terms:
            for i in self._postings.get(t, ()):
                in_body = min(self._body_tf[i][t], 3) / 3
                scores[i] = scores.get(i, 0.0) + self._idf[t] * (
                    _TITLE_WEIGHT * (t in self._title_terms[i]) + in_body
                )
        exact = " ".join(tokens(query))
        for i in scores:
            if self._titles[i] == exact:
                scores[i] += _EXACT_TITLE_BONUS
        return sorted(scores, key=lambda i: (-scores[i], self.corpus.docs[i].id))

    def search(self, query: str) -> str:
        if not tokens(query):
            return "error: empty query; search takes words, e.g. a name"
        hits = self.ranked(query)[: self.top_k]
        if not hits:
            return f"no documents match {query!r}"
        return "\n".join(f"{self.corpus.docs[i].id} | {self.corpus.docs[i].title}" for i in hits)

    def open(self, doc_id: str) -> str:
        key = doc_id.strip().strip("\"'`[]()<>").strip()
        if not key:
            return "error: open takes a document id, e.g. doc-0042 (search first)"
        doc = self.corpus.by_id.get(key)
        if doc is None:
            return f"error: no document {key[:40]!r}; ids look like doc-0042 (search first)"
        text = doc.text
        if len(text) > self.max_doc_chars:
            text = text[: self.max_doc_chars] + " ... [truncated]"
        return f"{doc.id} | {doc.title}\n{text}"

"""The retrieval baseline: the nearest training question's SQL, with the question's own values put in.

A meaningful yardstick for a model trained from scratch (whose zero-shot self writes token soup):
1. Every training question is indexed with its values masked by their column ("how many patients
   whose drug name is <prescriptions.drug>?"), so questions of one shape look alike whatever
   values they name; numbers are masked as <number>.
2. A new question is masked the same way with the values the linker (medsql.linking) finds in it,
   and the training question closest to it (TF-IDF over words and word pairs, cosine) is taken.
3. Its SQL keeps its shape; each text literal takes the linked value of the same column (or of
   another text column of the same table, which then replaces the column), and each numeric literal the
   question's numbers in order, compared the way the question bounds it ("over 65": >, "65 or
   older": >=, whatever the neighbour's operator; medsql.grounding.stated_operator). A literal
   with nothing to take stays as the neighbour had it, and the answer is then ungrounded.

The answer's confidence is the cosine similarity of the neighbour (uncalibrated), lowered by half
when the answer is not grounded.
"""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from medsql import grounding
from medsql.confidence import Answer
from medsql.evaluation.recovery import ValueIndex, recoverable
from medsql.linking import Link, Linker, normalised
from medsql.schema import is_numeric
from medsql.sqlform import Condition, FormError, Query, parse_sql, render_sql
from medsql.text import check_question
from medsql.util import read_jsonl

NAME = "retrieval-tfidf"
RERANK = 20         # closest training questions whose fit with the question's values is compared
FIT_PENALTY = 0.2  # cosine given up per condition the question cannot fill (or value it leaves unused)
_NUMBER = re.compile(r"^\d+(?:\.\d+)?$")


def _mask(question: str, spans: list[tuple[str, str]]) -> list[str]:
    """The question's words, each linked span replaced by its column's token and numbers by <number>."""
    text = f" {normalised(question)} "
    for span, token in sorted(spans, key=lambda s: -len(s[0])):
        if span:
            text = text.replace(f" {span} ", f" {token} ")
    return ["<number>" if _NUMBER.match(w) else w for w in text.split()]


def _terms(words: list[str]) -> Counter:
    return Counter(words + [f"{a} {b}" for a, b in zip(words, words[1:], strict=False)])


def _token(table: str, column: str) -> str:
    return f"<{table.lower()}.{column.lower()}>"


class RetrievalBaseline:
    """Nearest training question (TF-IDF) with linked values substituted into its SQL."""

    def __init__(self, rows: list[dict[str, Any]], linker: Linker, min_confidence: float = 0.5):
        self.name, self.linker, self.values, self.min_confidence = NAME, linker, linker.values, min_confidence
        self._queries: list[Query] = []
        documents: list[Counter] = []
        for row in rows:
            try:
                query = parse_sql(row["sql"])
            except FormError:
                continue  # outside the grammar: nothing to reuse
            spans = [(normalised(c.value), _token(c.table, c.column)) for c in query.conditions
                     if not is_numeric(c.table, c.column)]
            documents.append(_terms(_mask(row["question"], spans)))
            self._queries.append(query)
        if not documents:
            raise ValueError("retrieval baseline: no training question in the dataset's grammar")
        frequency = Counter(term for doc in documents for term in doc)
        self._idf = {term: math.log((1 + len(documents)) / (1 + n)) + 1.0 for term, n in frequency.items()}
        self._postings: dict[str, list[tuple[int, float]]] = defaultdict(list)
        for index, doc in enumerate(documents):
            weights = self._weights(doc)
            for term, weight in weights.items():
                self._postings[term].append((index, weight))

    @classmethod
    def from_files(cls, train_split: str | Path, values: ValueIndex, min_confidence: float = 0.5
                   ) -> RetrievalBaseline:
        path = Path(train_split)
        if not path.is_file():
            raise FileNotFoundError(f"retrieval baseline: {path} not found; run `dvc repro preprocess`")
        return cls(list(read_jsonl(path)), Linker(values), min_confidence)

    def _weights(self, doc: Counter) -> dict[str, float]:
        weights = {t: (1.0 + math.log(n)) * self._idf[t] for t, n in doc.items() if t in self._idf}
        norm = math.sqrt(sum(w * w for w in weights.values())) or 1.0
        return {t: w / norm for t, w in weights.items()}

    # ---- answering -------------------------------------------------------------------------
    def nearest(self, words: list[str], links: list[Link] = (), numbers: int = 0) -> tuple[int, float]:
        """The closest training question (index, cosine). Among the RERANK closest, a neighbour whose
        conditions the question's linked values and numbers fill, without any left over, is preferred."""
        scores: dict[int, float] = defaultdict(float)
        for term, weight in self._weights(_terms(words)).items():
            for index, doc_weight in self._postings.get(term, ()):
                scores[index] += weight * doc_weight
        if not scores:
            return 0, 0.0
        close = sorted(scores, key=lambda i: (-scores[i], i))[:RERANK]
        best = max(close, key=lambda i: (scores[i] - FIT_PENALTY * self._misfit(self._queries[i], links, numbers),
                                         -i))
        return best, scores[best]

    @staticmethod
    def _misfit(query: Query, links: list[Link], numbers: int) -> int:
        """Conditions the question has nothing for, plus values and numbers of the question left unused."""
        numeric = sum(is_numeric(c.table, c.column) or bool(_NUMBER.match(c.value)) for c in query.conditions)
        text = [c for c in query.conditions if not (is_numeric(c.table, c.column) or _NUMBER.match(c.value))]
        tables = {k.table for k in links}
        spans = len({k.span for k in links})
        unfilled = sum(c.table not in tables for c in text)
        return abs(numeric - numbers) + unfilled + max(0, min(spans, 3) - len(text))

    def answer(self, questions: list[str], num_beams: int | None = None, batch_size: int = 32) -> list[Answer]:
        """Each question's Answer (num_beams and batch_size are accepted for the Predictor's interface)."""
        return [self._answer(check_question(q)) for q in questions]

    def predict(self, questions: list[str], num_beams: int | None = None, batch_size: int = 32,
                recover: bool = True) -> list[str]:
        return [a.sql for a in self.answer(questions)]

    def _answer(self, question: str) -> Answer:
        links = self.linker.link(question)
        best_per_span: dict[str, Link] = {}
        for link in links:
            best_per_span.setdefault(link.span, link)
        words = _mask(question, [(span, _token(k.table, k.column)) for span, k in best_per_span.items()])
        numbers = re.findall(r"\d+(?:\.\d+)?", question)
        index, similarity = self.nearest(words, list(best_per_span.values()), len(numbers))
        query, kept = self.substitute(self._queries[index], links, numbers, question)
        sql = render_sql(query)
        departing = grounding.departures(query, links, question)
        problems = grounding.database_problems(query, self.values, links) + departing + [
            f'the question gives no value for {c.table}.{c.column} (kept the neighbour\'s "{c.value}")' for c in kept]
        confidence = round(max(0.0, min(1.0, similarity)) * (1.0 if not problems else 0.5), 4)
        uncertain = confidence < self.min_confidence or bool(departing)
        return Answer(sql=sql, raw_sql=sql, confidence=confidence, uncertain=uncertain,
                      grounded=not problems, problems=tuple(problems), top_sql=sql, calibrated=False,
                      features={"similarity": round(similarity, 4)})

    @staticmethod
    def substitute(query: Query, links: list[Link], numbers: list[str], question: str = ""
                   ) -> tuple[Query, list[Condition]]:
        """The neighbour's query with the question's values (see the module doc), and the conditions
        that kept the neighbour's literal because the question gave none."""
        unused = list(links)
        numbers = list(numbers)
        conditions, kept = [], []
        for cond in query.conditions:
            if is_numeric(cond.table, cond.column) or _NUMBER.match(cond.value):
                if not numbers:
                    kept.append(cond)
                value = numbers.pop(0) if numbers else cond.value
                if value.isdigit() and cond.value.endswith(".0"):
                    value += ".0"  # the dataset writes years of death as "2164.0"
                stated = grounding.stated_operator(question, value)
                op = cond.op if stated is None else stated[0]  # "over 65" for the neighbour's "under 50"
                conditions.append(Condition(cond.table, cond.column, op, value))
                continue
            same = [k for k in unused if (k.table, k.column) == (cond.table, cond.column)]
            other_text = [k for k in unused if k.table == cond.table and recoverable(k.table, k.column) == "fuzzy"
                          and recoverable(cond.table, cond.column) == "fuzzy"]
            pick = (same or other_text or [None])[0]
            if pick is None:
                conditions.append(cond)
                kept.append(cond)
                continue
            unused = [k for k in unused if k.span != pick.span]  # one span gives one value
            conditions.append(Condition(pick.table, pick.column, cond.op, pick.value))
        return Query(list(query.select), conditions), kept

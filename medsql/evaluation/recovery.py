"""Value recovery, as TREQS's "recover": snap each predicted condition literal to a value that exists.

A model often gets the structure right but a literal slightly wrong (lower-cased, misspelt,
truncated). Recovery replaces each condition literal with the closest value present for that
column:

- exact (case-sensitive) hit: kept;
- for free-text columns, a known value that the question states around the literal (the model
  stopped copying early: "hyperlipidemia" of "... is hyperlipidemia nec/nos?"): that value;
- when the question is given and the literal is not a known value: the closest span of the
  question's words (the value a template question states verbatim, copied imperfectly by the
  model); a span that is a known value wins, then the fuzzy match of the literal, then the span.
  Copying cut inside a word is completed to whole words; a number the question states as the
  literal's value ("2164" for the stored "2164.0") is left as written;
- case-insensitive hit: the stored casing (the training split's casing first, then the database's);
- otherwise, for free-text columns only, the best fuzzy match (rapidfuzz ratio on normalised
  strings) at or above a threshold;
- otherwise a lower-cased literal takes its column's casing pattern: the casing most of the
  column's values follow ("UPPER", "Sentence case" as diagnosis titles, "Title Case" as patient
  names and most drugs), when it is the rule and lower case the exception; else it is left alone;
- a diagnosis or procedure title that none of the above makes a value of its column, but that is
  a value of the sibling column (the long title written as the short one, or cut short inside a
  long title the question states in full), moves to that column: `LONG_TITLE = "<long title>"`.

Codes and identifiers (ICD9_CODE, ITEMID, SUBJECT_ID, NAME, ...) get only the casing fix: a
fuzzy match would swap one real code or patient for another. Numbers and dates are left alone.
The dataset writes procedure codes without the dictionary's zero padding ("40", not "0040"), so
padding a predicted code would move it away from the gold query: codes are not padded.

Where values come from matters: the test-suite databases hold synthetic rows built from the
evaluation queries, so looking values up there would leak the answers. The index reads only the
real demo tables and the full code dictionaries of data/mimicsql.db, plus the literals of the
training split's own gold SQL.

Importable without MLflow or the trainer: the Predictor may use it too.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
from collections import Counter, defaultdict
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from rapidfuzz import fuzz, process, utils

from medsql.schema import TABLES
from medsql.sqlform import CONDITION_IN_WHERE, Condition, FormError, Query, parse_sql, render_sql
from medsql.util import read_jsonl

_WHERE = re.compile(r"\bWHERE\b", re.IGNORECASE)

# Columns whose values are free text: casing fix, then fuzzy match.
FUZZY_COLUMNS: dict[str, set[str]] = {
    "DEMOGRAPHIC": {"MARITAL_STATUS", "GENDER", "LANGUAGE", "RELIGION", "ADMISSION_TYPE", "INSURANCE",
                    "ETHNICITY", "ADMISSION_LOCATION", "DISCHARGE_LOCATION", "DIAGNOSIS"},
    "DIAGNOSES": {"SHORT_TITLE", "LONG_TITLE"},
    "PROCEDURES": {"SHORT_TITLE", "LONG_TITLE"},
    "PRESCRIPTIONS": {"DRUG_TYPE", "DRUG", "ROUTE"},
    "LAB": {"FLAG", "LABEL", "FLUID", "CATEGORY"},
}
# Codes, identifiers, names and amounts: only the stored casing of an exact case-insensitive hit.
CASE_ONLY_COLUMNS: dict[str, set[str]] = {
    "DEMOGRAPHIC": {"NAME"},
    "DIAGNOSES": {"ICD9_CODE"},
    "PROCEDURES": {"ICD9_CODE"},
    "PRESCRIPTIONS": {"FORMULARY_DRUG_CD", "DRUG_DOSE"},
    "LAB": {"ITEMID", "VALUE_UNIT"},
}
# Columns that spell one concept two ways: a dictionary's short and long titles. A literal that is not
# a value of its column but is one of the sibling's ("... short title = <the long title>") names that
# value, and the condition moves to the sibling column.
SIBLINGS: dict[tuple[str, str], str] = {
    ("DIAGNOSES", "SHORT_TITLE"): "LONG_TITLE", ("DIAGNOSES", "LONG_TITLE"): "SHORT_TITLE",
    ("PROCEDURES", "SHORT_TITLE"): "LONG_TITLE", ("PROCEDURES", "LONG_TITLE"): "SHORT_TITLE",
}
# Full code dictionaries in the database: (dictionary table, its column) per MIMICSQL column.
DICTIONARIES: dict[tuple[str, str], tuple[str, str]] = {
    ("DIAGNOSES", "ICD9_CODE"): ("D_ICD_DIAGNOSES", "ICD9_CODE"),
    ("DIAGNOSES", "SHORT_TITLE"): ("D_ICD_DIAGNOSES", "SHORT_TITLE"),
    ("DIAGNOSES", "LONG_TITLE"): ("D_ICD_DIAGNOSES", "LONG_TITLE"),
    ("PROCEDURES", "ICD9_CODE"): ("D_ICD_PROCEDURES", "ICD9_CODE"),
    ("PROCEDURES", "SHORT_TITLE"): ("D_ICD_PROCEDURES", "SHORT_TITLE"),
    ("PROCEDURES", "LONG_TITLE"): ("D_ICD_PROCEDURES", "LONG_TITLE"),
    ("LAB", "ITEMID"): ("D_LABITEMS", "ITEMID"),
    ("LAB", "LABEL"): ("D_LABITEMS", "LABEL"),
    ("LAB", "FLUID"): ("D_LABITEMS", "FLUID"),
    ("LAB", "CATEGORY"): ("D_LABITEMS", "CATEGORY"),
}


def recoverable(table: str, column: str) -> str | None:
    """'fuzzy', 'case' or None (left alone) for a MIMICSQL column."""
    if column in FUZZY_COLUMNS.get(table, set()):
        return "fuzzy"
    if column in CASE_ONLY_COLUMNS.get(table, set()):
        return "case"
    return None


@dataclass
class _ColumnValues:
    exact: set[str]                 # every value as stored ("BLOOD" and "Blood" both)
    by_lower: dict[str, str]        # lower-cased value -> preferred stored casing
    choices: list[str]              # preferred casings, one per distinct lower-cased value
    processed: list[str]            # rapidfuzz-normalised form of each choice
    pattern: str | None             # the CASINGS name most values follow (None: no rule)


class ValueIndex:
    """The values each text column may hold, from the demo database and the training split."""

    def __init__(self, counts: dict[tuple[str, str], tuple[Counter, Counter]], threshold: float = 85.0,
                 span_threshold: float = 60.0):
        """`counts`: (table, column) -> (training-literal counts, database counts) of each value."""
        self.threshold = threshold
        self.span_threshold = span_threshold
        self._counts = counts
        self._columns: dict[tuple[str, str], _ColumnValues] = {}
        for key, (train_counts, db_counts) in counts.items():
            casings: dict[str, list[str]] = defaultdict(list)
            for value in set(train_counts) | set(db_counts):
                if '"' not in value and "'" not in value:  # not writable as the dataset's literal
                    casings[value.lower()].append(value)
            # The gold SQL's casing (training literals) wins over the database's; then frequency.
            by_lower = {low: max(vals, key=lambda v: (train_counts[v], db_counts[v], v))
                        for low, vals in casings.items()}
            choices = sorted(by_lower.values())
            processed = [utils.default_process(c) for c in choices]
            exact = set(train_counts) | set(db_counts)
            self._columns[key] = _ColumnValues(exact, by_lower, choices, processed, _pattern(choices))

    @classmethod
    def build(cls, db_path: str | os.PathLike, train_split_path: str | os.PathLike | None = None,
              threshold: float = 85.0) -> ValueIndex:
        """Index the real demo tables + dictionaries of `db_path` and the training split's literals.

        Never pass a test-suite database here: its synthetic rows come from evaluation queries.
        """
        db_path = Path(db_path)
        if not db_path.is_file():
            raise FileNotFoundError(f"value index: database {db_path} not found; run `dvc repro build_db`")
        counts: dict[tuple[str, str], tuple[Counter, Counter]] = {}
        with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True) as conn:
            tables = conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
            present = {r[0].upper() for r in tables}
            for table, columns in TABLES.items():
                for column in columns:
                    if recoverable(table, column) is None:
                        continue
                    db_counts: Counter = Counter()
                    sources = [(table, column)] + ([DICTIONARIES[(table, column)]]
                                                   if (table, column) in DICTIONARIES else [])
                    for source_table, source_column in sources:
                        if source_table not in present:
                            if source_table == table:
                                raise ValueError(f"value index: {db_path} has no table {table}")
                            continue  # a dictionary the database lacks: the demo rows still count
                        rows = conn.execute(
                            f'SELECT "{source_column}", COUNT(*) FROM "{source_table}" '
                            f'WHERE "{source_column}" IS NOT NULL GROUP BY "{source_column}"')
                        for value, n in rows:
                            db_counts[str(value)] += n
                    counts[(table, column)] = (Counter(), db_counts)
        if train_split_path is not None:
            for query in _training_queries(Path(train_split_path)):
                for cond in query.conditions:
                    if (cond.table, cond.column) in counts:
                        counts[(cond.table, cond.column)][0][cond.value] += 1
        return cls(counts, threshold)

    def database_only(self) -> ValueIndex:
        """The same index without the training split's literals: only what the database holds."""
        return ValueIndex({key: (Counter(), db) for key, (_, db) in self._counts.items()}, self.threshold,
                          self.span_threshold)

    def save(self, path: str | os.PathLike) -> None:
        """Write the index as JSON (the train stage ships it inside the model folder)."""
        data = {f"{t}.{c}": [dict(train), dict(db)] for (t, c), (train, db) in self._counts.items()}
        Path(path).write_text(json.dumps({"threshold": self.threshold, "columns": data}, ensure_ascii=False))

    @classmethod
    def load(cls, path: str | os.PathLike) -> ValueIndex:
        data = json.loads(Path(path).read_text())
        counts = {tuple(key.split(".", 1)): (Counter(train), Counter(db))
                  for key, (train, db) in data["columns"].items()}
        return cls(counts, data["threshold"])

    def values(self, table: str, column: str) -> list[str]:
        entry = self._columns.get((table, column))
        return list(entry.choices) if entry else []

    def columns(self) -> list[tuple[str, str]]:
        """The (table, column) pairs the index holds values for."""
        return list(self._columns)

    def holds(self, table: str, column: str, value: str) -> bool | None:
        """Whether TABLE.COLUMN holds `value` (any casing); None for a column the index does not cover."""
        entry = self._columns.get((table, column))
        if entry is None:
            return None
        return value in entry.exact or value.lower() in entry.by_lower

    def recover_value(self, table: str, column: str, value: str, fuzzy: bool = True,
                      question: str | None = None) -> str:
        """The value recovery gives one literal of TABLE.COLUMN (unchanged when nothing fits).

        With fuzzy=False only the casing is restored (what expanding a lower-case compact output
        needs): a known value's stored casing, else the column's casing pattern.
        """
        kind = recoverable(table, column)
        entry = self._columns.get((table, column))
        if entry is not None and value in entry.exact:
            return value
        stored = entry.by_lower.get(value.lower()) if entry is not None else None
        if stored is not None and kind is not None:
            return stored
        if fuzzy and question and kind == "fuzzy" and entry is not None:
            # Copying stopped early ("hyperlipidemia" of "... is hyperlipidemia nec/nos?"): a known
            # value the question states in full, around the literal, is the one meant.
            longer = self._known_span_around(entry, value, question)
            if longer is not None:
                return longer
        span = self._question_span(value, question) if fuzzy and question else None
        if kind is None or entry is None:  # numbers, dates, ids: only the question can fix them
            return span if span is not None else value
        if span is not None:
            known = entry.by_lower.get(span.lower())
            if known is not None:
                return known
        if fuzzy and kind == "fuzzy" and entry.choices:
            best = process.extractOne(utils.default_process(value), entry.processed, scorer=fuzz.ratio,
                                      processor=None, score_cutoff=self.threshold)
            if best:
                return entry.choices[best[2]]
        if span is not None:
            value = span
        # Unknown value whose casing was lost (a lower-cased output): the column's casing pattern,
        # e.g. a patient name missing from the demo is still written "First Last".
        if value == value.lower() and entry.pattern:
            return CASINGS[entry.pattern](value)
        return value

    def _question_span(self, value: str, question: str, max_words: int = 12) -> str | None:
        """The run of the question's words closest to `value` (None when none is close enough)."""
        spans = _question_spans(question, max_words)
        if not value.strip() or value.lower() in spans:
            return None  # empty, or copied exactly: nothing to snap
        if _number(value) is not None and any(_number(s) == _number(value) for s in spans):
            return None  # the question's number in the dataset's writing ("2164" stated, "2164.0" stored)
        # Copied text that stops or starts inside a word of the question: complete the words
        # (only for words long enough to tell: a lone "7" inside "72" proves nothing).
        text, piece = " ".join(question.lower().split()), value.lower().strip()
        at = text.find(piece) if len(piece) >= 4 and re.search(r"[a-z]", piece) else -1
        if at >= 0:
            start = text.rfind(" ", 0, at) + 1
            end = text.find(" ", at + len(piece))
            return text[start:end if end >= 0 else len(text)].strip("?.,!;:")
        best = process.extractOne(value.lower(), spans, scorer=fuzz.ratio, score_cutoff=self.span_threshold)
        return best[0] if best else None

    def _known_span_around(self, entry: _ColumnValues, value: str, question: str, max_words: int = 16) -> str | None:
        """The longest run of the question's words that holds `value` and is a known value."""
        piece = " ".join(value.lower().split())
        if len(piece) < 3:
            return None
        known = [span for span in _question_spans(question, max_words) if piece in span and span in entry.by_lower]
        return entry.by_lower[max(known, key=len)] if known else None

    def recover_query(self, query: Query, fuzzy: bool = True, question: str | None = None) -> Query:
        conditions = []
        for c in query.conditions:
            value = self.recover_value(c.table, c.column, c.value, fuzzy, question)
            # Recovery found no value of the column itself: the literal may be its sibling's.
            moved = self.in_sibling(c, question) if fuzzy and self.holds(c.table, c.column, value) is False else None
            conditions.append(moved or Condition(c.table, c.column, c.op, value))
        return Query(query.select, conditions)

    def in_sibling(self, cond: Condition, question: str | None = None) -> Condition | None:
        """The condition moved to its sibling column (`SIBLINGS`) when its literal is a value of the
        sibling, or the model stopped copying inside a sibling value the question states in full;
        None otherwise."""
        sibling = SIBLINGS.get((cond.table, cond.column))
        other = self._columns.get((cond.table, sibling)) if sibling else None
        if other is None:
            return None
        value = other.by_lower.get(cond.value.lower())
        if value is None and question:
            value = self._known_span_around(other, cond.value, question)
        return Condition(cond.table, sibling, cond.op, value) if value is not None else None

    def recover(self, sql: str, question: str | None = None) -> str:
        """SQL with its condition literals recovered; SQL outside the dataset's grammar is returned as is.

        Only the literals change, and a title's column where the literal is its sibling's: the rest
        of the prediction is kept character for character, so recovery never improves a metric by
        reformatting the query.
        """
        try:
            query = parse_sql(sql)
        except FormError:
            return sql
        recovered = self.recover_query(query, question=question)
        if recovered.conditions == query.conditions:
            return sql
        where = _WHERE.search(sql)
        assert where is not None  # parse_sql found conditions, so there is a WHERE
        matches = list(CONDITION_IN_WHERE.finditer(sql, where.end()))
        if len(matches) != len(query.conditions):  # cannot happen for parse_sql's grammar
            return render_sql(recovered)
        pieces, last = [], 0
        for match, cond, was in zip(matches, recovered.conditions, query.conditions, strict=True):
            quote = match["value"][0] if match["value"][0] in "\"'" else '"'
            if cond.column != was.column:  # moved to the sibling column
                pieces += [sql[last:match.start("col")], f'{cond.table}."{cond.column}"']
                last = match.end("col")
            pieces += [sql[last:match.start("value")], quote + cond.value + quote]
            last = match.end("value")
        return "".join(pieces) + sql[last:]


def _question_spans(question: str, max_words: int) -> list[str]:
    """Every run of up to `max_words` of the question's words (lower-cased, outer punctuation
    stripped), once each, in the order they start: ties between spans resolve the same every run."""
    words = question.lower().split()
    return list(dict.fromkeys(" ".join(words[i:j]).strip("?.,!;:") for i in range(len(words))
                              for j in range(i + 1, min(len(words), i + max_words) + 1)))


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


_WORD_START = re.compile(r"(^|\s)([(\[\"']*)([a-z])")  # a word's first letter, after an opening bracket


def _capitalised(text: str, words: int = 0) -> str:
    """The first letter of each word (of the first `words`; 0: all) upper case, the rest as written:
    "Acetaminophen (Liquid)", while "2-n-1" and "w/codeine" stay (str.title would write "2-N-1")."""
    return _WORD_START.sub(lambda m: m[1] + m[2] + m[3].upper(), text, count=words)


# The casings a column's values may follow, each as the function that writes a lower-case text so.
CASINGS = {"upper": str.upper, "sentence": partial(_capitalised, words=1), "title": _capitalised}


def _pattern(values: list[str], share: float = 0.5) -> str | None:
    """The casing most of a column's values follow, if it is the rule (at least `share` of the
    values with letters) and lower case the exception (fewer values written all lower case)."""
    cased = [v for v in values if v.lower() != v.upper()]  # values with letters
    if len(cased) < 2:
        return None
    lower = sum(v == v.lower() for v in cased)
    follow = {name: sum(v == write(v.lower()) for v in cased) for name, write in CASINGS.items()}
    name = max(follow, key=follow.get)  # ties: the first in CASINGS
    return name if follow[name] >= share * len(cased) and follow[name] > lower else None


def _training_queries(path: Path) -> list[Query]:
    """Gold queries of the training split (rows outside the dataset's grammar are skipped)."""
    if not path.is_file():
        raise FileNotFoundError(f"value index: training split {path} not found; run `dvc repro preprocess`")
    queries = []
    for line_no, record in enumerate(read_jsonl(path), start=1):
        sql = record.get("sql") or record.get("target")
        if not isinstance(sql, str):
            raise ValueError(f"{path}:{line_no}: field 'sql' missing or not a string")
        try:
            queries.append(parse_sql(sql))
        except FormError:
            continue  # other sources' SQL may lie outside the grammar: it has no literals to learn from
    return queries

"""Grounded decoding: which of a beam's candidate queries the database can stand behind.

A candidate qualifies when it is
- inside the dataset's grammar (medsql.sqlform.parse_sql reads it),
- type-correct: a numeric column (AGE, DAYS_STAY, years, EXPIRE_FLAG) compared with a number, and
- grounded: every `=` literal of a free-text column (diagnoses, drugs, routes, locations, ...) is a
  value its column holds (the ValueIndex: demo tables, code dictionaries, training literals) or one
  the linker proposed for that column; so is a patient's name.

The Predictor checks each candidate once (`check`) and takes the best-scoring one that qualifies
(`first_grounded`), and says so when none does.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from medsql.evaluation.recovery import ValueIndex, recoverable
from medsql.linking import Link
from medsql.schema import is_numeric
from medsql.sqlform import FormError, Query, parse_sql
from medsql.text import is_number

# Besides the free-text columns: a patient's name must be one the database knows.
NAMED = {("DEMOGRAPHIC", "NAME")}


def problems(sql: str, values: ValueIndex | None, links: Iterable[Link] = ()) -> list[str]:
    """Why the database cannot stand behind this SQL (an empty list: it qualifies)."""
    try:
        query = parse_sql(sql)
    except FormError as err:
        return [f"outside the dataset's grammar ({err})"]
    return query_problems(query, values, links)


def query_problems(query: Query, values: ValueIndex | None, links: Iterable[Link] = ()) -> list[str]:
    proposed = {(link.table, link.column, link.value.lower()) for link in links}
    found = []
    for cond in query.conditions:
        name = f"{cond.table}.{cond.column}"
        if is_numeric(cond.table, cond.column):
            if not is_number(cond.value):
                found.append(f'{name} is a number, compared with text "{cond.value}"')
            continue
        checked = recoverable(cond.table, cond.column) == "fuzzy" or (cond.table, cond.column) in NAMED
        if cond.op != "=" or values is None or not checked:
            continue
        if values.holds(cond.table, cond.column, cond.value) is False and (
                cond.table, cond.column, cond.value.lower()) not in proposed:
            found.append(f'"{cond.value}" is not a value of {name}')
    return found


def check(candidates: Sequence[str], values: ValueIndex | None, links: Iterable[Link] = ()) -> list[list[str]]:
    """Each candidate's problems, in order (a SQL text the beam gave twice is checked once)."""
    links, found = list(links), {}
    for sql in candidates:
        if sql not in found:
            found[sql] = problems(sql, values, links)
    return [found[sql] for sql in candidates]


def first_grounded(found: Sequence[list[str]]) -> tuple[int, list[str]]:
    """(index of the first candidate without problems, []) or, when none is, (0, the top one's problems)."""
    for index, problems_of in enumerate(found):
        if not problems_of:
            return index, []
    return 0, (list(found[0]) if found else ["no candidate"])


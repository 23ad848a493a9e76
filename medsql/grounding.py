"""Grounded decoding: which of a beam's candidate queries the database can stand behind.

A candidate qualifies when it is
- inside the dataset's grammar (medsql.sqlform.parse_sql reads it, and it asks for each column
  once: no query of the dataset selects one twice, or sets one column equal to two values, which
  no row can be),
- type-correct: a numeric column (AGE, DAYS_STAY, years, EXPIRE_FLAG) compared with a number, an
  identifier (SUBJECT_ID, ITEMID, ...) with a whole number, not a name,
- faithful to the question's comparisons: a number the question bounds one way ("over 65", "before
  2150", "3 days or less") is compared that way (`stated_comparison`),
- grounded: every `=` literal of a free-text column (diagnoses, drugs, routes, locations, ...) is a
  value its column holds (the ValueIndex: demo tables, code dictionaries, training literals) or one
  the linker proposed for that column; so is a patient's name, and
- complete: every value the question names word for word or through the lexicon (the linker's
  exact and lexicon links, not its fuzzy guesses) is used: as a literal, in a literal's words, or by
  a condition on or a selection of its column (`left_out`); so is every number it says
  (`numbers_left_out`), and every column it asks about by name ("the drug code and the dose":
  `columns_left_out`) is listed or compared. A small model drops a condition it was told ("female
  medicare pts over 80" without the insurance, or without the age), or lists another column than
  the one asked for, and such an answer looks as sure as a right one unless something says what it
  left out.

The Predictor checks each candidate once (`check`) and takes the best-scoring one that qualifies
(`first_grounded`), and says so when none does. Where the top candidates do not qualify, it also
scores their `mended` versions (a literal trimmed to the value the question names or moved to its
column, a comparison turned the way the question says, a value or a column the question names
added) with its models, ranks them among the candidates, and an answer taken from one says what
was changed.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence

from medsql.evaluation.recovery import ValueIndex, recoverable
from medsql.linking import Link, normalised, within
from medsql.schema import is_identifier, is_numeric
from medsql.sqlform import Condition, FormError, Query, in_dataset_form, parse_sql, render_sql
from medsql.text import is_number

# Besides the free-text columns: a patient's name must be one the database knows.
NAMED = {("DEMOGRAPHIC", "NAME")}

# How people say which way a number bounds a column: words before the number ("over 65") and after
# it ("65 or older"), each with the direction it means ("<" takes < and <=, ">" takes > and >=).
BOUND_BEFORE = {
    ">": ("over", "above", "more than", "greater than", "older than", "after", "later than", "longer than",
          "exceeding", "at least", "past", "beyond", "since", "no less than", "not less than", "no earlier than",
          "not before", "no younger than", "no shorter than", "in or after", "on or after"),
    "<": ("under", "below", "less than", "fewer than", "younger than", "before", "earlier than", "shorter than",
          "at most", "up to", "prior to", "no more than", "not more than", "no older than", "no later than",
          "not after", "no longer than", "in or before", "on or before"),
}
BOUND_AFTER = {
    ">": ("or older", "or more", "or over", "or above", "or later", "or after", "or longer", "and older",
          "and over", "and above", "and up", "plus"),
    "<": ("or younger", "or less", "or fewer", "or under", "or below", "or earlier", "or before", "or shorter",
          "and younger", "and under", "and below"),
}
DIRECTION = {"<": "<", "<=": "<", ">": ">", ">=": ">"}  # a comparison operator's direction
# The cues whose bound takes the number itself ("at least 65": 65 counts), read as >= or <=; every
# cue after the number does ("65 or older"), and so do "less than or equal to", "before or in". Read
# so, the stated operator is the gold one for 1,293 of the training split's 1,312 number conditions
# with a bound, and all 72 of validation's (the other 19: slips of the dataset, "born before 2073" as >).
INCLUSIVE = ("at least", "no less than", "not less than", "no earlier than", "not before", "no younger than",
             "no shorter than", "since", "in or after", "on or after", "at most", "up to", "no more than",
             "not more than", "no older than", "no later than", "not after", "no longer than", "in or before",
             "on or before", "or equal", "before or in", "before or on", "after or in", "after or on",
             *(cue for cues in BOUND_AFTER.values() for cue in cues))
CUE_WORDS = 5  # words before a number searched for a bound (never past the number before it)
UNIT_WORDS = {"days", "day", "years", "year", "yrs", "yr", "old", "yo"}  # may stand between a number and its cue
_WORD = re.compile(r"[a-z]+|\d+(?:\.\d+)?")
# The columns that can use a mention linked to a column: words that say a patient died ("died before
# 2150", "year of death") may ask when (DOD, DOD_YEAR) as well as whether (EXPIRE_FLAG, DISCHARGE_LOCATION).
_DEATH = frozenset(("DEMOGRAPHIC", c) for c in ("DOD", "DOD_YEAR", "EXPIRE_FLAG", "DISCHARGE_LOCATION"))
USED_BY = {("DEMOGRAPHIC", "EXPIRE_FLAG"): _DEATH}
# How questions name the columns they ask about. Said in a training question, each phrase means its
# column is selected or compared in the gold query: for all but 2 of the training split's 4,110
# questions (both slips of the dataset: a procedure's title asked as "the diagnosis short title", an
# ethnicity the gold query leaves out).
# Left out: "type" and "fluid" alone (in "emergency type", "glucose, body fluid"), "drug" and "lab
# test" alone (the drug code, the lab test's chart time), and "icd9 code" without its table, which
# the dataset answers with a title as often as with the code. TITLES: a dictionary title, of the
# diagnoses or the procedures as the question's words or the query's tables say (`_titled`).
TITLES = "TITLES"
COLUMN_PHRASES: dict[tuple[str, str], tuple[str, ...]] = {
    ("DEMOGRAPHIC", "MARITAL_STATUS"): ("marital status",),
    ("DEMOGRAPHIC", "DOB"): ("date of birth", "birth date", "dob"),
    ("DEMOGRAPHIC", "GENDER"): ("gender", "sex"),
    ("DEMOGRAPHIC", "LANGUAGE"): ("language",),
    ("DEMOGRAPHIC", "RELIGION"): ("religion",),
    ("DEMOGRAPHIC", "ADMISSION_TYPE"): ("admission type", "type of admission"),
    ("DEMOGRAPHIC", "DAYS_STAY"): ("days of hospital stay", "hospital stay", "days stay", "length of stay",
                                   "duration of stay"),
    ("DEMOGRAPHIC", "INSURANCE"): ("insurance",),
    ("DEMOGRAPHIC", "ETHNICITY"): ("ethnicity", "ethnic background"),
    ("DEMOGRAPHIC", "EXPIRE_FLAG"): ("death status", "expire flag"),
    ("DEMOGRAPHIC", "ADMISSION_LOCATION"): ("admission location", "admission place"),
    ("DEMOGRAPHIC", "DISCHARGE_LOCATION"): ("discharge location", "discharge place"),
    ("DEMOGRAPHIC", "DIAGNOSIS"): ("primary disease", "primary diagnosis"),
    ("DEMOGRAPHIC", "DOD"): ("date of death", "death date", "dod"),
    ("DEMOGRAPHIC", "ADMITTIME"): ("admission time", "admit time", "time of admission"),
    ("DEMOGRAPHIC", "DISCHTIME"): ("discharge time", "time of discharge"),
    ("DEMOGRAPHIC", "ADMITYEAR"): ("admission year", "year of admission"),
    ("DEMOGRAPHIC", "DOB_YEAR"): ("year of birth", "birth year"),
    ("DEMOGRAPHIC", "DOD_YEAR"): ("year of death", "death year"),
    ("DIAGNOSES", "ICD9_CODE"): ("diagnosis icd9 code", "diagnoses icd9 code", "diagnosis code"),
    ("PROCEDURES", "ICD9_CODE"): ("procedure icd9 code", "procedure code"),
    (TITLES, "SHORT_TITLE"): ("short title",),
    (TITLES, "LONG_TITLE"): ("long title",),
    ("PRESCRIPTIONS", "ICUSTAY_ID"): ("icu stay id", "icustay id"),
    ("PRESCRIPTIONS", "DRUG"): ("drug name", "name of drug", "name of the drug"),
    ("PRESCRIPTIONS", "DRUG_TYPE"): ("drug type", "type of drug"),
    ("PRESCRIPTIONS", "FORMULARY_DRUG_CD"): ("drug code", "formulary drug code", "formulary code"),
    ("PRESCRIPTIONS", "ROUTE"): ("route", "route of administration"),
    ("PRESCRIPTIONS", "DRUG_DOSE"): ("dose", "dosage", "drug dose"),
    ("LAB", "ITEMID"): ("item id", "itemid"),
    ("LAB", "CHARTTIME"): ("chart time", "charttime"),
    ("LAB", "LABEL"): ("lab test name", "name of lab test", "name of the lab test"),
    ("LAB", "FLUID"): ("lab test fluid",),
    ("LAB", "FLAG"): ("abnormal status",),
    ("LAB", "CATEGORY"): ("category",),
}
_TITLE_TABLES = {"DIAGNOSES": ("diagnosis", "diagnoses", "diagnosed"), "PROCEDURES": ("procedure", "procedures")}


def _cues(table: dict[str, tuple[str, ...]]) -> list[tuple[tuple[str, ...], str]]:
    """(words of a cue, its direction), longest first: "no more than" is read before "more than"."""
    return sorted(((tuple(cue.split()), way) for way, cues in table.items() for cue in cues),
                  key=lambda item: -len(item[0]))


_BEFORE, _AFTER = _cues(BOUND_BEFORE), _cues(BOUND_AFTER)


def _bounds_next(rest: list[str]) -> bool:
    """Whether the words after a cue make it the start of the next bound ("and younger than 40", "or under 60")."""
    return bool(rest) and (rest[0] == "than" or rest[0][0].isdigit())


def stated_comparison(question: str, number: str) -> tuple[str, str] | None:
    """(direction, the question's words) where the question bounds `number` one way: ("<", "under 65")
    for "pts under 65", (">", "65 or older"); None where it states no bound, or states it both ways."""
    if not is_number(number):
        return None
    words = _WORD.findall(question.lower())
    found: dict[str, str] = {}
    for at, word in enumerate(words):
        if not word[0].isdigit() or float(word) != float(number):
            continue
        start = at
        while start > 0 and at - start < CUE_WORDS and not words[start - 1][0].isdigit():
            start -= 1
        before = words[start:at]
        nearest = None  # the cue that ends nearest the number (the longest of those)
        for cue_words, way in _BEFORE:
            size = len(cue_words)
            ends = [end for end in range(size, len(before) + 1) if tuple(before[end - size:end]) == cue_words]
            if ends and (nearest is None or max(ends) > nearest[0]):  # the question's words, cue to number
                nearest = (max(ends), way, " ".join(before[max(ends) - size:] + [word]))
        units = 0  # "65 years or older", "3 days or more"
        while units < 2 and at + 1 + units < len(words) and words[at + 1 + units] in UNIT_WORDS:
            units += 1
        after = words[at + 1 + units:at + 4 + units]
        cue = next(((way, " ".join(words[at:at + 1 + units] + list(cue_words))) for cue_words, way in _AFTER
                    if tuple(after[:len(cue_words)]) == cue_words and not _bounds_next(after[len(cue_words):])),
                   None)
        if cue is None and nearest is not None:
            cue = nearest[1:]
        if cue is not None:
            found.setdefault(cue[0], cue[1])
    return next(iter(found.items())) if len(found) == 1 else None


def stated_operator(question: str, number: str) -> tuple[str, str] | None:
    """(the operator, the question's words) its bound on `number` means: (">", "over 65"), (">=", "65
    or older"), ("<=", "no more than 3"); None where it states no bound (`stated_comparison`)."""
    stated = stated_comparison(question, number)
    return None if stated is None else _operator(*stated)


def _operator(way: str, words: str) -> tuple[str, str]:
    """(the operator, the words) of a bound `stated_comparison` read: inclusive where a cue says so."""
    return (way + "=" if any(f" {cue} " in f" {words} " for cue in INCLUSIVE) else way), words


def bound_against(question: str, op: str, number: str) -> tuple[str, str] | None:
    """The question's bound on `number` (as `stated_comparison` gives it) where `op` compares it the
    other way ("over 65" against `<` or `=`); None where the two agree or the question states none."""
    stated = stated_comparison(question, number)
    return stated if stated is not None and DIRECTION.get(op, op) != stated[0] else None


def _columns_used(query: Query) -> set[tuple[str, str]]:
    """The (TABLE, COLUMN)s the query selects or compares."""
    return {(c.table, c.column) for c in query.conditions} | {(t, c) for _, t, c in query.select}


def _uses(used: set[tuple[str, str]], table: str, column: str) -> bool:
    """Whether columns `used` (`_columns_used`) use TABLE.COLUMN: it, or one that answers for it (`USED_BY`)."""
    return bool(used & USED_BY.get((table, column), {(table, column)}))


def left_out(query: Query, links: Iterable[Link]) -> list[Link]:
    """The values the question names (its exact and lexicon links) that the query does not use: the
    best link of each such mention, in the linker's order. A mention is used by its value (or its
    own words) within a literal, or by a condition on or a selection of its column (`USED_BY`); a
    mention within a used one is used too."""
    columns = _columns_used(query)
    literals = [normalised(c.value) for c in query.conditions]
    mentions: dict[str, list[Link]] = {}
    for link in links:
        if link.source != "fuzzy":
            mentions.setdefault(link.span, []).append(link)

    def used(span: str) -> bool:
        return any(_uses(columns, k.table, k.column)
                   or any(within(span, literal) or within(normalised(k.value), literal) for literal in literals)
                   for k in mentions[span])

    found = [span for span in mentions if used(span)]
    return [named[0] for span, named in mentions.items()
            if span not in found and not any(within(span, other) for other in found)]


def _titled(question: str, query: Query) -> str | None:
    """Whose title a question means: the diagnoses or the procedures, as its words say (or else the
    query's one dictionary table); None where neither says."""
    said = [t for t, words in _TITLE_TABLES.items() if any(within(w, question) for w in words)]
    if len(said) != 1:
        said = [t for t in _TITLE_TABLES if t in query.tables] if not said else []
    return said[0] if len(said) == 1 else None


def columns_named(question: str, query: Query) -> list[tuple[str | None, str, str]]:
    """The columns the question names (`COLUMN_PHRASES`), in its order: (TABLE, COLUMN, its words); the
    TABLE of a title is None where neither the question nor the query says whose (`_titled`)."""
    text = normalised(question)
    found = []
    for (table, column), phrases in COLUMN_PHRASES.items():
        said = [p for p in phrases if within(p, text)]
        if said:
            found.append((_titled(text, query) if table == TITLES else table, column, said[0]))
    return sorted(found, key=lambda item: text.find(item[2]))


def columns_left_out(query: Query, question: str) -> list[tuple[str | None, str, str]]:
    """The columns the question names (`columns_named`) that the query neither selects nor compares; a
    title whose table neither the question nor the query says, only where the query uses no such title."""
    used = _columns_used(query)
    return [(table, column, words) for table, column, words in columns_named(question, query)
            if not (_uses(used, table, column) if table else any(c == column for _, c in used))]


def _unasked(query: Query, question: str) -> list[int]:
    """Which of the query's selected columns the question does not ask for: no phrase of `COLUMN_PHRASES`
    names it, nor (for a column without one: NAME, AGE, VALUE_UNIT, ...) a word of its name outside those
    phrases."""
    named = columns_named(question, query)
    rest = normalised(question)
    for _, _, words in named:
        rest = f" {rest} ".replace(f" {words} ", " ")
    asked = {(table, column) for table, column, _ in named}

    def unasked(table: str, column: str) -> bool:
        if (table, column) in COLUMN_PHRASES or table in _TITLE_TABLES and (TITLES, column) in COLUMN_PHRASES:
            return not asked & {(table, column), (None, column)}
        return not any(within(word, rest) for word in column.lower().split("_") if word != "id")

    return [at for at, (_, table, column) in enumerate(query.select) if unasked(table, column)]


def numbers_left_out(query: Query, question: str, links: Iterable[Link] = ()) -> list[str]:
    """The question's numbers that no condition's literal holds (as a whole word: "2138" in
    "2138.0", "16" in "2120-04-16"), but for those within a value it names ("type 2 diabetes")."""
    literals = [normalised(c.value) for c in query.conditions]
    named = [link.span for link in links if link.source != "fuzzy"]
    return list(dict.fromkeys(
        word for word in normalised(question).split() if word.isdigit()
        and not any(within(word, text) for text in literals + named)))


def problems(sql: str, values: ValueIndex | None, links: Iterable[Link] = (), question: str | None = None
             ) -> list[str]:
    """Why the database (or the question) cannot stand behind this SQL (an empty list: it qualifies)."""
    try:
        query = parse_sql(sql)
    except FormError as err:
        return [f"outside the dataset's grammar ({err})"]
    return query_problems(query, values, links, question)


def query_problems(query: Query, values: ValueIndex | None, links: Iterable[Link] = (),
                   question: str | None = None) -> list[str]:
    """`problems` of a parsed query: what the database cannot stand behind, then its `departures`."""
    links = list(links)
    return database_problems(query, values, links) + departures(query, links, question)


def database_problems(query: Query, values: ValueIndex | None, links: Iterable[Link] = ()) -> list[str]:
    """A column asked for twice or set equal to two values, a type error, a literal its column lacks
    (and the linker did not propose)."""
    proposed = _proposed(links)
    found = [f"selects {item[1]}.{item[2]} twice" for item, n in Counter(query.select).items() if n > 1]
    equal: dict[str, dict[str, str]] = {}  # TABLE.COLUMN -> the values it is set equal to, by lower case
    for cond in query.conditions:
        if cond.op == "=":
            equal.setdefault(f"{cond.table}.{cond.column}", {}).setdefault(cond.value.lower(), cond.value)
    found += [f"{name} cannot be both " + " and ".join(f'"{v}"' for v in said.values())
              for name, said in equal.items() if len(said) > 1]
    for cond in query.conditions:
        mistyped = _type_error(cond)
        if mistyped is not None:
            found.append(mistyped)
        elif _unknown(cond, values, proposed):
            found.append(f'"{cond.value}" is not a value of {cond.table}.{cond.column}')
    return found


def _proposed(links: Iterable[Link]) -> set[tuple[str, str, str]]:
    """The values the linker proposed: (table, column, lower-case value)."""
    return {(link.table, link.column, link.value.lower()) for link in links}


def _type_error(cond: Condition) -> str | None:
    """Why `cond` compares its column with the wrong type: text with a numeric column (AGE, DAYS_STAY,
    years), anything but a whole number with an identifier (SUBJECT_ID, ITEMID, ...); None if neither."""
    name = f"{cond.table}.{cond.column}"
    if is_numeric(cond.table, cond.column) and not is_number(cond.value):
        return f'{name} is a number, compared with text "{cond.value}"'
    if is_identifier(cond.table, cond.column) and not cond.value.strip().isdigit():
        return f'{name} is an identifier (a whole number), compared with "{cond.value}"'
    return None


def _unknown(cond: Condition, values: ValueIndex | None, proposed: set[tuple[str, str, str]]) -> bool:
    """Whether `cond` sets a checked column (free text, a patient's name) equal to a literal it does not
    hold and the linker did not propose (`proposed`: (table, column, lower-case value))."""
    checked = recoverable(cond.table, cond.column) == "fuzzy" or (cond.table, cond.column) in NAMED
    return (cond.op == "=" and values is not None and checked
            and values.holds(cond.table, cond.column, cond.value) is False
            and (cond.table, cond.column, cond.value.lower()) not in proposed)


def departures(query: Query, links: Iterable[Link], question: str | None) -> list[str]:
    """Where the query departs from the question: a number compared the other way than the question
    bounds it, a value or a number the question names left out. Such a query answers another
    question, however sure the model is of it, so its answer is marked uncertain (`departs`)."""
    links = list(links)
    found = []
    for cond in query.conditions if question else ():
        stated = bound_against(question, cond.op, cond.value)
        if stated is not None:
            name = f"{cond.table}.{cond.column}"
            found.append(f'the question says "{stated[1]}", the query {name} {cond.op} {cond.value}')
    found += [f'the question names "{k.span}" ({k.table}.{k.column} = {k.value}), which the query leaves out'
              for k in left_out(query, links)]
    if question:
        found += [f'the question asks about the {words}' + (f" ({table}.{column})" if table else "")
                  + ", which the query leaves out" for table, column, words in columns_left_out(query, question)]
        found += [f'the question says "{number}", which the query leaves out'
                  for number in numbers_left_out(query, question, links)]
    return found


def departs(sql: str, links: Iterable[Link], question: str | None) -> bool:
    """Whether this SQL departs from the question (`departures`); SQL outside the grammar says nothing."""
    try:
        return bool(departures(parse_sql(sql), links, question))
    except FormError:
        return False


def check(candidates: Sequence[str], values: ValueIndex | None, links: Iterable[Link] = (),
          question: str | None = None) -> list[list[str]]:
    """Each candidate's problems, in order (a SQL text the beam gave twice is checked once)."""
    links, found = list(links), {}
    for sql in candidates:
        if sql not in found:
            found[sql] = problems(sql, values, links, question)
    return [found[sql] for sql in candidates]


def first_grounded(found: Sequence[list[str]]) -> tuple[int, list[str]]:
    """(index of the first candidate without problems, []) or, when none is, (0, the top one's problems)."""
    for index, problems_of in enumerate(found):
        if not problems_of:
            return index, []
    return 0, (list(found[0]) if found else ["no candidate"])


_LEADING_NUMBER = re.compile(r"\d+(?:\.\d+)?")


def _leads(words: str, text: str) -> bool:
    """Whether `text` starts with the whole words `words` (both normalised), or is all of them."""
    return f"{text} ".startswith(f"{words} ")


def mended(query: Query, values: ValueIndex | None, links: Iterable[Link], question: str
           ) -> tuple[Query, list[str]] | None:
    """A candidate mended where the question and the database say how, with what was changed (in
    words); None where that reads as the candidate itself or still does not qualify (`query_problems`):
    - a literal its column lacks, which starts with a value the linker found in the question, becomes
      that value in that value's column ("Anna Morris Go When" -> NAME = "Anna Morris"; "MEDICARE"
      under DISCHARGE_LOCATION -> INSURANCE = "Medicare"); where another condition sets that
      column already, the copy is dropped,
    - a number or an identifier compared with text that starts with a number the question says
      ("10098's") is compared with that number,
    - a number compared the other way than the question bounds it is compared as the question says
      (`stated_operator`: "over 65" >, "65 and up" >=),
    - a value the question names that the query leaves out (`left_out`) is added as a condition,
    - a column the question asks about (`columns_left_out`: "the drug code and the dose") that a query
      listing columns leaves out takes the place of a column it lists twice or that the question does
      not ask for (`_unasked`), or joins them; a column still listed twice is listed once.
    The Predictor scores the mended query with its models (teacher forcing) and ranks it among the
    beam's candidates: the models, not this function, decide whether it is the answer."""
    links = list(links)
    proposed = _proposed(links)
    said = set(_WORD.findall(question.lower()))
    changes: list[str] = []
    conditions: list[Condition] = []
    for at, cond in enumerate(query.conditions):
        name = f"{cond.table}.{cond.column}"
        if _type_error(cond) is not None:
            number = _LEADING_NUMBER.match(cond.value.strip())
            if number and number[0] in said:
                conditions.append(Condition(cond.table, cond.column, cond.op, number[0]))
                changes.append(f'{name} {cond.op} {number[0]}, for "{cond.value}"')
                continue
        elif _unknown(cond, values, proposed):
            literal = normalised(cond.value)
            named = [k for k in links if _leads(normalised(k.value), literal) or _leads(k.span, literal)]
            named.sort(key=lambda k: (k.table, k.column) != (cond.table, cond.column))  # its own column first
            if named:
                k = named[0]
                others = {(c.table, c.column) for i, c in enumerate(query.conditions) if i != at}
                if (k.table, k.column) != (cond.table, cond.column) and (k.table, k.column) in others:
                    changes.append(f'dropped {name} = "{cond.value}": the question\'s "{k.span}" is '
                                   f'{k.table}.{k.column}, which the query sets already')
                    continue
                conditions.append(Condition(k.table, k.column, "=", k.value))
                changes.append(f'{k.table}.{k.column} = "{k.value}" (the question\'s "{k.span}"), '
                               f'for {name} = "{cond.value}"')
                continue
        conditions.append(cond)
    added = left_out(Query(query.select, conditions), links)
    conditions += [Condition(k.table, k.column, "=", k.value) for k in added]
    changes += [f'added {k.table}.{k.column} = "{k.value}" (the question\'s "{k.span}")' for k in added]
    for at, cond in enumerate(conditions):
        against = bound_against(question, cond.op, cond.value)
        if against is not None:
            op, words = _operator(*against)
            conditions[at] = Condition(cond.table, cond.column, op, cond.value)
            changes.append(f'{cond.table}.{cond.column} {op} {cond.value}, as the question says "{words}"')
    select = list(query.select)
    text = normalised(question)
    for table, column, words in columns_left_out(Query(select, conditions), question):
        # A column asked about, not a condition said of it ("whose insurance is ..."), by a query that
        # lists columns (not one that counts or aggregates).
        if table is None or any(agg for agg, _, _ in select) or any(
                within(f"{words} {verb}", text) for verb in ("is", "was", "are", "were")):
            continue
        # A column listed twice leaves a place first; then one the question does not ask for.
        twice = [at for at, item in enumerate(select) if item in select[:at]]
        spare = twice + _unasked(Query(select, conditions), question)
        if spare:
            _, was_table, was_column = select[spare[0]]
            select[spare[0]] = (None, table, column)
            changes.append(f'selected {table}.{column} (the question\'s "{words}") for {was_table}.{was_column}')
        else:
            select.append((None, table, column))
            changes.append(f'selected {table}.{column} too (the question\'s "{words}")')
    if len(set(select)) < len(select):
        changes += [f"listed {table}.{column} once" for (_, table, column), n in Counter(select).items() if n > 1]
        select = list(dict.fromkeys(select))
    version = in_dataset_form(Query(select, list(dict.fromkeys(conditions))))
    if render_sql(version) == render_sql(query) or query_problems(version, values, links, question):
        return None
    return version, changes

"""Training-time augmentation: new question/SQL pairs that say the same things the way people do.

MIMICSQL asks each query three ways, and its wordings are narrow: ages are "less than" or "greater
than or equal to", drugs are "drug name is X", nobody says "pts", "over 65", "got lasix" or "came in
via the ER". A small model trained on them reads only those words. `phrasings` writes, for each
training pair, new pairs from its structure (the `Query` the dataset's SQL parses to, i.e. the
dataset's structured form):

- values: each literal may be swapped for another real value of its column (the demo tables, code
  dictionaries and training literals: never an evaluation set), numbers for other numbers;
- operators: a numeric comparison may take another operator (over / at least / under / at most),
  the SQL operator changed with the words, so the pair stays right;
- wording: the question is written from phrase templates, several per column and operator
  (over / older than / above / at least / or older; got / received / was given / on; admitted
  through / came in via; ...), and a value the clinical lexicon (medsql/resources/lexicon.yaml)
  has a name for is sometimes said by that name ("lasix" for Furosemide, "chf", "by mouth" for PO).

- questions about one patient: half of those about one column are asked as people ask ("when was
  pt 10019 admitted", "what meds was pt 10019 on"), not by the column's name;
- structure (`train.augment_extra_conditions`, a quarter by default): a share of the pairs about counted
  or aggregated patients gets one more condition (gender, age, insurance, a diagnosis, a drug, its
  route, a lab ...), so three AND-ed conditions and pairs of tables the dataset never has are seen.

Queries with a part no template covers (dates, doses, units) get no new pairs. Everything is drawn
from one seeded random generator: the same seed, rows and values give the same pairs.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from typing import Any

from medsql.evaluation.recovery import ValueIndex
from medsql.explain import column_name
from medsql.linking import LEXICON, load_lexicon, normalised
from medsql.schema import TABLE_ORDER
from medsql.sqlform import Condition, FormError, Query, parse_sql, render_sql
from medsql.text import model_input, normalise_question

# Numeric comparisons people phrase both ways: (column -> operator -> phrasings); {n} is the number.
_AGE = {
    ">": ["over {n}", "older than {n}", "above {n} years old", "aged over {n}", "more than {n} years old"],
    ">=": ["{n} or older", "at least {n} years old", "aged {n} and above", "aged {n} or more", "{n} and over"],
    "<": ["under {n}", "younger than {n}", "below {n} years of age", "less than {n} years old", "under age {n}"],
    "<=": ["{n} or younger", "at most {n} years old", "aged {n} or under", "no older than {n}"],
    "=": ["aged {n}", "{n} years old"],
}
_STAY = {
    ">": ["who stayed more than {n} days", "with a length of stay over {n} days", "hospitalized over {n} days",
          "with a los above {n} days"],
    ">=": ["who stayed at least {n} days", "with a stay of {n} days or more", "with a los of at least {n} days"],
    "<": ["who stayed less than {n} days", "with a stay shorter than {n} days", "with a los under {n} days"],
    "<=": ["who stayed {n} days or less", "with a stay of at most {n} days", "with a los of no more than {n} days"],
    "=": ["who stayed {n} days", "with a length of stay of {n} days", "with a los of {n} days"],
}
_YEAR = {  # {what} is the event: admitted, born, died
    ">": ["{what} after {n}"], ">=": ["{what} in {n} or later", "{what} in or after {n}"],
    "<": ["{what} before {n}"], "<=": ["{what} in or before {n}", "{what} no later than {n}"],
    "=": ["{what} in {n}"],
}
_NUMERIC = {("DEMOGRAPHIC", "AGE"): (_AGE, ""), ("DEMOGRAPHIC", "DAYS_STAY"): (_STAY, ""),
            ("DEMOGRAPHIC", "ADMITYEAR"): (_YEAR, "admitted"), ("DEMOGRAPHIC", "DOB_YEAR"): (_YEAR, "born"),
            ("DEMOGRAPHIC", "DOD_YEAR"): (_YEAR, "who died")}
_COMPARISONS = (">", ">=", "<", "<=")

# Text conditions: (table, column) -> phrasings of `= value`; a leading "^" puts it before "patients".
_TEXT = {
    ("DEMOGRAPHIC", "MARITAL_STATUS"): ["^{v}", "whose marital status is {v}"],
    ("DEMOGRAPHIC", "RELIGION"): ["whose religion is {v}", "of {v} religion", "who are {v}"],
    ("DEMOGRAPHIC", "LANGUAGE"): ["whose language is {v}", "who speak {v}"],
    ("DEMOGRAPHIC", "INSURANCE"): ["with {v} insurance", "covered by {v}", "on {v}", "^{v}"],
    ("DEMOGRAPHIC", "ETHNICITY"): ["whose ethnicity is {v}", "of {v} ethnicity", "who are {v}"],
    ("DEMOGRAPHIC", "ADMISSION_TYPE"): ["admitted as {v}", "with an {v} admission", "whose admission type is {v}",
                                        "^{v}"],
    ("DEMOGRAPHIC", "ADMISSION_LOCATION"): ["admitted through {v}", "who came in via {v}", "admitted from {v}",
                                            "who came in through {v}"],
    ("DEMOGRAPHIC", "DISCHARGE_LOCATION"): ["discharged to {v}", "sent to {v}", "whose discharge location is {v}",
                                            "who went to {v}"],
    ("DEMOGRAPHIC", "DIAGNOSIS"): ["admitted for {v}", "whose primary disease is {v}",
                                   "with a primary diagnosis of {v}", "admitted with {v}"],
    ("DEMOGRAPHIC", "NAME"): ["named {v}", "called {v}"],
    ("DIAGNOSES", "SHORT_TITLE"): ["diagnosed with {v}", "with a diagnosis of {v}", "who have {v}", "with {v}"],
    ("DIAGNOSES", "LONG_TITLE"): ["diagnosed with {v}", "with a diagnosis of {v}", "who have {v}", "with {v}"],
    ("DIAGNOSES", "ICD9_CODE"): ["with diagnosis code {v}", "with icd9 code {v}", "with dx code {v}"],
    ("PROCEDURES", "SHORT_TITLE"): ["who underwent {v}", "who had {v}", "with a procedure of {v}", "who got {v}"],
    ("PROCEDURES", "LONG_TITLE"): ["who underwent {v}", "who had {v}", "with a procedure of {v}", "who got {v}"],
    ("PROCEDURES", "ICD9_CODE"): ["with procedure code {v}", "who had procedure {v}"],
    ("PRESCRIPTIONS", "DRUG"): ["who got {v}", "who received {v}", "who were given {v}", "on {v}",
                                "prescribed {v}", "taking {v}"],
    ("PRESCRIPTIONS", "DRUG_TYPE"): ["with a {v} drug", "whose drug type is {v}", "given a {v} type drug"],
    ("PRESCRIPTIONS", "ROUTE"): ["given drugs by {v} route", "whose drug route is {v}", "who got medication {v}",
                                 "with a drug given {v}"],
    ("PRESCRIPTIONS", "FORMULARY_DRUG_CD"): ["with drug code {v}", "prescribed drug code {v}"],
    ("LAB", "LABEL"): ["who had a {v} test", "with a {v} lab test", "who had {v} checked", "with a {v} lab"],
    ("LAB", "FLUID"): ["with a {v} lab test", "whose lab fluid is {v}", "with a {v} sample"],
    ("LAB", "CATEGORY"): ["with a {v} lab test", "whose lab category is {v}", "with {v} labs"],
    ("LAB", "ITEMID"): ["with lab item id {v}", "with lab item {v}"],
}
_FIXED = {  # conditions whose value has its own words
    ("DEMOGRAPHIC", "GENDER", "F"): ["^female", "^women", "who are female"],
    ("DEMOGRAPHIC", "GENDER", "M"): ["^male", "^men", "who are male"],
    ("DEMOGRAPHIC", "EXPIRE_FLAG", "1"): ["who died", "who passed away", "who expired", "^deceased"],
    ("DEMOGRAPHIC", "EXPIRE_FLAG", "0"): ["who are alive", "who survived"],
    ("LAB", "FLAG", "abnormal"): ["with an abnormal lab result", "with abnormal labs", "with an abnormal lab"],
    ("LAB", "FLAG", "delta"): ["with a delta lab flag", "with a lab flagged delta"],
}
_PATIENT = ["patients", "patients", "pts"]
_COUNT = ["how many {p}", "count the {p}", "number of {p}", "how many {p} are there", "give me the number of {p}",
          "count {p}"]
# Aggregates over a column: (aggregate, column) -> phrasings ({p}: the patients phrase).
_AGGREGATE = {
    ("max", "AGE"): ["what is the maximum age of {p}", "age of the oldest of {p}", "max age of {p}"],
    ("min", "AGE"): ["what is the minimum age of {p}", "age of the youngest of {p}", "min age of {p}"],
    ("avg", "AGE"): ["what is the average age of {p}", "mean age of {p}", "avg age of {p}"],
    ("max", "DAYS_STAY"): ["what is the longest stay in days of {p}", "max days of stay of {p}"],
    ("min", "DAYS_STAY"): ["what is the shortest stay in days of {p}", "min days of stay of {p}"],
    ("avg", "DAYS_STAY"): ["what is the average length of stay of {p}", "avg los of {p}"],
}
_SHOW = ["what is the {c} of", "show the {c} of", "list the {c} for", "give me the {c} of", "{c} of"]
# A question about one patient, as people ask it rather than naming the column ({s}: the patient):
# "when was pt 10019 admitted" for the admission time, "how long did pt 10019 stay" for the days of
# stay. The diagnosis and procedure titles are not here: "what was {s} diagnosed with" does not say
# which of the short and long title is meant, so those keep the column's own name.
_ABOUT_ONE = {
    ("DEMOGRAPHIC", "ADMITTIME"): ["when was {s} admitted", "what time was {s} admitted", "admit time for {s}"],
    ("DEMOGRAPHIC", "DISCHTIME"): ["when was {s} discharged", "what time was {s} discharged",
                                   "discharge time for {s}"],
    ("DEMOGRAPHIC", "DOB"): ["when was {s} born", "what is the dob of {s}", "birth date of {s}"],
    ("DEMOGRAPHIC", "DOD"): ["when did {s} die", "what is the date of death of {s}", "dod of {s}"],
    ("DEMOGRAPHIC", "AGE"): ["how old is {s}", "what age is {s}"],
    ("DEMOGRAPHIC", "DAYS_STAY"): ["how long did {s} stay", "how many days did {s} stay in the hospital",
                                   "los of {s}"],
    ("DEMOGRAPHIC", "GENDER"): ["is {s} male or female", "what sex is {s}"],
    ("DEMOGRAPHIC", "LANGUAGE"): ["what language does {s} speak", "which language does {s} speak"],
    ("DEMOGRAPHIC", "RELIGION"): ["what religion is {s}", "what is the religion of {s}"],
    ("DEMOGRAPHIC", "MARITAL_STATUS"): ["is {s} married", "what is the marital status of {s}"],
    ("DEMOGRAPHIC", "INSURANCE"): ["what insurance does {s} have", "what insurance is {s} on",
                                   "who insures {s}"],
    ("DEMOGRAPHIC", "ETHNICITY"): ["what ethnicity is {s}", "what race is {s}"],
    ("DEMOGRAPHIC", "ADMISSION_TYPE"): ["what kind of admission was {s}", "what type of admission did {s} have"],
    ("DEMOGRAPHIC", "ADMISSION_LOCATION"): ["where was {s} admitted from", "how did {s} come in",
                                            "where did {s} come in from"],
    ("DEMOGRAPHIC", "DISCHARGE_LOCATION"): ["where was {s} discharged to", "where did {s} go after discharge",
                                            "where was {s} sent"],
    ("DEMOGRAPHIC", "DIAGNOSIS"): ["what was {s} admitted for", "why was {s} admitted",
                                   "what is the primary disease of {s}"],
    ("DEMOGRAPHIC", "EXPIRE_FLAG"): ["did {s} die", "is {s} alive", "did {s} pass away"],
    ("DEMOGRAPHIC", "NAME"): ["what is the name of {s}", "what is {s} called", "who is {s}"],
    ("PRESCRIPTIONS", "DRUG"): ["what meds was {s} on", "what drugs was {s} given", "what medications did {s} get",
                                "what was {s} prescribed"],
    ("LAB", "LABEL"): ["what labs did {s} have", "what lab tests were done on {s}"],
}
_ONE_PATIENT = {"SUBJECT_ID": ["patient {v}", "pt {v}", "subject {v}"], "NAME": ["{v}", "patient {v}"]}
ABOUT_ONE_SHARE = 0.5  # chance a question about one patient's column is asked as _ABOUT_ONE says it
# Columns a pair may get one more condition on (train.augment_extra_conditions, the share of pairs):
# the dataset's queries have at most two conditions and few pairs of tables (never a drug with its
# route, a diagnosis with a procedure); people ask "female medicare pts over 80", "pts who got lasix iv".
_EXTRA = [("DEMOGRAPHIC", "GENDER"), ("DEMOGRAPHIC", "AGE"), ("DEMOGRAPHIC", "EXPIRE_FLAG"),
          ("DEMOGRAPHIC", "DAYS_STAY"), ("DEMOGRAPHIC", "ADMISSION_TYPE"), ("DEMOGRAPHIC", "INSURANCE"),
          ("DEMOGRAPHIC", "MARITAL_STATUS"), ("DEMOGRAPHIC", "ADMISSION_LOCATION"),
          ("DEMOGRAPHIC", "DISCHARGE_LOCATION"), ("DEMOGRAPHIC", "ETHNICITY"), ("DEMOGRAPHIC", "DIAGNOSIS"),
          ("DIAGNOSES", "SHORT_TITLE"), ("PROCEDURES", "SHORT_TITLE"), ("PRESCRIPTIONS", "DRUG"),
          ("PRESCRIPTIONS", "ROUTE"), ("LAB", "LABEL"), ("LAB", "FLAG")]
LEXICON_SHARE = 0.5   # chance a value the lexicon has a name for is said by that name
SWAP_SHARE = 0.5      # chance a literal is swapped for another real value of its column
OPERATOR_SHARE = 0.5  # chance a numeric comparison takes another operator


class _Words:
    """The lexicon read backwards: a value -> the names people use for it."""

    def __init__(self) -> None:
        self.by_value: dict[tuple[str, str, str], list[str]] = defaultdict(list)
        self.by_phrase: dict[str, list[str]] = defaultdict(list)
        for term in load_lexicon(LEXICON):
            for table, column, value in term.links:
                self.by_value[(table, column, value.lower())] += list(term.says)
            if term.means:
                self.by_phrase[term.means] += list(term.says)

    def names(self, table: str, column: str, value: str) -> list[str]:
        return self.by_value.get((table, column, value.lower()), []) + self.by_phrase.get(normalised(value), [])


def phrasings(rows: list[dict[str, Any]], values: ValueIndex | None, copies: int, seed: int,
              task_prefix: str, lowercase: bool, with_schema: bool, extra_conditions: float
              ) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """`copies` new pairs per training row (those the templates cover), and counts of what was varied;
    `extra_conditions` of them (a share) get one more condition."""
    rng, words, stats = random.Random(seed), _Words(), Counter()
    out = []
    for _ in range(copies):
        for row in rows:
            try:
                query = parse_sql(row["sql"])
            except FormError:
                continue
            made = _pair(query, values, words, rng, stats, extra_conditions)
            if made is None:
                stats["skipped"] += 1
                continue
            question, new_query = made
            sql = render_sql(new_query)
            text = normalise_question(question, lowercase)
            out.append(dict(row, question=question, sql=sql, target=sql, variant=f"{row['variant']}+phrasing",
                            input=model_input(text, task_prefix, with_schema)))
            stats["pairs"] += 1
    return out, dict(sorted(stats.items()))


def _pair(query: Query, values: ValueIndex | None, words: _Words, rng: random.Random, stats: Counter,
          extra_conditions: float) -> tuple[str, Query] | None:
    conditions, before, after = [], [], []
    extra = bool(extra_conditions) and rng.random() < extra_conditions  # no draw when off: same pairs as before
    for cond in (_with_extra(query, values, rng, stats) if extra else query.conditions):
        made = _condition(cond, values, words, rng, stats)
        if made is None:
            return None
        new, phrase = made
        conditions.append(new)
        (before if phrase.startswith("^") else after).append(phrase.lstrip("^"))
    patients = " ".join([*before, rng.choice(_PATIENT)])
    question = _about_one(query, conditions, rng, stats) or _select(query, patients, after, rng)
    if question is None:
        return None
    return question + rng.choice(["?", "", "?"]), Query(list(query.select), conditions)


def _with_extra(query: Query, values: ValueIndex | None, rng: random.Random, stats: Counter) -> list[Condition]:
    """The query's conditions and one more about the patients counted or aggregated (placed by its
    table, as the dataset orders conditions): none for a query about one patient."""
    conditions = list(query.conditions)
    if (len(conditions) >= 3 or values is None
            or any(a is None for a, _, _ in query.select)
            or any(c.column in ("SUBJECT_ID", "NAME") for c in conditions)):
        return conditions
    table, column = rng.choice([k for k in _EXTRA if k not in {(c.table, c.column) for c in conditions}])
    said = [v for t, c, v in _FIXED if (t, c) == (table, column)]  # a value with its own words
    if said:
        value = rng.choice(said)
    elif column == "AGE":
        value = str(rng.randint(20, 89))
    elif column == "DAYS_STAY":
        value = str(rng.randint(2, 30))
    else:
        choices = [v for v in values.values(table, column) if '"' not in v]
        if not choices:
            return conditions
        value = rng.choice(choices)
    op = rng.choice(_COMPARISONS) if column in ("AGE", "DAYS_STAY") else "="
    at = sum(TABLE_ORDER.index(c.table) <= TABLE_ORDER.index(table) for c in conditions)
    stats["condition_added"] += 1
    return [*conditions[:at], Condition(table, column, op, value), *conditions[at:]]


def _condition(cond: Condition, values: ValueIndex | None, words: _Words, rng: random.Random, stats: Counter
               ) -> tuple[Condition, str] | None:
    key = (cond.table, cond.column)
    if key in _NUMERIC:
        templates, what = _NUMERIC[key]
        op = cond.op
        if op in _COMPARISONS and rng.random() < OPERATOR_SHARE:
            op = rng.choice(_COMPARISONS)
            stats["operator_changed"] += op != cond.op
        if op not in templates:
            return None
        value = cond.value
        if rng.random() < SWAP_SHARE and value.replace(".", "", 1).isdigit():
            whole = value.split(".")[0]
            if len(whole) > 1:  # years stay plausible years; ages and stays any number of as many digits
                new = (str(int(whole) + rng.randint(-30, 30)) if what
                       else str(rng.randrange(10 ** (len(whole) - 1), 10 ** len(whole))))
                value = new + (value[len(whole):] if "." in value else "")
                stats["number_swapped"] += 1
        number = value.split(".")[0] if value.endswith(".0") else value
        phrase = rng.choice(templates[op]).format(n=number, what=what).strip()
        return Condition(cond.table, cond.column, op, value), phrase
    if cond.op != "=":
        return None
    fixed = _FIXED.get((cond.table, cond.column, cond.value))
    if fixed is not None:
        return cond, rng.choice(fixed)
    if key == ("DEMOGRAPHIC", "SUBJECT_ID"):
        return cond, rng.choice(["of patient {v}", "for patient {v}", "of pt {v}", "of subject id {v}"]).format(
            v=cond.value)
    if key not in _TEXT:
        return None
    value = cond.value
    if values is not None and rng.random() < SWAP_SHARE and key not in (("DEMOGRAPHIC", "NAME"),):
        choices = [v for v in values.values(cond.table, cond.column) if '"' not in v]
        if choices:
            value = rng.choice(choices)
            stats["value_swapped"] += 1
    said = value.lower()
    names = words.names(cond.table, cond.column, value)
    if names and rng.random() < LEXICON_SHARE:
        said = rng.choice(names)
        stats["lexicon_name"] += 1
    return Condition(cond.table, cond.column, "=", value), rng.choice(_TEXT[key]).format(v=said)


def _about_one(query: Query, conditions: list[Condition], rng: random.Random, stats: Counter) -> str | None:
    """Half the questions about one column of one patient, asked as people ask them (`_ABOUT_ONE`);
    None for the others, which `_select` words."""
    if len(query.select) != 1 or len(conditions) != 1 or conditions[0].column not in _ONE_PATIENT:
        return None
    asks = _ABOUT_ONE.get(query.select[0][1:])
    if query.select[0][0] is not None or not asks or rng.random() >= ABOUT_ONE_SHARE:
        return None
    patient = rng.choice(_ONE_PATIENT[conditions[0].column]).format(v=conditions[0].value.lower())
    stats["asked_about_one"] += 1
    return rng.choice(asks).format(s=patient)


def _select(query: Query, patients: str, conditions: list[str], rng: random.Random) -> str | None:
    tail = (" " + " and ".join(conditions)) if conditions else ""
    if len(query.select) == 1 and query.select[0][0] == "count_distinct" and query.select[0][2] == "SUBJECT_ID":
        return rng.choice(_COUNT).format(p=patients) + tail
    if len(query.select) == 1 and query.select[0][0] in ("max", "min", "avg"):
        templates = _AGGREGATE.get((query.select[0][0], query.select[0][2]))
        return rng.choice(templates).format(p=patients) + tail if templates else None
    if any(agg is not None for agg, _, _ in query.select):
        return None
    # A selected column is named as the plain-English reading names it ("prescription route").
    subject = " and ".join(column_name(table, column).lower() for _, table, column in query.select)
    # A plain select names its rows by condition: "the drug route of patient 10019" (the condition
    # brings its own "of"), or "the drug route of pts who got x".
    shown = rng.choice(_SHOW).format(c=subject)
    if conditions and conditions[0].startswith(("of ", "for ")):
        return shown.rsplit(" ", 1)[0] + tail
    return f"{shown} {patients}{tail}"

"""The shapes SQL takes in medsql: the dataset's SQL, its logic form, and a compact target form.

MIMICSQL's SQL is generated from a structure (aggregation, selected columns, AND-ed conditions);
the FROM clause follows from the set of tables the columns name. A `Query` is that structure:
`parse_sql` reads it off the dataset's SQL and `render_sql` writes the SQL back. The compact form
keeps only that structure, so a small model emits about a third of the tokens: `to_compact` writes
it, `parse_compact` reads it, and `render_sql(parse_compact(text))` expands it back into the
dataset's exact SQL.

    SELECT COUNT ( DISTINCT DEMOGRAPHIC."SUBJECT_ID" ) FROM DEMOGRAPHIC INNER JOIN DIAGNOSES
    on DEMOGRAPHIC.HADM_ID = DIAGNOSES.HADM_ID WHERE DIAGNOSES."SHORT_TITLE" = "Mal neo ..."
    <->  count_distinct demographic.subject_id where diagnoses.short_title = " mal neo ... "
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from medsql.schema import TABLE_ORDER, TABLES
from medsql.text import collapse_whitespace

AGGREGATES = ("count_distinct", "count", "max", "min", "avg", "sum")
OPERATORS = ("<=", ">=", "!=", "=", "<", ">")
COLUMN_TOKENS = [f"{t}.{c}".lower() for t, cols in TABLES.items() for c in cols]

_LITERAL = re.compile(r'(?<![.\w])"([^"]*)"')
_SELECT = re.compile(r"^\s*SELECT\s+(?P<sel>.*?)\s+FROM\s+(?P<from>.*?)(?:\s+WHERE\s+(?P<where>.*))?\s*$",
                     re.IGNORECASE | re.DOTALL)
_AGG_ITEM = re.compile(r"^(?P<agg>\w+)\s*\(\s*(?P<distinct>DISTINCT\s+)?(?P<col>[^()]+?)\s*\)$", re.IGNORECASE)
_COLUMN = re.compile(r'^(?P<table>\w+)\."?(?P<column>\w+)"?$')
# One condition of the WHERE clause: `TABLE."COLUMN" op value` (the value quoted or bare). parse_sql
# reads conditions with it; value recovery finds the literals it rewrites with it.
CONDITION_IN_WHERE = re.compile(
    r'(?P<col>\w+\."?\w+"?)\s*(?P<op><=|>=|!=|=|<|>)\s*(?P<value>"[^"]*"|\'[^\']*\'|[^\s"\']+)')


class FormError(ValueError):
    """Text that is not in the form expected (SQL outside the dataset's grammar, bad compact form)."""


def to_single_quotes(sql: str) -> str:
    """Rewrite double-quoted string literals as single-quoted ones, leaving `T."COL"` identifiers.

    SQLite builds without double-quoted-string support reject the dataset's `= "value"`.
    """
    return _LITERAL.sub(lambda m: "'" + m.group(1).replace("'", "''") + "'", sql)


def logic_form(sql: str) -> str:
    """TREQS's logic form for exact comparison: lower-cased, whitespace collapsed."""
    return collapse_whitespace(sql.lower())


# One selected item: (aggregate or None, table, column), e.g. ("count_distinct", "DEMOGRAPHIC", "SUBJECT_ID").
SelectItem = tuple[str | None, str, str]


@dataclass(frozen=True)
class Condition:
    """One AND-ed condition: TABLE.COLUMN compared with a literal (the literal without its quotes)."""

    table: str
    column: str
    op: str
    value: str


@dataclass
class Query:
    """One query of the dataset's grammar."""

    select: list[SelectItem]
    conditions: list[Condition] = field(default_factory=list)

    @property
    def tables(self) -> list[str]:
        named = {t for _, t, _ in self.select} | {c.table for c in self.conditions}
        return [t for t in TABLE_ORDER if t in named]


def _column(text: str) -> tuple[str, str]:
    m = _COLUMN.match(text.strip())
    if not m:
        raise FormError(f"not a TABLE.COLUMN reference: {text!r}")
    table, column = m["table"].upper(), m["column"].upper()
    if table not in TABLES or column not in TABLES[table]:
        raise FormError(f"unknown column {table}.{column}")
    return table, column


def parse_sql(sql: str) -> Query:
    """Parse SQL of the dataset's grammar into a Query (FormError when outside it)."""
    m = _SELECT.match(sql)
    if not m:
        raise FormError(f"not SELECT ... FROM ... [WHERE ...]: {sql!r}")
    select = []
    for item in m["sel"].split(","):
        item = item.strip()
        agg = _AGG_ITEM.match(item)
        if agg:
            name = agg["agg"].lower()
            if agg["distinct"]:
                name += "_distinct"
            if name not in AGGREGATES:
                raise FormError(f"unknown aggregate {name!r}")
            select.append((name, *_column(agg["col"])))
        else:
            select.append((None, *_column(item)))
    conditions = []
    if m["where"]:
        where = m["where"].strip()
        pos = 0
        for i, c in enumerate(CONDITION_IN_WHERE.finditer(where)):
            gap = where[pos:c.start()].strip()
            if gap.upper() != ("AND" if i else ""):
                raise FormError(f"condition outside the grammar near {where[pos:c.end()]!r}")
            value = c["value"]
            if value[0] in "\"'":
                value = value[1:-1]
            conditions.append(Condition(*_column(c["col"]), c["op"], value))
            pos = c.end()
        if not conditions or where[pos:].strip():
            raise FormError(f"condition outside the grammar: {where[pos:]!r}")
    query = Query(select, conditions)
    if render_sql(query).split() != sql.split():
        # The FROM clause (or spacing of the select) is not the one the tables imply.
        expected_from = _from_clause(query.tables)
        if collapse_whitespace(m["from"]).lower() != expected_from.lower():
            raise FormError(f"FROM clause {m['from']!r} is not the join the tables imply")
    return query


def in_schema_order(query: Query) -> Query:
    """The query with its columns (a select of plain columns, two or more) in the schema's order, tables
    first, as every such query of the dataset lists them (all 549 of the training split's)."""
    if len(query.select) < 2 or any(agg for agg, _, _ in query.select):
        return query
    ordered = sorted(query.select, key=lambda item: (TABLE_ORDER.index(item[1]), TABLES[item[1]].index(item[2])))
    return query if ordered == query.select else Query(ordered, list(query.conditions))


def subject_on_its_table(query: Query) -> Query:
    """The query with a condition on a patient's SUBJECT_ID set on the table the dataset sets it on:
    the first table in the schema's order (DEMOGRAPHIC first) that the query otherwise uses, as all
    441 such conditions of the training split are. The tables are joined on the admission, which is
    one patient's, so the query asks the same of that patient; a table that only the condition used
    is no longer joined (the dataset never joins one for it alone)."""
    conditions = list(query.conditions)
    for at, cond in enumerate(conditions):
        if cond.column != "SUBJECT_ID":
            continue
        others = {t for _, t, _ in query.select} | {c.table for i, c in enumerate(conditions) if i != at}
        if others:
            conditions[at] = Condition(min(others, key=TABLE_ORDER.index), cond.column, cond.op, cond.value)
    return query if conditions == query.conditions else Query(list(query.select), conditions)


def in_dataset_form(query: Query) -> Query:
    """The query as the dataset writes such a query: its columns in the schema's order
    (`in_schema_order`) and a patient's SUBJECT_ID condition on the dataset's table
    (`subject_on_its_table`). Logic form compares queries as they are written, so an answer is
    written as the dataset would write it."""
    return subject_on_its_table(in_schema_order(query))


def _from_clause(tables: list[str]) -> str:
    base, *others = tables
    return " ".join([base] + [f"INNER JOIN {t} on {base}.HADM_ID = {t}.HADM_ID" for t in others])


def render_sql(query: Query) -> str:
    """The dataset's SQL for a Query (double-quoted literals, as MIMICSQL writes them)."""
    items = []
    for agg, table, column in query.select:
        ref = f'{table}."{column}"'
        if agg is None:
            items.append(ref)
        elif agg.endswith("_distinct"):
            items.append(f"{agg.split('_')[0].upper()} ( DISTINCT {ref} )")
        else:
            items.append(f"{agg.upper()} ( {ref} )")
    sql = f"SELECT {','.join(items)} FROM {_from_clause(query.tables)}"
    if query.conditions:
        sql += " WHERE " + " AND ".join(
            f'{c.table}."{c.column}" {c.op} "{c.value}"' for c in query.conditions
        )
    return sql


def to_compact(query: Query) -> str:
    items = []
    for agg, table, column in query.select:
        ref = f"{table}.{column}".lower()
        items.append(f"{agg} {ref}" if agg else ref)
    text = " , ".join(items)
    if query.conditions:
        text += " where " + " and ".join(
            f'{c.table}.{c.column}'.lower() + f' {c.op} " {c.value.lower()} "' for c in query.conditions
        )
    return text


def sql_to_compact(sql: str) -> str:
    return to_compact(parse_sql(sql))


_COMPACT_CONDITION = re.compile(r'(?P<col>\w+\.\w+)\s*(?P<op><=|>=|!=|=|<|>)\s*"(?P<value>[^"]*)"')


def parse_compact(text: str) -> Query:
    """Parse the compact form (FormError on anything malformed: a model may emit it)."""
    text = collapse_whitespace(text)
    head, _, where = text.partition(" where ")
    select = []
    for item in head.split(" , "):
        words = item.split()
        if len(words) == 2 and words[0] in AGGREGATES:
            select.append((words[0], *_column(words[1])))
        elif len(words) == 1:
            select.append((None, *_column(words[0])))
        else:
            raise FormError(f"bad select item {item!r}")
    conditions = []
    if where:
        # Conditions are `col op " value "` joined by `and`; values may hold "and" themselves,
        # so read them off the quotes (spacing around a value is not significant).
        pos = 0
        for i, c in enumerate(_COMPACT_CONDITION.finditer(where)):
            if where[pos:c.start()].strip() != ("and" if i else ""):
                raise FormError(f"bad condition near {where[pos:c.end()]!r}")
            conditions.append(Condition(*_column(c["col"]), c["op"], collapse_whitespace(c["value"])))
            pos = c.end()
        if not conditions or where[pos:].strip():
            raise FormError(f"bad condition {where[pos:]!r}")
    if not select:
        raise FormError("nothing selected")
    return Query(select, conditions)

"""Why a prediction is wrong: compare the parsed SQL trees (sqlglot) of prediction and gold.

Each wrong prediction gets every category that applies (`labels`) and one `primary` category,
the first in CATEGORIES order, so the primary counts add up to the number of wrong predictions.
The order puts the fault that must be fixed first (a query that does not run; the wrong table)
ahead of the ones it may cause downstream.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import sqlglot
from sqlglot import exp
from sqlglot.errors import SqlglotError

from medsql.evaluation.metrics import pair_conditions
from medsql.schema import TABLES
from medsql.sqlform import Condition, SelectItem, to_single_quotes

# key -> (title, what it means, the fix it calls for)
CATEGORIES: dict[str, tuple[str, str, str]] = {
    "syntax_error": (
        "Syntax error / not executable",
        "the prediction does not parse as SQL or fails to run on the database",
        "decode in the compact form (or with a grammar constraint) and rerank beams by executability: "
        "take the best beam that runs",
    ),
    "wrong_table": (
        "Schema ambiguity (wrong table)",
        "a table is missing or extra, or a column is taken from the wrong table "
        "(e.g. DIAGNOSES.SHORT_TITLE for PROCEDURES.SHORT_TITLE)",
        "give the model the schema in its input (preprocess.schema_context) and add training questions "
        "that tell diagnoses, procedures, drugs and lab tests apart",
    ),
    "wrong_aggregation": (
        "Wrong aggregation",
        "the aggregate differs (COUNT DISTINCT vs MAX/MIN/AVG, or none)",
        "balance the training data across aggregates (min/max/average questions are rare) and check "
        "the question's quantifier ('how many', 'average', 'maximum') maps to one aggregate",
    ),
    "column_name": (
        "Column-name variants",
        "the right table but the wrong column name (SHORT_TITLE vs LONG_TITLE, DOB_YEAR vs ADMITYEAR, "
        "a misspelt column)",
        "constrain column names to the schema (one token per TABLE.COLUMN, as the compact form does) and "
        "add paraphrases of each column's name to the training questions",
    ),
    "condition_logic": (
        "Condition logic",
        "a condition is missing or extra, has the wrong comparison operator, or is combined with "
        "OR/NOT/IN instead of AND",
        "add training examples for comparatives ('older than', 'under', 'at least') and multi-condition "
        "questions; check the operator against the question's wording",
    ),
    "temporal": (
        "Temporal conditions",
        "a condition on a date, year or length of stay has the wrong value or operator, or is "
        "missing/extra",
        "normalise years and dates in questions before the model sees them and add examples of "
        "'before/after <year>' and '<n> days' questions",
    ),
    "string_literal": (
        "String literals",
        "the right condition column and operator but a wrong literal (casing, spelling, truncated "
        "title, wrong code)",
        "turn value recovery on (evaluate.recovery.enabled) so literals snap to values that exist; "
        "extend the value index with the full dictionaries",
    ),
    "other": (
        "Other",
        "the trees agree on tables, columns, aggregates and conditions, yet the results differ "
        "(select order, DISTINCT, GROUP BY/ORDER BY/LIMIT)",
        "inspect the examples; usually a form the dataset never uses",
    ),
}
TEMPORAL_COLUMNS = {"DOB", "DOD", "ADMITTIME", "DISCHTIME", "CHARTTIME", "DOB_YEAR", "DOD_YEAR",
                    "ADMITYEAR", "DAYS_STAY"}
_OPERATORS = {exp.EQ: "=", exp.NEQ: "!=", exp.LT: "<", exp.GT: ">", exp.LTE: "<=", exp.GTE: ">="}
_AGGREGATES = {exp.Count: "count", exp.Max: "max", exp.Min: "min", exp.Avg: "avg", exp.Sum: "sum"}


@dataclass
class Tree:
    """What the classification compares, read off the sqlglot tree: selected items and AND-ed
    conditions in sqlform's types, plus what sqlform's grammar has no place for."""

    tables: set[str]                                 # tables the FROM clause names
    select: list[SelectItem]                         # (aggregate, table, column); "" where unresolved
    conditions: list[Condition]                      # AND-ed comparisons of a column with a value
    other_conditions: list[str] = field(default_factory=list)  # OR / NOT / IN / BETWEEN ..., as SQL
    modifiers: dict[str, str] = field(default_factory=dict)    # group/order/limit/distinct, as SQL

    @property
    def complex_where(self) -> bool:
        """The WHERE clause is not a plain AND of comparisons."""
        return bool(self.other_conditions)


def read_tree(sql: str) -> Tree | None:
    """The parts of a query, or None when sqlglot cannot read it as one SELECT."""
    try:
        tree = sqlglot.parse_one(to_single_quotes(sql), read="sqlite")
    except (SqlglotError, ValueError, RecursionError):  # model output can be any token soup
        return None
    outer = tree
    if not isinstance(tree, exp.Select):  # UNION/INTERSECT/...: compare its first SELECT
        tree = tree.find(exp.Select) if tree is not None else None
        if tree is None:
            return None
    tables = {t.name.upper() for t in tree.find_all(exp.Table)}
    select = [_select_item(e, tables) for e in tree.expressions]
    conditions: list[Condition] = []
    other_conditions: list[str] = []
    where = tree.args.get("where")
    if where is not None:
        for part in _and_parts(where.this):
            condition = _condition(part, tables)
            if condition is None:
                other_conditions.append(part.sql())
            else:
                conditions.append(condition)
    modifiers = {k: tree.args[k].sql() if isinstance(tree.args[k], exp.Expr) else str(tree.args[k])
                 for k in ("distinct", "group", "order", "limit", "having") if tree.args.get(k)}
    if outer is not tree:
        modifiers["set_operation"] = outer.key
    return Tree(tables, select, conditions, other_conditions, modifiers)


def _and_parts(node: exp.Expr) -> list[exp.Expr]:
    node = node.unnest()
    if isinstance(node, exp.And):
        return _and_parts(node.this) + _and_parts(node.expression)
    return [node]


def _column(node: exp.Expr | None, tables: set[str]) -> tuple[str, str]:
    column = node.find(exp.Column) if node is not None else None
    if column is None:
        return "", "*" if node is not None and node.find(exp.Star) else ""
    name = column.name.upper()
    table = column.table.upper()
    if not table:  # unqualified: the only table, or the one table of the schema that has it
        owners = [t for t in tables if name in TABLES.get(t, [])]
        table = next(iter(tables)) if len(tables) == 1 else (owners[0] if len(owners) == 1 else "")
    return table, name


def _select_item(node: exp.Expr, tables: set[str]) -> SelectItem:
    node = node.unalias() if isinstance(node, exp.Alias) else node
    agg = None
    for kind, name in _AGGREGATES.items():
        if isinstance(node, kind):
            agg = name + ("_distinct" if isinstance(node.this, exp.Distinct) else "")
            break
    return (agg, *_column(node, tables))


def _condition(node: exp.Expr, tables: set[str]) -> Condition | None:
    op = _OPERATORS.get(type(node))
    if op is None:
        return None
    left, right = node.this, node.expression
    if not isinstance(left, exp.Column) and isinstance(right, exp.Column):
        left, right = right, left
        op = {"<": ">", ">": "<", "<=": ">=", ">=": "<="}.get(op, op)
    if not isinstance(left, exp.Column):
        return None
    value = right.this if isinstance(right, exp.Literal) else right.sql()
    return Condition(*_column(left, tables), op, str(value))


@dataclass
class Diagnosis:
    primary: str
    labels: list[str]
    details: list[str]


def classify(pred: str, gold: str, executable: bool = True) -> Diagnosis:
    """Categories of a wrong prediction (call it only for predictions judged wrong)."""
    gold_tree = read_tree(gold)
    if gold_tree is None:  # nothing to compare with (a source whose SQL sqlglot cannot read)
        return Diagnosis("other", ["other"], ["the gold SQL does not parse"])
    pred_tree = read_tree(pred)
    labels: list[str] = []
    details: list[str] = []
    if pred_tree is None or not executable:
        labels.append("syntax_error")
        details.append("does not parse as one SELECT" if pred_tree is None else "does not execute")
    if pred_tree is not None:
        for label, detail in _tree_differences(pred_tree, gold_tree):
            if label not in labels:
                labels.append(label)
            details.append(detail)
    if not labels:
        labels.append("other")
    primary = next(c for c in CATEGORIES if c in labels)
    return Diagnosis(primary, [c for c in CATEGORIES if c in labels], details)


def _tree_differences(pred: Tree, gold: Tree) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    if pred.tables != gold.tables:
        found.append(("wrong_table", f"tables {sorted(pred.tables)} instead of {sorted(gold.tables)}"))
    # Same column name under another table: the table is what is wrong, not the column.
    pred_columns = _columns(pred)
    gold_columns = _columns(gold)
    gold_tables_of = {c: {t for t, cc in gold_columns if cc == c} for _, c in gold_columns}
    misplaced = [f"{t}.{c}" for t, c in pred_columns if c in gold_tables_of and t not in gold_tables_of[c]]
    if misplaced and pred.tables == gold.tables:
        found.append(("wrong_table", f"column from the wrong table: {', '.join(misplaced)}"))

    if [a for a, _, _ in pred.select] != [a for a, _, _ in gold.select]:
        found.append(("wrong_aggregation", f"aggregates {[a for a, _, _ in pred.select]} instead of "
                                           f"{[a for a, _, _ in gold.select]}"))
    pred_names, gold_names = [c for _, _, c in pred.select], [c for _, _, c in gold.select]
    if pred_names != gold_names:
        found.append(("column_name", f"selects {pred_names} instead of {gold_names}"))

    if pred.complex_where or gold.complex_where:
        found.append(("condition_logic", "conditions are not a plain AND of comparisons"))
    found.extend(_condition_differences(pred.conditions, gold.conditions))
    if not found and pred.modifiers != gold.modifiers:
        found.append(("other", f"modifiers {pred.modifiers} instead of {gold.modifiers}"))
    return found


def _columns(tree: Tree) -> list[tuple[str, str]]:
    return [(t, c) for _, t, c in tree.select] + [(x.table, x.column) for x in tree.conditions if x.column]


def _condition_differences(pred: list[Condition], gold: list[Condition]) -> list[tuple[str, str]]:
    """Conditions paired as the component scores pair them (metrics.pair_conditions): same
    TABLE.COLUMN first, then leftovers in order; unpaired ones are missing or extra."""
    found: list[tuple[str, str]] = []
    pairing = pair_conditions([p for p in pred if p.column], [g for g in gold if g.column])
    for p, g in pairing.same_column:
        found.extend(_operator_and_value(p, g))
    for p, g in pairing.other_column:
        where = f"condition on {p.table}.{p.column} where the gold has {g.table}.{g.column}"
        if p.column == g.column:  # the gold's column, taken from another table (or from none named)
            found.append(("wrong_table", where))
            found.extend(_operator_and_value(p, g))
        else:  # a condition on another column in place of the gold's one
            found.append(("temporal" if {p.column, g.column} & TEMPORAL_COLUMNS else "column_name", where))
    for g in pairing.missing:
        kind = "temporal" if g.column in TEMPORAL_COLUMNS else "condition_logic"
        found.append((kind, f"missing condition {g.table}.{g.column} {g.op} {g.value!r}"))
    for p in pairing.extra:
        kind = "temporal" if p.column in TEMPORAL_COLUMNS else "condition_logic"
        found.append((kind, f"extra condition {p.table}.{p.column} {p.op} {p.value!r}"))
    return found


def _operator_and_value(pred: Condition, gold: Condition) -> list[tuple[str, str]]:
    """What differs between two conditions on the same column: the operator, the literal."""
    kind = "temporal" if gold.column in TEMPORAL_COLUMNS else None
    found = []
    if pred.op != gold.op:
        found.append((kind or "condition_logic", f"{gold.column}: operator {pred.op} instead of {gold.op}"))
    if pred.value != gold.value:
        found.append((kind or "string_literal", f"{gold.column}: {pred.value!r} instead of {gold.value!r}"))
    return found

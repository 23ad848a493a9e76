"""How often a wrong query passes the test suite: the suite's false-pass rate.

Each gold query is mutated into wrong queries of four kinds (MUTATION_KINDS): a changed operator,
a dropped condition, a swapped value, another selected column. A wrong query that returns the
gold's result on every suite database is a false pass. Mutations that are equivalent on a column's
closed domain (EXPIRE_FLAG >= 1 for = 1 where EXPIRE_FLAG holds only 0 and 1) are not wrong and
are not counted. The build_suite stage measures this right after writing the databases.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from medsql.evaluation.execution import SuiteResult, suite_match
from medsql.evaluation.suite_sources import Sources, satisfies
from medsql.schema import TABLES
from medsql.sqlform import OPERATORS, Condition, Query, logic_form, parse_sql, render_sql

MUTATION_KINDS = ("operator", "drop_condition", "swap_value", "select_column")
SWAPS_PER_CONDITION = 5  # swapped values tried per condition when wrong queries are not sampled
# Seeds the sampling of wrong queries. The label is the one the first suites were measured with:
# another one draws other samples (and another false-pass figure).
RNG_LABEL = "variants"


def _equivalent_on_domain(sources: Sources, table: str, column: str, gold: tuple[str, str],
                          wrong: tuple[str, str]) -> bool:
    """The two conditions keep the same values of a closed domain (EXPIRE_FLAG >= 1 vs = 1)."""
    domain = sources.domains.get((table, column))
    if domain is None:
        return False
    return all(satisfies(table, column, x, *gold) == satisfies(table, column, x, *wrong) for x in domain)


def wrong_queries(query: Query, sources: Sources, rng: random.Random,
                  per_kind: int | None = None) -> list[tuple[str, str]]:
    """(kind, SQL) of wrong versions of `query`, at most `per_kind` of each kind (seeded sample).

    Without `per_kind`, every operator, dropped condition and selected column is tried, and up to
    SWAPS_PER_CONDITION swapped values per condition.
    """
    gold = logic_form(render_sql(query))
    out: dict[str, list[str]] = {k: [] for k in MUTATION_KINDS}
    conds = query.conditions

    def with_condition(i: int, cond: Condition | None) -> Query:
        rest = conds[:i] + ([cond] if cond else []) + conds[i + 1:]
        return Query(list(query.select), rest)

    for i, cond in enumerate(conds):
        for op in OPERATORS:
            if op != cond.op and not _equivalent_on_domain(
                    sources, cond.table, cond.column, (cond.op, cond.value), (op, cond.value)):
                out["operator"].append(render_sql(with_condition(i, replace(cond, op=op))))
        out["drop_condition"].append(render_sql(with_condition(i, None)))
        pool = sorted({str(v) for v in sources.literals.get((cond.table, cond.column), [])}
                      | {str(r[cond.column]) for r in sources.rows[cond.table] if r[cond.column] is not None})
        rng.shuffle(pool)
        taken = 0
        for value in pool:
            if taken == (per_kind or SWAPS_PER_CONDITION):
                break
            if value.endswith(".0") and value[:-2].lstrip("-").isdigit():
                value = value[:-2]
            if satisfies(cond.table, cond.column, value, "=", cond.value):
                continue  # the same value written differently ("2155" for "2155.0")
            if _equivalent_on_domain(sources, cond.table, cond.column, (cond.op, cond.value),
                                     (cond.op, value)):
                continue
            out["swap_value"].append(render_sql(with_condition(i, replace(cond, value=value))))
            taken += 1
    for i, (agg, table, column) in enumerate(query.select):
        for other in TABLES[table]:
            if other != column:
                select = list(query.select)
                select[i] = (agg, table, other)
                out["select_column"].append(render_sql(Query(select, list(conds))))

    wrong = []
    for kind in MUTATION_KINDS:
        candidates = sorted({sql for sql in out[kind] if logic_form(sql) != gold})
        if per_kind is not None and len(candidates) > per_kind:
            candidates = rng.sample(candidates, per_kind)
        wrong += [(kind, sql) for sql in candidates]
    return wrong


def measure_false_pass(golds: Sequence[str], dbs: Sequence[Path], sources: Sources, seed: int,
                       per_kind: int | None, timeout_s: float,
                       gold_runs: dict[str, SuiteResult] | None = None) -> dict[str, Any]:
    """Run wrong queries made from every gold on the suite; one matching the gold everywhere is a false pass.

    `gold_runs`: the golds' own suite results if already computed (gold_informative comes from them).
    """
    rng = random.Random(f"{seed}:{RNG_LABEL}")
    gold_runs = gold_runs or {}
    gold_runs = {g: gold_runs.get(g) or suite_match(g, g, dbs, timeout_s=timeout_s) for g in golds}
    gold_info = {g: r.gold_informative for g, r in gold_runs.items()}
    tally: dict[str, Counter] = {k: Counter() for k in MUTATION_KINDS}
    examples: list[dict[str, str]] = []
    for gold in golds:
        everywhere = all(gold_info[gold])
        for kind, wrong in wrong_queries(parse_sql(gold), sources, rng, per_kind):
            result = suite_match(wrong, gold, dbs, timeout_s=timeout_s, stop_early=True)
            counts = tally[kind]
            counts["wrong_queries"] += 1
            counts["demo_pass"] += result.demo_match
            counts["false_pass"] += result.match
            counts["informative_wrong_queries"] += everywhere
            counts["informative_false_pass"] += result.match and everywhere
            if result.match and len(examples) < 25:
                examples.append({"kind": kind, "gold": gold, "wrong": wrong})

    def rates(counts: Counter) -> dict[str, Any]:
        n, n_inf = counts["wrong_queries"], counts["informative_wrong_queries"]
        return {"wrong_queries": n, "false_pass": counts["false_pass"],
                "false_pass_rate": round(counts["false_pass"] / n, 4) if n else None,
                "false_pass_rate_demo_only": round(counts["demo_pass"] / n, 4) if n else None,
                "false_pass_rate_informative_golds": (
                    round(counts["informative_false_pass"] / n_inf, 4) if n_inf else None)}

    total = sum(tally.values(), Counter())
    names = [Path(d).name for d in dbs]
    share = {name: round(sum(info[i] for info in gold_info.values()) / len(golds), 4)
             for i, name in enumerate(names)}
    return {**rates(total), "by_kind": {k: rates(v) for k, v in tally.items()},
            "gold_queries": len(golds), "informative_share": share,
            "informative_everywhere_share": round(sum(all(i) for i in gold_info.values()) / len(golds), 4),
            "gold_self_match": sum(r.match for r in gold_runs.values()),
            "false_pass_examples": examples}



"""Stage validate: a Great Expectations checkpoint over data/ingested.jsonl, and the verdict preprocess needs.

The expectation suite, validation definition and checkpoint are versioned files of a GX file data
context in gx/ (`python -m medsql.validate --init-gx` writes them from `expectations()` below;
unchanged definitions keep their ids, so the files only change when the expectation suite does).
A run reads data/ingested.jsonl once, loads those records into a DataFrame, adds check columns
that GX's built-in expectations can test, and runs the checkpoint once; its UpdateDataDocsAction
writes the HTML report to reports/validation/ (the site's base directory in gx/great_expectations.yml).

Check columns derived here:
  sql_statement_kind    "SELECT" when the SQL is exactly one SELECT by the executor's own check
                        (medsql.executor.select_verdict, after sqlform.to_single_quotes); else that
                        check's verdict, e.g. "refused: only SELECT is allowed, got DROP"
  unknown_schema_names  tables/columns the SQL names that the MIMICSQL schema lacks (None if none)
  sqls_for_key          how many different (whitespace-collapsed) SQL the record's key has
  execution_error       None when the SQL runs on data/mimicsql.db through the guarded executor
                        (medsql.executor.execute: read-only, time-bounded); else the error

The verdict, metrics/validation.json: the metrics, `success`, and the sha256 and size of exactly
the bytes checked (data/ingested.jsonl with its record count, and the database; medsql.verdict).
preprocess splits only bytes a passed verdict names. On success the verdict is written; on failure
a short summary names each failed expectation and its offending rows by origin (file:line), the
stage exits non-zero and the last good verdict stays in place (it names other bytes), unless it
vouches for these very bytes: the failed verdict then replaces it.

The hand-written clinician evaluation set (evaluate.clinician_set) is checked by the same suite in
the same run; the verdict names its bytes under `evaluation_sets`, and evaluate scores only a set
the verdict names (so a set with a typo in a gold query is refused, not silently scored).

    python -m medsql.validate [--init-gx]
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import logging
import os
import sys
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")  # before GX is imported

import great_expectations as gx  # noqa: E402
import great_expectations.expectations as gxe  # noqa: E402
import pandas as pd  # noqa: E402
import sqlglot  # noqa: E402
from great_expectations.checkpoint import UpdateDataDocsAction  # noqa: E402
from sqlglot import exp  # noqa: E402

from medsql import paths, verdict  # noqa: E402
from medsql.config import ConfigError, ValidateConfig, load_config  # noqa: E402
from medsql.executor import execute, select_verdict  # noqa: E402
from medsql.ingest import IngestError, jsonl_objects  # noqa: E402
from medsql.logs import configure  # noqa: E402
from medsql.schema import TABLES, has_column  # noqa: E402
from medsql.sqlform import to_single_quotes  # noqa: E402
from medsql.text import collapse_whitespace  # noqa: E402
from medsql.util import resolve, write_json  # noqa: E402

log = logging.getLogger(__name__)

CANONICAL_FIELDS = ("key", "variant", "question", "sql", "source", "origin")
SOURCES = ("mimicsql", "hf_chat", "clinician")  # clinician: the hand-written evaluation set (evalsets/)

# Names of the GX objects in gx/ (the files are named after them).
DATASOURCE = "medsql"
ASSET = "ingested"
BATCH_DEFINITION = "all_records"
EXPECTATION_SUITE = "ingested_pairs"
VALIDATION_DEFINITION = "ingested_pairs"
CHECKPOINT = "ingested_pairs"
DOCS_SITE = "validation_report"

NOT_EXECUTED = "not executed: not a single SELECT"
QUERY_TIMEOUT_S = 10.0  # the executor's time bound per gold query


class ValidateError(ValueError):
    """Input the stage cannot validate at all (unreadable JSONL, missing database or GX context)."""


def expectations() -> list[gxe.Expectation]:
    """The expectation suite. Length bounds are expectation parameters filled from params.yaml at each run."""
    def length(column: str) -> gxe.Expectation:
        return gxe.ExpectColumnValueLengthsToBeBetween(
            column=column, min_value={"$PARAMETER": f"{column}_min_chars"},
            max_value={"$PARAMETER": f"{column}_max_chars"},
            description=f"{column} length within params.yaml validate.{column}_chars")

    return [
        *(gxe.ExpectColumnValuesToNotBeNull(column=name, description=f"every record has a {name}")
          for name in CANONICAL_FIELDS),
        gxe.ExpectColumnValuesToMatchRegex(column="question", regex=r"\S", description="no empty question"),
        gxe.ExpectColumnValuesToMatchRegex(column="sql", regex=r"\S", description="no empty SQL"),
        length("question"),
        length("sql"),
        gxe.ExpectColumnValuesToBeInSet(column="source", value_set=list(SOURCES),
                                        description="a known source"),
        gxe.ExpectColumnValuesToBeInSet(
            column="sql_statement_kind", value_set=["SELECT"],
            description="every SQL is exactly one SELECT (the executor's check: sqlglot, SQLite dialect)"),
        gxe.ExpectColumnValuesToBeNull(
            column="unknown_schema_names",
            description="every table and column the SQL names exists in the MIMICSQL schema"),
        gxe.ExpectColumnValuesToBeInSet(column="sqls_for_key", value_set=[1],
                                        description="one key maps to one SQL across wordings"),
        gxe.ExpectColumnValuesToBeNull(column="execution_error",
                                       description="every gold SQL executes on the database"),
    ]


# ---------------------------------------------------------------------------------------------
# Input and check columns


def load_ingested(path: Path, data: bytes) -> pd.DataFrame:
    """The canonical records in `data` (the bytes read from `path`) as a DataFrame; a record without
    origin gets `<path>:<line>`."""
    rows = []
    try:
        for line_no, record in jsonl_objects(io.TextIOWrapper(io.BytesIO(data), encoding="utf-8"), str(path)):
            for name in CANONICAL_FIELDS:
                if record.get(name) is not None and not isinstance(record[name], str):
                    raise ValidateError(f"{path} line {line_no}: field {name!r} is not a string")
            row = {name: record.get(name) for name in CANONICAL_FIELDS}
            row["origin"] = row["origin"] or f"{path}:{line_no}"
            rows.append(row)
    except IngestError as err:  # malformed line: the same message ingest gives
        raise ValidateError(str(err)) from None
    if not rows:
        raise ValidateError(f"{path}: no records")
    return pd.DataFrame(rows, columns=list(CANONICAL_FIELDS))


def inspect_sql(sql: str) -> tuple[str, str | None]:
    """(statement kind, unknown schema names or None) of one SQL string.

    The kind is "SELECT" when the executor would run the SQL as exactly one SELECT, else its
    verdict as "<error kind>: <message>" (e.g. "refused: only SELECT is allowed, got DROP").
    """
    sql = to_single_quotes(sql)
    refused = select_verdict(sql)
    if refused is not None:
        kind, message = refused
        return f"{kind}: {message}", None
    unknown = unknown_schema_names(sqlglot.parse_one(sql, read="sqlite"))
    return "SELECT", ", ".join(unknown) if unknown else None


def unknown_schema_names(tree: exp.Expression) -> list[str]:
    """Tables and columns named in the query that are not in medsql.schema.TABLES."""
    derived = {c.alias_or_name.upper() for c in tree.find_all(exp.CTE)}
    derived |= {s.alias.upper() for s in tree.find_all(exp.Subquery) if s.alias}
    output_aliases = {a.alias.upper() for a in tree.find_all(exp.Alias)}
    table_of: dict[str, str] = {}  # name or alias used in the query -> schema table
    unknown: list[str] = []
    for table in tree.find_all(exp.Table):
        name = table.name.upper()
        if name in TABLES:
            table_of[name] = name
            table_of[table.alias_or_name.upper()] = name
        elif name not in derived:
            unknown.append(f"table {table.name}")
    in_scope = set(table_of.values())
    for column in tree.find_all(exp.Column):
        qualifier = column.table.upper()
        if qualifier in derived:
            continue
        if qualifier:
            table = table_of.get(qualifier)
            if table is None:
                unknown.append(f"{column.table}.{column.name}")
            elif not has_column(table, column.name):
                unknown.append(f"{table}.{column.name}")
        elif column.name.upper() not in output_aliases and not any(
                has_column(t, column.name) for t in in_scope):
            unknown.append(column.name)
    return list(dict.fromkeys(unknown))


def execution_errors(sqls: Iterable[str], db: Path,
                     timeout_s: float = QUERY_TIMEOUT_S) -> dict[str, str | None]:
    """Run each SQL once through the guarded executor: None when it runs, else "<error kind>: <error>"."""
    errors: dict[str, str | None] = {}
    for sql in sqls:
        result = execute(db, sql, timeout_s=timeout_s)
        errors[sql] = None if result.ok else f"{result.error_kind}: {result.error}"
    return errors


def add_check_columns(df: pd.DataFrame, db: Path) -> pd.DataFrame:
    """The records plus the columns the expectation suite tests (see the module docstring)."""
    df = df.copy()
    distinct = df["sql"].dropna().unique()
    inspected = {sql: inspect_sql(sql) for sql in distinct}
    df["sql_statement_kind"] = df["sql"].map(lambda s: inspected[s][0] if isinstance(s, str) else None)
    df["unknown_schema_names"] = df["sql"].map(lambda s: inspected[s][1] if isinstance(s, str) else None)
    normalised = df["sql"].map(lambda s: collapse_whitespace(s) if isinstance(s, str) else None)
    df["sqls_for_key"] = normalised.groupby(df["key"]).transform("nunique")
    runnable = [sql for sql, (kind, _) in inspected.items() if kind == "SELECT"]
    errors = execution_errors(runnable, db)
    df["execution_error"] = df["sql"].map(
        lambda s: (errors[s] if s in errors else NOT_EXECUTED) if isinstance(s, str) else None)
    return df


# ---------------------------------------------------------------------------------------------
# Great Expectations


def open_context(gx_dir: Path):  # -> FileDataContext
    if not (gx_dir / "great_expectations.yml").is_file():
        raise ValidateError(f"{gx_dir}: no great_expectations.yml (the GX context is versioned in gx/)")
    with warnings.catch_warnings():  # a fresh checkout lacks gx/uncommitted/: GX warns as it adds it
        warnings.simplefilter("ignore")
        return gx.get_context(mode="file", context_root_dir=gx_dir)


def _identity(expectation: gxe.Expectation) -> str:
    """An expectation's settings without its id (empty meta/notes count as none, as in GX's __eq__)."""
    settings = expectation.dict(exclude={"id", "rendered_content"})
    settings["meta"], settings["notes"] = settings.get("meta") or None, settings.get("notes") or None
    return json.dumps(settings, sort_keys=True, default=str)


def init_gx(gx_dir: Path = paths.GX_DIR) -> None:
    """Write (or bring up to date) the datasource, expectation suite, validation definition and checkpoint."""
    context = open_context(gx_dir)
    try:
        datasource = context.data_sources.get(DATASOURCE)
    except KeyError:
        datasource = context.data_sources.add_pandas(DATASOURCE)
    try:
        asset = datasource.get_asset(ASSET)
    except LookupError:
        asset = datasource.add_dataframe_asset(ASSET)
    try:
        batch_definition = asset.get_batch_definition(BATCH_DEFINITION)
    except KeyError:
        batch_definition = asset.add_batch_definition_whole_dataframe(BATCH_DEFINITION)
    wanted = expectations()
    try:
        expectation_suite = context.suites.get(EXPECTATION_SUITE)
    except gx.exceptions.DataContextError:
        expectation_suite = context.suites.add(gx.ExpectationSuite(name=EXPECTATION_SUITE, expectations=wanted))
    # Rewrite the expectation suite only when it changed (its expectations then get new ids).
    if [_identity(e) for e in expectation_suite.expectations] != [_identity(e) for e in wanted]:
        expectation_suite = context.suites.add_or_update(
            gx.ExpectationSuite(name=EXPECTATION_SUITE, expectations=wanted))
    validation = context.validation_definitions.add_or_update(
        gx.ValidationDefinition(name=VALIDATION_DEFINITION, data=batch_definition, suite=expectation_suite))
    context.checkpoints.add_or_update(gx.Checkpoint(
        name=CHECKPOINT, validation_definitions=[validation],
        actions=[UpdateDataDocsAction(name="update_data_docs", site_names=[DOCS_SITE])],
        # COMPLETE + the origin column: every offending row comes back named by its file:line.
        result_format={"result_format": "COMPLETE", "unexpected_index_column_names": ["origin"]},
    ))


@dataclass
class Failure:
    expectation: str  # e.g. expect_column_values_to_be_in_set(sql_statement_kind)
    description: str
    unexpected_count: int
    rows: list[tuple[str, str, Any]] = field(default_factory=list)  # (origin, column, value)
    error: str | None = None  # GX could not evaluate the expectation


@dataclass
class Report:
    success: bool
    rows: int
    metrics: dict[str, Any]   # the verdict written to metrics/validation.json (fingerprints included)
    failures: list[Failure]
    docs_index: Path | None
    ingested: verdict.Fingerprint  # exactly the bytes checked
    database: verdict.Fingerprint

    def summary(self, limit: int = 10) -> str:
        lines = [f"validation {'passed' if self.success else 'FAILED'}: "
                 f"{len(self.failures)} of {self.metrics['expectations_evaluated']} expectations failed "
                 f"on {self.rows} records"]
        for failure in self.failures:
            count = failure.unexpected_count
            lines.append(f"- {failure.expectation}: {failure.description} "
                         f"({count} row{'' if count == 1 else 's'})")
            if failure.error:
                lines.append(f"    error: {failure.error}")
            for origin, column, value in failure.rows[:limit]:
                shown = "<missing>" if value is None or pd.isna(value) else repr(value)
                shown = shown if len(shown) <= 120 else shown[:117] + "..."
                lines.append(f"    {origin}  {column}={shown}")
            if len(failure.rows) > limit:
                lines.append(f"    ... and {len(failure.rows) - limit} more")
        if self.docs_index:
            lines.append(f"data docs: {self.docs_index}")
        return "\n".join(lines)


def _plain(value: Any) -> Any:
    """A numpy scalar as the Python value (for the summary and JSON)."""
    return value.item() if hasattr(value, "item") else value


def validate(ingested: Path, db: Path, gx_dir: Path, settings: ValidateConfig) -> Report:
    """Check the ingested records with the checkpoint in `gx_dir` (one context, one run).

    The file is read once: the records checked and the fingerprint in the report are of the same bytes.
    """
    if not ingested.is_file():
        raise ValidateError(f"{ingested}: file not found (run the ingest stage)")
    if not db.is_file():
        raise ValidateError(f"{db}: database not found (run the build_db stage)")
    bounds = {}
    for column, (low, high) in (("question", settings.question_chars), ("sql", settings.sql_chars)):
        bounds[f"{column}_min_chars"], bounds[f"{column}_max_chars"] = low, high
    data = ingested.read_bytes()
    ingested_fingerprint, database_fingerprint = verdict.of_bytes(ingested, data), verdict.of_file(db)
    df = add_check_columns(load_ingested(ingested, data), db)

    context = open_context(gx_dir)
    result = context.checkpoints.get(CHECKPOINT).run(batch_parameters={"dataframe": df},
                                                     expectation_parameters=bounds)
    validation_result = next(iter(result.run_results.values()))

    failures, per_expectation = [], {}
    for outcome in validation_result.results:
        config = outcome.expectation_config
        column = config.kwargs.get("column")
        name = f"{config.type}({column})"
        details = outcome.result or {}
        unexpected = int(details.get("unexpected_count") or 0)
        per_expectation[name] = {"success": bool(outcome.success), "unexpected_count": unexpected}
        if outcome.success:
            continue
        rows = [(item.get("origin"), column, _plain(item.get(column)))
                for item in details.get("unexpected_index_list") or []]
        error = None
        if outcome.exception_info and outcome.exception_info.get("raised_exception"):
            error = outcome.exception_info.get("exception_message")
        failures.append(Failure(name, config.description or "", unexpected, rows, error))

    docs = context.get_docs_sites_urls(site_name=DOCS_SITE)
    docs_url = docs[0]["site_url"] if docs else None
    docs_index = Path(unquote(urlparse(docs_url).path)).resolve() if docs_url else None
    stats = validation_result.statistics
    metrics = {
        "success": bool(result.success),
        "records": len(df),
        "keys": int(df["key"].nunique()),
        "distinct_sql": int(df["sql"].nunique()),
        "executed_sql": int(df.loc[df["sql_statement_kind"] == "SELECT", "sql"].nunique()),
        "by_variant": {str(k): int(v) for k, v in df["variant"].value_counts().sort_index().items()},
        "by_source": {str(k): int(v) for k, v in df["source"].value_counts().sort_index().items()},
        "expectations_evaluated": int(stats["evaluated_expectations"]),
        "expectations_failed": int(stats["unsuccessful_expectations"]),
        "expectations": per_expectation,
        **verdict.fields(ingested_fingerprint, len(df), database_fingerprint),
    }
    return Report(bool(result.success), len(df), metrics, failures, docs_index, ingested_fingerprint,
                  database_fingerprint)


def with_evaluation_sets(report: Report, reports: dict[str, Report]) -> Report:
    """The ingested records' report, its verdict also naming each evaluation set checked by the same
    suite (fingerprint, records, success); it passes only when every one of them passes."""
    sets = {}
    for name, other in reports.items():
        sets[other.ingested.path] = {**dataclasses.asdict(other.ingested), "records": other.rows,
                                     "success": other.success, "name": name,
                                     "expectations_failed": other.metrics["expectations_failed"]}
    success = report.success and all(r.success for r in reports.values())
    metrics = report.metrics | {"success": success, verdict.EVALUATION_SETS: sets}
    failures = report.failures + [dataclasses.replace(f, expectation=f"{name}: {f.expectation}")
                                  for name, r in reports.items() for f in r.failures]
    return dataclasses.replace(report, success=success, metrics=metrics, failures=failures)


def record_verdict(report: Report, path: Path) -> bool:
    """Write the report's verdict to `path`; True when written.

    A passed verdict is always written. A failed one leaves the last good verdict in place (it names
    other bytes, which preprocess therefore refuses) unless that verdict vouches for these very bytes
    (the same data failing a changed expectation suite or bounds): then the failed one replaces it.
    """
    if not report.success and verdict.refusal(path, report.ingested, report.database) is not None:
        return False
    write_json(path, report.metrics)
    return True


HELP = """reads:  params.yaml (validate.*, evaluate.clinician_set); data/ingested.jsonl and the clinician
        evaluation set (evalsets/clinician.jsonl); data/mimicsql.db (read-only); the GX
        context in gx/ (expectation suite, validation definition, checkpoint)
writes: metrics/validation.json: the verdict (metrics, success, sha256 and size of the bytes checked),
        written when validation passes (or replaces a verdict for the very bytes that failed);
        GX data docs in reports/validation/; with --init-gx only the GX definitions in gx/"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m medsql.validate", description=__doc__.splitlines()[0],
                                     epilog=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default=None, help="parameters file (default: params.yaml or $MEDSQL_PARAMS)")
    parser.add_argument("--ingested", default=str(paths.INGESTED), help="records to check (default: %(default)s)")
    parser.add_argument("--db", default=str(paths.DB), help="database the gold SQL runs on (default: %(default)s)")
    parser.add_argument("--gx-dir", default=str(paths.GX_DIR), help="GX file data context (default: %(default)s)")
    parser.add_argument("--metrics", default=str(paths.VALIDATION_SUMMARY),
                        help="the verdict preprocess reads (default: %(default)s)")
    parser.add_argument("--show", type=int, default=10, help="offending rows shown per failed expectation")
    parser.add_argument("--init-gx", action="store_true",
                        help="write/update the GX definitions in --gx-dir from the code, then stop")
    args = parser.parse_args(argv)
    configure()
    logging.getLogger("great_expectations").setLevel(logging.WARNING)  # its INFO is about loading its config
    try:
        if args.init_gx:
            init_gx(Path(args.gx_dir))
            log.info("GX definitions written to %s", args.gx_dir)
            return 0
        config = load_config(args.params)
        report = validate(Path(args.ingested), Path(args.db), Path(args.gx_dir), config.validate)
        if config.evaluate.clinician_set:  # the hand-written evaluation set, by the same suite
            clinician = resolve(config.evaluate.clinician_set)
            report = with_evaluation_sets(report, {"clinician": validate(clinician, Path(args.db),
                                                                         Path(args.gx_dir), config.validate)})
    except (ConfigError, ValidateError) as err:
        log.error("%s", err)
        return 1
    metrics = Path(args.metrics)
    if report.success:
        record_verdict(report, metrics)
        log.info("%s", report.summary(args.show))
        return 0
    log.error("%s", report.summary(args.show))
    if record_verdict(report, metrics):
        log.error("%s vouched for these very bytes (%s); it now holds this failed verdict",
                  metrics, report.ingested.describe())
    return 1


if __name__ == "__main__":
    sys.exit(main())

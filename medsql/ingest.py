"""Stage ingest: question/SQL pairs from every configured source into one canonical table.

Sources, listed in params.yaml `ingest.sources`:

- mimicsql: the MIMICSQL JSONL files `<data.mimicsql_dir>/<wording>/<file>`; each wording
  (template, natural, natural_v2) becomes the record's `variant`.
- hf_chat: a Hugging Face dataset in chat format (`messages` with system/user/assistant roles, as
  `some1oe/Medical-Text-to-SQL` is published), loaded with `datasets.load_dataset` from the hub or
  from a local .json/.jsonl/.parquet/.csv file or folder. question = the user message, sql = the
  assistant message, key = a hash of the whitespace-normalised SQL, so identical SQL shares a key
  (and takes the MIMICSQL key when MIMICSQL holds the same SQL: a split by key then keeps it on one
  side).

Output data/ingested.jsonl, one record a line:
  {"key", "variant", "question", "sql", "source", "origin"}
with origin "<wording>/<file>:<line>" (MIMICSQL) or "<hf path>[<split>]#<row index>" (hf_chat).
Bad input stops the stage with an error naming file, line (or row) and field; the previous output
is left in place. Parameters come from params.yaml through medsql.config (sections `data`, `ingest`).

    python -m medsql.ingest [--params params.yaml] [--out data/ingested.jsonl]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import re
import sys
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from medsql import paths
from medsql.config import ConfigError, DataConfig, IngestConfig, load_config
from medsql.logs import configure
from medsql.text import collapse_whitespace
from medsql.util import resolve, write_jsonl

log = logging.getLogger(__name__)

MIMICSQL_FIELDS = {"key": "key", "question": "question_refine", "sql": "sql"}  # ours: theirs
LOCAL_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}
_SQL_FENCE = re.compile(r"^```(?:sql)?\s*(.*?)\s*```$", re.IGNORECASE | re.DOTALL)


class IngestError(ValueError):
    """Input that cannot become canonical records; the message names file, line (or row) and field."""


def sql_key(sql: str) -> str:
    """A stable key for a query: hex MD5 (the shape of MIMICSQL's keys) of the SQL with its whitespace
    collapsed and its case kept (literal values are case-sensitive)."""
    return hashlib.md5(collapse_whitespace(sql).encode("utf-8")).hexdigest()


def read_jsonl_objects(path: Path, shown: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """(1-based line number, object) for each non-blank line; `shown` names the file in errors."""
    if not path.is_file():
        raise IngestError(f"{shown}: file not found ({path})")
    with open(path, encoding="utf-8") as handle:
        yield from jsonl_objects(handle, shown)


def jsonl_objects(lines: Iterable[str], shown: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """(1-based line number, object) for each non-blank line of JSONL text read line by line."""
    line_no = 0
    try:
        for line_no, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise IngestError(f"{shown} line {line_no}: not valid JSON: {err}") from None
            if not isinstance(obj, dict):
                raise IngestError(f"{shown} line {line_no}: not a JSON object")
            yield line_no, obj
    except UnicodeDecodeError as err:
        # The decoder reads ahead in blocks: the bad byte is somewhere past the last line read.
        after = f" after line {line_no}" if line_no else ""
        raise IngestError(f"{shown}: not UTF-8 text{after} ({err.reason})") from None


def mimicsql_records(root: Path, wordings: Iterable[str], files: Iterable[str]) -> Iterator[dict[str, Any]]:
    """Canonical records of the MIMICSQL files, one wording (variant) after the other."""
    for wording in wordings:
        for name in files:
            shown = f"{wording}/{name}"
            for line_no, obj in read_jsonl_objects(root / wording / name, shown):
                record: dict[str, Any] = {}
                for ours, theirs in MIMICSQL_FIELDS.items():
                    if theirs not in obj:
                        raise IngestError(f"{shown} line {line_no}: missing field {theirs!r}")
                    if not isinstance(obj[theirs], str):
                        raise IngestError(f"{shown} line {line_no}: field {theirs!r} is not a string "
                                          f"(got {type(obj[theirs]).__name__})")
                    record[ours] = obj[theirs]
                yield {"key": record["key"], "variant": wording, "question": record["question"],
                       "sql": record["sql"], "source": "mimicsql", "origin": f"{shown}:{line_no}"}


def local_data_files(path: Path) -> tuple[str, list[str]]:
    """The `datasets` builder and data files for a local file or folder."""
    candidates = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    found = [p for p in candidates if p.suffix.lower() in LOCAL_BUILDERS]
    builders = {LOCAL_BUILDERS[p.suffix.lower()] for p in found}
    if not found:
        raise IngestError(f"{path}: no {'/'.join(LOCAL_BUILDERS)} file to load")
    if len(builders) > 1:
        raise IngestError(f"{path}: mixes file formats ({', '.join(sorted(builders))}); keep one")
    return builders.pop(), [str(p) for p in found]


def load_chat_dataset(path: str, split: str):  # -> datasets.Dataset
    """A hub id through load_dataset(path, split=...); a local file/folder through its builder."""
    import datasets  # slow to import: only when the hf_chat source is used

    local = resolve(path)
    looks_local = path.startswith((".", "/")) or Path(path).suffix.lower() in LOCAL_BUILDERS
    if not local.exists():
        if looks_local:
            raise IngestError(f"hf_chat: {path}: file or folder not found")
        try:
            return datasets.load_dataset(path, split=split)
        except Exception as err:  # hub, network and builder errors come in many types
            raise IngestError(f"hf_chat: cannot load {path!r} split {split!r} from the Hugging Face hub: "
                              f"{err}") from err
    builder, files = local_data_files(local)
    for file in files:  # datasets' own JSON error names no line: check JSONL lines first
        if file.endswith(".jsonl"):
            for _ in read_jsonl_objects(Path(file), file):
                pass
    try:
        return datasets.load_dataset(builder, data_files={split: files}, split=split)
    except Exception as err:
        cause = err.__cause__ or err
        raise IngestError(f"hf_chat: {path}: cannot load as a {builder} dataset: {cause}") from err


def _message_text(content: Any, where: str) -> str:
    """Message content as text: a string, or a list of {"type": "text", "text": ...} parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and isinstance(p.get("text"), str)
                                         for p in content):
        return "".join(p["text"] for p in content)
    raise IngestError(f"{where}: field 'content' is not text")


def chat_records(rows: Iterable[dict[str, Any]], origin: str, variant: str,
                 known_keys: dict[str, str]) -> Iterator[dict[str, Any]]:
    """Canonical records of chat rows; the last user and assistant message of each row are used.

    `known_keys` maps normalised SQL to an existing key (MIMICSQL's), reused for identical SQL.
    """
    for index, row in enumerate(rows):
        where = f"{origin}#{index}"
        messages = row.get("messages")
        if isinstance(messages, str):  # CSV files carry the list as JSON text
            try:
                messages = json.loads(messages)
            except json.JSONDecodeError as err:
                raise IngestError(f"{where}: field 'messages' is not valid JSON: {err}") from None
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            raise IngestError(f"{where}: field 'messages' is missing or not a list of messages")
        by_role: dict[str, str] = {}
        for message in messages:
            by_role[str(message.get("role"))] = _message_text(message.get("content"), where)
        for role in ("user", "assistant"):
            if role not in by_role:
                raise IngestError(f"{where}: field 'messages' has no {role} message")
        sql = by_role["assistant"].strip()
        fenced = _SQL_FENCE.match(sql)
        if fenced:  # chat answers often wrap the query in a ```sql fence
            sql = fenced.group(1)
        key = known_keys.get(collapse_whitespace(sql)) or sql_key(sql)
        yield {"key": key, "variant": variant, "question": by_role["user"].strip(), "sql": sql,
               "source": "hf_chat", "origin": where}


def ingest(settings: IngestConfig, data: DataConfig) -> list[dict[str, Any]]:
    """All canonical records the settings name (MIMICSQL first, then the chat dataset)."""
    records: list[dict[str, Any]] = []
    if "mimicsql" in settings.sources:
        records += mimicsql_records(resolve(data.mimicsql_dir), settings.mimicsql.wordings,
                                    settings.mimicsql.files)
    if "hf_chat" in settings.sources:
        chat = settings.hf_chat
        dataset = load_chat_dataset(chat.path, chat.split)
        if "messages" not in dataset.column_names:
            raise IngestError(f"hf_chat: {chat.path} [{chat.split}]: field 'messages' missing "
                              f"(columns: {', '.join(dataset.column_names)})")
        known_keys = {collapse_whitespace(r["sql"]): r["key"] for r in records}
        records += chat_records(dataset, f"{chat.path}[{chat.split}]", chat.variant, known_keys)
    if not records:
        raise IngestError("no records: params.yaml ingest.sources names no source with data")
    return records


HELP = """reads:  params.yaml (data.mimicsql_dir, ingest.*); the MIMICSQL JSONL files
        <data.mimicsql_dir>/<wording>/<file>, and/or the chat dataset ingest.hf_chat.path
writes: data/ingested.jsonl (or --out), atomically: a failure leaves the previous file in place"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m medsql.ingest", description=__doc__.splitlines()[0],
                                     epilog=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default=None, help="parameters file (default: params.yaml or $MEDSQL_PARAMS)")
    parser.add_argument("--out", default=str(paths.INGESTED), help="output JSONL (default: %(default)s)")
    args = parser.parse_args(argv)
    configure()
    try:
        cfg = load_config(args.params)
        records = ingest(cfg.ingest, cfg.data)
    except (ConfigError, IngestError) as err:
        log.error("%s", err)
        return 1
    write_jsonl(args.out, records)
    counts = Counter((r["source"], r["variant"]) for r in records)
    detail = ", ".join(f"{source}/{variant}: {n}" for (source, variant), n in sorted(counts.items()))
    log.info("wrote %d records (%s) to %s", len(records), detail, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

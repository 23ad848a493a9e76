"""The `medsql` command: ask the model, promote models, serve the demo page.

  medsql ask "how many patients are over 65?"      SQL for a question, its reading and confidence
  medsql promote --version 3 --reason "..."        move the registry's champion alias
  medsql demo --port 8765                          the page (champion beside retrieval) and its JSON API

`medsql <command> --help` says what each reads and writes.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from medsql.confidence import Answer

log = logging.getLogger(__name__)


def _number_arg(text: str, kind: type, low: float, high: float | None, what: str, unit: str = "") -> int | float:
    """An option's value as `kind`, from `low` to `high` (None: no upper end); else argparse's error."""
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
    if value < low or high is not None and value > high:
        allowed = f"from {low} to {high}{unit}" if high is not None else f"{low}{unit} or more"
        raise argparse.ArgumentTypeError(f"{value} is out of range: {allowed}")
    return value


def beams_arg(text: str) -> int:
    """--beams: a whole number from 1 to medsql.predictor.MAX_BEAMS."""
    from medsql.predictor import MAX_BEAMS

    return int(_number_arg(text, int, 1, MAX_BEAMS, f"a whole number (1 to {MAX_BEAMS})"))


def positive_arg(text: str) -> int:
    return int(_number_arg(text, int, 1, None, "a whole number"))


def window_arg(text: str) -> float:
    """A batching window: milliseconds, 0 to 5000."""
    return float(_number_arg(text, float, 0, 5000, "a number of milliseconds", " ms"))


def _ask(args: argparse.Namespace) -> int:
    from medsql.predictor import Predictor, PredictorError
    from medsql.text import QuestionError, check_question

    try:
        # The arguments' own bytes: a byte that is not UTF-8 is named, not turned into a surrogate.
        question = check_question(os.fsencode(args.question))
        predictor = Predictor.load(args.model)
        answer = predictor.answer([question], num_beams=args.beams)[0]
    except (PredictorError, QuestionError) as err:
        log.error("medsql ask: %s", err)
        return 2
    from medsql.explain import explain_sql

    reading = explain_sql(answer.sql)
    if args.json:
        print(json.dumps(answer.as_dict() | {"explanation": reading}, indent=2))
        return 0
    # The command's output: '--' comment lines (what the SQL means in words, how sure it is), then
    # the SQL, then, when it is uncertain, the next candidates.
    print(f"-- {reading or OUTSIDE_GRAMMAR}")
    print(f"-- {confidence_line(answer)}")
    print(predictor.pretty(answer.sql) if args.pretty else answer.sql)
    if answer.uncertain:
        for sql, _ in answer.alternatives:
            print(f"-- next: {sql}")
    return 0


OUTSIDE_GRAMMAR = "This SQL is outside the dataset's grammar: no plain-English reading."


def confidence_line(answer: Answer) -> str:
    """`confidence 0.83`, with what the reader must know: uncertain, not grounded (and why), mended (how)."""
    line = f"confidence {answer.confidence:.2f}"
    if answer.uncertain:
        line += " (uncertain: check before use)"
    if not answer.grounded:
        line += f" (not grounded: {'; '.join(answer.problems) or 'no candidate qualified'})"
    if answer.mended:
        line += f" (mended: {'; '.join(answer.mended)})"
    return line


def _promote(args: argparse.Namespace) -> int:
    from medsql.registry import promote_command

    return promote_command(args)


def _demo(args: argparse.Namespace) -> int:
    from medsql.batching import BatchSettings, ServeLimits, share_of_cores
    from medsql.demo.app import serve

    # The torch models side by side (the champion, and the zero-shot baseline when asked); the retrieval
    # baseline's lane is light.
    threads = args.torch_threads or share_of_cores(2 if args.zero_shot else 1)
    limits = ServeLimits(max_in_flight=args.max_in_flight,
                         batch=BatchSettings(window_ms=args.batch_window_ms, fill_ms=max(args.batch_fill_ms,
                                                                                         args.batch_window_ms),
                                             max_batch=args.max_batch,
                                             max_pending=max(args.max_pending, 2 * args.max_in_flight),
                                             torch_threads=threads))
    serve(host=args.host, port=args.port, limits=limits, zero_shot=args.zero_shot)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from medsql.batching import BatchSettings, ServeLimits

    parser = argparse.ArgumentParser(prog="medsql", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="{ask,promote,demo}")

    ask = sub.add_parser(
        "ask", help="translate a question into SQL with a trained model",
        description="Translate one question into SQL and print it (pretty-printed unless --no-pretty), after "
                    "its plain-English reading and its confidence (marked uncertain below the model's "
                    "min_confidence or where the SQL leaves out what the question names, then the next "
                    "candidates follow as '-- next:' lines); --json prints the "
                    "whole answer as JSON. Reads the model (models/medsql, a registry alias, a folder or an "
                    "MLflow URI); writes nothing. Exit status 2 on a refused question or an unusable model.")
    ask.add_argument("question", help="the question, in words (at most 400 characters)")
    ask.add_argument(
        "--model", default="latest",
        help="'latest' (models/medsql), 'champion'/'challenger' (registry alias), a model folder, "
             "or an MLflow model URI (models:/name@alias, models:/m-<id>)",
    )
    ask.add_argument("--beams", type=beams_arg, default=None, help="beam size, 1 to 16 (default: the model's)")
    ask.add_argument("--no-pretty", dest="pretty", action="store_false", help="print the raw SQL line")
    ask.add_argument("--json", action="store_true",
                     help="print the answer as JSON: sql, confidence, uncertain, grounded, problems, "
                          "mended, alternatives, explanation, ...")
    ask.set_defaults(func=_ask)

    promote = sub.add_parser(
        "promote", help="move the registry's champion alias",
        description="Give the registry's `champion` alias to a model version (refused if its recorded "
                    "metrics are worse than the champion's, unless --force), or back to the one before.")
    target = promote.add_mutually_exclusive_group(required=True)
    target.add_argument("--version", type=int, help="model version to make champion")
    target.add_argument("--rollback", action="store_true", help="give champion back to the previous one")
    promote.add_argument("--reason", required=True,
                         help="why champion moves (recorded on the version with who and when)")
    promote.add_argument("--force", action="store_true", help="promote even if its metrics are worse")
    promote.add_argument("--name", default=None, help="registered model name (default: params.yaml)")
    promote.set_defaults(func=_promote)

    limits, batch = ServeLimits(), BatchSettings()
    demo = sub.add_parser(
        "demo", help="serve the comparison web page on 127.0.0.1",
        description="Serve the page that puts the champion's SQL beside the retrieval baseline's (the nearest "
                    "training question with the question's values), each with its confidence, and its JSON "
                    "API (/api/info, /api/cases, /api/ask). Reads the models, data/mimicsql.db, "
                    "data/ingested.jsonl, data/splits/train.jsonl and data/suite; writes nothing. Concurrent "
                    "questions share generation calls; past --max-in-flight a question is refused with 503 and "
                    "Retry-After.")
    demo.add_argument("--host", default="127.0.0.1")
    demo.add_argument("--port", type=int, default=8765)
    demo.add_argument("--max-in-flight", type=positive_arg, default=limits.max_in_flight,
                      help=f"questions answered at once; one more is refused (default {limits.max_in_flight})")
    demo.add_argument("--max-batch", type=positive_arg, default=batch.max_batch,
                      help=f"most questions in one generation call (default {batch.max_batch})")
    demo.add_argument("--batch-window-ms", type=window_arg, default=batch.window_ms,
                      help=f"how long a question waits for others to share its call (default {batch.window_ms:g})")
    demo.add_argument("--batch-fill-ms", type=window_arg, default=batch.fill_ms,
                      help="under steady load, how long it may wait for as many as last time "
                           f"(default {batch.fill_ms:g})")
    demo.add_argument("--max-pending", type=positive_arg, default=batch.max_pending,
                      help=f"most questions waiting for generation (default {batch.max_pending}; "
                           "at least twice --max-in-flight)")
    demo.add_argument("--zero-shot", action="store_true",
                      help="also the zero-shot baseline (the model's base, untrained for the task: for the "
                           "embedded profile it writes noise, and it costs most of the serving time)")
    demo.add_argument("--torch-threads", type=positive_arg, default=None,
                      help="torch threads for each model's worker (default: the cores, shared with the "
                           "zero-shot baseline when it serves)")
    demo.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    from medsql.logs import configure

    args = build_parser().parse_args(argv)
    configure()
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())

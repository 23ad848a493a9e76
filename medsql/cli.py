"""The `medsql` command: ask the model, promote models, serve the demo page, run a stage."""

from __future__ import annotations

import argparse
import sys


def _ask(args: argparse.Namespace) -> int:
    from medsql.predictor import Predictor, PredictorError

    try:
        predictor = Predictor.load(args.model)
        sql = predictor.predict([args.question], num_beams=args.beams)[0]
    except PredictorError as err:
        print(f"medsql ask: {err}", file=sys.stderr)
        return 2
    print(predictor.pretty(sql) if args.pretty else sql)
    return 0


def _promote(args: argparse.Namespace) -> int:
    from medsql.registry import promote_command

    return promote_command(args)


def _demo(args: argparse.Namespace) -> int:
    from medsql.demo.app import serve

    serve(host=args.host, port=args.port)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="medsql", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    ask = sub.add_parser("ask", help="translate a question into SQL with a trained model")
    ask.add_argument("question")
    ask.add_argument(
        "--model", default="latest",
        help="'latest' (models/medsql), 'champion'/'challenger' (registry alias), a model folder, "
             "or an MLflow model URI (models:/name@alias, models:/m-<id>)",
    )
    ask.add_argument("--beams", type=int, default=None, help="beam size (default: the model's)")
    ask.add_argument("--no-pretty", dest="pretty", action="store_false", help="print the raw SQL line")
    ask.set_defaults(func=_ask)

    promote = sub.add_parser("promote", help="move the registry's champion alias")
    target = promote.add_mutually_exclusive_group(required=True)
    target.add_argument("--version", type=int, help="model version to make champion")
    target.add_argument("--rollback", action="store_true", help="give champion back to the previous one")
    promote.add_argument("--force", action="store_true", help="promote even if its metrics are worse")
    promote.add_argument("--name", default=None, help="registered model name (default: params.yaml)")
    promote.set_defaults(func=_promote)

    demo = sub.add_parser("demo", help="serve the comparison web page on 127.0.0.1")
    demo.add_argument("--host", default="127.0.0.1")
    demo.add_argument("--port", type=int, default=8765)
    demo.set_defaults(func=_demo)

    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())

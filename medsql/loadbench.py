"""Load benchmark of the demo's JSON API: throughput and latency under concurrent clients, and overload.

    python -m medsql.loadbench                                  # models/medsql and the retrieval baseline
    python -m medsql.loadbench --zero-shot                      # ... and the zero-shot baseline too
    python -m medsql.loadbench --model /tmp/devtree/models/medsql --repeat 2
    python -m medsql.loadbench --checkout /tmp/old-checkout     # the same load on another checkout's code

It starts the demo app (`medsql.demo.app.create_app` with the roles `medsql demo` serves: the
trained model as champion and the retrieval baseline over data/splits/train.jsonl; the zero-shot
baseline only with `--zero-shot`; the real database, gold data and test suite) as a server on
127.0.0.1 in a child process, and drives `POST /api/ask` with 20 realistic questions (15 held-out
test questions, the page's 5 cases). A checkout whose create_app takes (baseline, champion, ...)
has no retrieval baseline: it serves the champion (and the zero-shot baseline with `--zero-shot`).
The report's `roles` are those the server listed.

- levels: 1, 4 and 16 clients (`--clients`), each sending questions back to back, for
  `--requests` answers or `--seconds` per level, whichever ends first. Printed: answers/s, p50,
  p95 and p99 latency of the answers (200s), refusals (503) and other errors.
- overload: (a) a burst of `--burst` clients asking back to back for `--burst-seconds`: how
  many are refused and how fast a refusal comes, and how long one more client (asking 20
  questions one by one meanwhile) waits for its answer or refusal; (b) `--abandon` requests whose
  clients give up after `--abandon-after` seconds, then one more question: how long until it is
  answered, a refusal retried after its Retry-After (work left by clients who have gone should
  not be done).
- memory: the server's resident memory (VmRSS) after warm-up and after every level; `--repeat`
  runs everything again to show whether it grows.

Loopback only; every wait is bounded, and the whole run stops by itself after `--max-seconds`.
Figures on a shared machine are noisy: repeat the run when it is quiet.
"""

from __future__ import annotations

import argparse
import http.client
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from medsql import paths
from medsql.util import read_jsonl

log = logging.getLogger(__name__)

QUESTIONS_FROM_TEST = 15
CASE_QUESTIONS = [  # medsql.demo.app.CASES, repeated so that another checkout's code is driven alike
    "how many patients have been diagnosed with diabetes?",
    "what are the names of female patients older than 65?",
    "list the drugs prescribed to patients whose primary disease is congestive heart failure.",
    "how many patients were admitted through the emergency room?",
    "what is the average age of patients?",
]

# The server, run in a child process with the checkout's code on PYTHONPATH. create_app takes
# {role: model} first where the demo has the retrieval baseline, (baseline, champion) in older
# code; db, dataset and suite follow in every version. Code with medsql.batching is given the
# limits `medsql demo` gives it (torch threads shared between the torch models).
SERVER = """
import inspect, json, os, sys
import uvicorn
if os.environ.get("MEDSQL_LOG_LEVEL"):
    from medsql.logs import configure
    configure()
from medsql.demo import app as demo
from medsql.predictor import Predictor
cfg = json.loads(sys.argv[1])
champion = Predictor(cfg["model"])
baseline = Predictor(cfg["baseline"]) if cfg["baseline"] else None
parameters = inspect.signature(demo.create_app).parameters
if "models" in parameters:
    models = {"champion": champion}
    if cfg["retrieval"]:
        models["retrieval"] = demo.load_retrieval(champion, cfg["train_split"], cfg["db"])
    if baseline is not None:
        models["baseline"] = baseline
    first = (models,)
else:
    first = (baseline, champion)
limits = {}
if "limits" in parameters:  # the serving limits `medsql demo` sets
    from medsql.batching import BatchSettings, ServeLimits, share_of_cores
    threads = cfg["torch_threads"] or share_of_cores(2 if baseline else 1)
    given = {k: cfg[k] for k in ("window_ms", "max_batch") if cfg[k] is not None}
    limits = {"limits": ServeLimits(batch=BatchSettings(torch_threads=threads, **given))}
app = demo.create_app(*first, cfg["db"], cfg["dataset"], cfg["suite"], examples_path=cfg["examples"], **limits)
uvicorn.run(app, host="127.0.0.1", port=cfg["port"], log_level="warning")
"""


@dataclass
class Outcome:
    status: int            # HTTP status; 0: no answer (timeout, connection error)
    seconds: float
    error: str = ""
    retry_after_s: float | None = None  # a 503's Retry-After


@dataclass
class Level:
    clients: int
    outcomes: list[Outcome] = field(default_factory=list)
    wall_s: float = 0.0

    def summary(self) -> dict[str, float | int]:
        ok = sorted(o.seconds for o in self.outcomes if o.status == 200)
        return {
            "clients": self.clients,
            "answers": len(ok),
            "answers_per_s": round(len(ok) / self.wall_s, 2) if self.wall_s else 0.0,
            "p50_ms": _ms(percentile(ok, 50)), "p95_ms": _ms(percentile(ok, 95)), "p99_ms": _ms(percentile(ok, 99)),
            "refused_503": sum(o.status == 503 for o in self.outcomes),
            "errors": sum(o.status not in (200, 503) for o in self.outcomes),
        }


def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile (nearest rank) of sorted values."""
    if not values:
        return None
    rank = max(1, min(len(values), round(q / 100 * len(values) + 0.5)))
    return values[rank - 1]


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


def realistic_questions(split: Path) -> list[str]:
    """15 held-out test questions, spread over the file (deterministic), and the page's 5 cases."""
    rows = [r["question"] for r in read_jsonl(split)]
    step = max(1, len(rows) // QUESTIONS_FROM_TEST)
    return rows[::step][:QUESTIONS_FROM_TEST] + CASE_QUESTIONS


# ---- the server ---------------------------------------------------------------------------------


class Server:
    """The demo app in a child process on a free loopback port."""

    def __init__(self, checkout: Path, model: Path, baseline: Path | None, startup_s: float,
                 torch_threads: int | None = None, window_ms: float | None = None, max_batch: int | None = None,
                 retrieval: bool = True):
        self.port = _free_port()
        config = {"model": str(model), "baseline": str(baseline) if baseline else None, "retrieval": retrieval,
                  "train_split": str(paths.SPLITS / "train.jsonl"), "db": str(paths.DB),
                  "dataset": str(paths.INGESTED), "suite": str(paths.SUITE),
                  "examples": str(paths.SPLITS / "test.jsonl"), "port": self.port, "torch_threads": torch_threads,
                  "window_ms": window_ms, "max_batch": max_batch}
        env = dict(os.environ, PYTHONPATH=str(checkout), TOKENIZERS_PARALLELISM="false")
        if torch_threads:  # torch's intra-op threads, read when torch starts (code without ServeLimits too)
            env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(torch_threads)
        self.process = subprocess.Popen([sys.executable, "-c", SERVER, json.dumps(config)], cwd=checkout, env=env)
        deadline = time.monotonic() + startup_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"loadbench: the server exited with status {self.process.returncode}")
            if self.get("/api/info")[0] == 200:
                return
            time.sleep(0.5)
        self.stop()
        raise SystemExit(f"loadbench: the server did not answer within {startup_s:.0f} s")

    def get(self, path: str) -> tuple[int, dict]:
        try:
            connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
            connection.request("GET", path)
            response = connection.getresponse()
            body = response.read()
            connection.close()
            return response.status, (json.loads(body) if response.status == 200 else {})
        except (OSError, http.client.HTTPException, ValueError):
            return 0, {}

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
        return float("nan")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=15)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ---- the clients --------------------------------------------------------------------------------


def ask(port: int, question: str, timeout_s: float) -> Outcome:
    """One POST /api/ask on a fresh connection; a timeout closes the connection (the client gives up)."""
    started = time.monotonic()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout_s)
    try:
        connection.request("POST", "/api/ask", body=json.dumps({"question": question}),
                           headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        body = response.read()
        error = "" if response.status == 200 else body[:200].decode("utf-8", "replace")
        retry = response.getheader("Retry-After")
        return Outcome(response.status, time.monotonic() - started, error,
                       float(retry) if retry and retry.isdigit() else None)
    except (OSError, http.client.HTTPException) as err:
        return Outcome(0, time.monotonic() - started, f"{type(err).__name__}: {err}")
    finally:
        connection.close()


def run_level(port: int, questions: list[str], clients: int, requests: int, seconds: float,
              timeout_s: float, pause_after_refusal_s: float = 0.0) -> Level:
    """`clients` threads asking back to back until `requests` answers are in or `seconds` pass."""
    level, lock = Level(clients), threading.Lock()
    counter = iter(range(10**9))
    deadline = time.monotonic() + seconds

    def client() -> None:
        while time.monotonic() < deadline:
            with lock:
                number = next(counter)
                if number >= requests:
                    return
            outcome = ask(port, questions[number % len(questions)], timeout_s)
            with lock:
                level.outcomes.append(outcome)
            if outcome.status == 503:
                time.sleep(pause_after_refusal_s)

    started = time.monotonic()
    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()) + timeout_s + 5)
    level.wall_s = time.monotonic() - started
    return level


def burst(port: int, questions: list[str], clients: int, seconds: float, timeout_s: float,
          probes: int = 20) -> dict:
    """`clients` clients asking back to back for `seconds` (pausing 0.2 s after a refusal): how
    many are refused and how fast. Meanwhile, once they have filled the server, one more client
    asks `probes` questions one after another (5 s timeout each): how long a newcomer waits."""
    result: list[Level] = []
    crowd = threading.Thread(target=lambda: result.append(
        run_level(port, questions, clients, 10**6, seconds, timeout_s, pause_after_refusal_s=0.2)), daemon=True)
    crowd.start()
    time.sleep(min(1.0, seconds / 4))
    probed = []
    for i in range(probes):
        probed.append(ask(port, questions[i % len(questions)], 5.0))
        time.sleep(0.1)
    crowd.join(seconds + timeout_s + 10)
    level = result[0] if result else Level(clients)
    refused = sorted(o.seconds for o in level.outcomes if o.status == 503)
    probe_refused = sorted(o.seconds for o in probed if o.status == 503)
    summary = level.summary()
    return {"clients": clients, "seconds": seconds, "sent": len(level.outcomes), "answered": summary["answers"],
            "answers_per_s": summary["answers_per_s"], "answer_p95_ms": summary["p95_ms"],
            "refused_503": len(refused), "refusal_p50_ms": _ms(percentile(refused, 50)),
            "refusal_p95_ms": _ms(percentile(refused, 95)), "other_errors": summary["errors"],
            "newcomer": {"asked": probes, "refused_503": len(probe_refused),
                         "answered": sum(o.status == 200 for o in probed),
                         "no_answer_in_5s": sum(o.status == 0 for o in probed),
                         "refusal_p50_ms": _ms(percentile(probe_refused, 50)),
                         "refusal_p95_ms": _ms(percentile(probe_refused, 95))}}


def abandoned(port: int, questions: list[str], count: int, after_s: float, timeout_s: float) -> dict:
    """`count` clients that give up after `after_s`, then one more question: how long until it is
    answered (a refusal is retried after its Retry-After, at most twice, as a browser user would)."""
    gave_up = run_level(port, questions, count, count, after_s + 10, after_s)
    started, refusals = time.monotonic(), 0
    following = ask(port, questions[0], timeout_s)
    while following.status == 503 and refusals < 2:
        refusals += 1
        time.sleep(min(following.retry_after_s or 1.0, 10.0))
        following = ask(port, questions[0], timeout_s)
    return {"abandoned": sum(o.status == 0 for o in gave_up.outcomes),
            "answered_before_giving_up": sum(o.status == 200 for o in gave_up.outcomes),
            "refused_503": sum(o.status == 503 for o in gave_up.outcomes),
            "next_question_status": following.status, "next_question_refusals": refusals,
            "next_question_ms": _ms(time.monotonic() - started)}


# ---- the run ------------------------------------------------------------------------------------


def bench(args: argparse.Namespace) -> dict:
    questions = realistic_questions(paths.SPLITS / "test.jsonl")
    baseline = (args.baseline or args.model / "baseline") if args.zero_shot else None
    started = time.monotonic()
    server = Server(args.checkout, args.model, baseline, args.startup_seconds, args.torch_threads,
                    args.batch_window_ms, args.max_batch, retrieval=not args.no_retrieval)
    info = server.get("/api/info")[1]
    report: dict = {"checkout": str(args.checkout), "model": str(args.model),
                    "baseline": str(baseline) if baseline else None,
                    "roles": info.get("roles") or [role for role, name in info.get("models", {}).items() if name],
                    "torch_threads": args.torch_threads, "batch_window_ms": args.batch_window_ms,
                    "max_batch": args.max_batch, "questions": len(questions), "rounds": []}
    try:
        for question in questions[:4]:  # warm-up: first calls pay for lazy initialisation
            ask(server.port, question, args.timeout)
        report["rss_mb_after_warmup"] = server.rss_mb()
        for round_number in range(1, args.repeat + 1):
            result: dict = {"round": round_number, "levels": []}
            for clients in args.clients:
                if time.monotonic() - started > args.max_seconds:
                    log.warning("stopping: --max-seconds %s reached", args.max_seconds)
                    break
                level = run_level(server.port, questions, clients, args.requests, args.seconds, args.timeout)
                summary = level.summary() | {"rss_mb": server.rss_mb()}
                result["levels"].append(summary)
                print(json.dumps({"round": round_number, **summary}), flush=True)
            if args.burst and time.monotonic() - started < args.max_seconds:
                result["burst"] = burst(server.port, questions, args.burst, args.burst_seconds,
                                        args.timeout) | {"rss_mb": server.rss_mb()}
                print(json.dumps({"round": round_number, "burst": result["burst"]}), flush=True)
            if args.abandon and time.monotonic() - started < args.max_seconds:
                result["abandon"] = abandoned(server.port, questions, args.abandon, args.abandon_after,
                                              args.timeout) | {"rss_mb": server.rss_mb()}
                print(json.dumps({"round": round_number, "abandon": result["abandon"]}), flush=True)
            result["server_stats"] = server.get("/api/stats")[1] or None
            report["rounds"].append(result)
        report["rss_mb_at_end"] = server.rss_mb()
    finally:
        server.stop()
    return report


def main(argv: list[str] | None = None) -> int:
    from medsql.logs import configure

    parser = argparse.ArgumentParser(prog="python -m medsql.loadbench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=paths.MODEL, help="trained model folder (default: models/medsql)")
    parser.add_argument("--zero-shot", action="store_true",
                        help="also serve the zero-shot baseline (as `medsql demo --zero-shot`)")
    parser.add_argument("--baseline", type=Path, default=None,
                        help="the zero-shot baseline's folder, with --zero-shot (default: <model>/baseline)")
    parser.add_argument("--no-retrieval", action="store_true", help="serve no retrieval baseline")
    parser.add_argument("--checkout", type=Path, default=paths.ROOT,
                        help="whose code serves (default: this checkout); data always comes from this one")
    parser.add_argument("--clients", type=lambda s: [int(c) for c in s.split(",")], default=[1, 4, 16],
                        help="concurrent clients per level, comma-separated (default 1,4,16)")
    parser.add_argument("--requests", type=int, default=120, help="answers per level at most (default 120)")
    parser.add_argument("--seconds", type=float, default=30, help="seconds per level at most (default 30)")
    parser.add_argument("--timeout", type=float, default=60, help="client timeout per request, s (default 60)")
    parser.add_argument("--burst", type=int, default=64, help="clients in the overload burst; 0: none (default 64)")
    parser.add_argument("--burst-seconds", type=float, default=10, help="how long the burst lasts, s (default 10)")
    parser.add_argument("--abandon", type=int, default=60, help="clients that give up; 0: none (default 60)")
    parser.add_argument("--abandon-after", type=float, default=3.0, help="when they give up, s (default 3)")
    parser.add_argument("--repeat", type=int, default=1, help="rounds of everything, for memory (default 1)")
    parser.add_argument("--startup-seconds", type=float, default=300, help="server start limit, s (default 300)")
    parser.add_argument("--max-seconds", type=float, default=900, help="the whole run's limit, s (default 900)")
    parser.add_argument("--torch-threads", type=int, default=None,
                        help="the server's torch intra-op threads (OMP_NUM_THREADS; default: torch's own)")
    parser.add_argument("--batch-window-ms", type=float, default=None,
                        help="the server's batch window (default: its own)")
    parser.add_argument("--max-batch", type=int, default=None, help="the server's largest batch (default: its own)")
    parser.add_argument("--json", type=Path, default=None, help="also write the report here")
    args = parser.parse_args(argv)
    configure()
    if not (args.model / "medsql.json").is_file():
        raise SystemExit(f"loadbench: no model at {args.model} (train one, or pass --model)")
    report = bench(args)
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

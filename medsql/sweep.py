"""Queue the named configurations of sweeps.yaml as DVC experiments, optionally start the queue.

    python -m medsql.sweep --profile embedded          # queue three experiments
    python -m medsql.sweep --profile reference --start # queue and run them (dvc queue start)
    dvc exp show --only-changed                          # compare; or the MLflow UI
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys

import yaml

from medsql import logs, paths

log = logging.getLogger(__name__)


def commands(profile: str, sweeps_file: str | None = None) -> list[list[str]]:
    with open(sweeps_file or paths.ROOT / "sweeps.yaml") as handle:
        sweeps = yaml.safe_load(handle)
    if profile not in sweeps:
        raise SystemExit(f"sweeps.yaml: no profile {profile!r} (have: {', '.join(sweeps)})")
    queued = []
    for name, overrides in sweeps[profile].items():
        command = ["dvc", "exp", "run", "--queue", "-n", f"{profile}-{name}"]
        for key, value in overrides.items():
            command += ["-S", f"{key}={value}"]
        queued.append(command)
    return queued


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="embedded", help="a top-level key of sweeps.yaml")
    parser.add_argument("--start", action="store_true", help="run the queue now (dvc queue start)")
    parser.add_argument("--jobs", type=int, default=1, help="parallel queue workers")
    args = parser.parse_args(argv)
    logs.configure()
    for command in commands(args.profile):
        log.info("+ %s", " ".join(command))
        subprocess.run(command, cwd=paths.ROOT, check=True)
    if args.start:
        subprocess.run(["dvc", "queue", "start", "--jobs", str(args.jobs)], cwd=paths.ROOT, check=True)
        log.info("queued experiments run in the background: `dvc queue status`, then `dvc exp show`")
    return 0


if __name__ == "__main__":
    sys.exit(main())

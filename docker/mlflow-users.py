"""One-shot service `mlflow-init`: make sure the pipeline's MLflow account exists with its password.

The tracking server runs with basic authentication (docker/mlflow-auth.ini). Airflow's tasks log
runs and register models as $MLFLOW_PIPELINE_USER (not as the admin), whose password is the Docker
secret mlflow_pipeline_password; the admin's is mlflow_admin_password. Both are read from files.
Creates the account, or resets its password to the secret's when it exists (rotation: change the
file, `docker compose up -d`). Models the account registers are its own (MANAGE); people get their
accounts and grants from the admin (MLflow UI, or the /api/2.0/mlflow/users and .../permissions APIs).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import requests

SECRETS = Path(os.environ.get("SECRETS_DIR", "/run/secrets"))  # where Docker mounts the secrets


def secret(name: str) -> str:
    return (SECRETS / name).read_text().strip()


def main() -> int:
    url = os.environ["MLFLOW_TRACKING_URI"].rstrip("/")
    admin = (os.environ.get("MLFLOW_AUTH_ADMIN_USERNAME", "admin"), secret("mlflow_admin_password"))
    user, password = os.environ["MLFLOW_PIPELINE_USER"], secret("mlflow_pipeline_password")
    api = f"{url}/api/2.0/mlflow/users"
    for _ in range(30):  # the server answers /health before the auth app is ready on a first start
        try:
            found = requests.get(f"{api}/get", params={"username": user}, auth=admin, timeout=10)
            break
        except requests.ConnectionError:
            time.sleep(2)
    else:
        print(f"mlflow-init: no answer from {url}", file=sys.stderr)
        return 1
    if found.status_code == 200:
        done = requests.patch(f"{api}/update-password", json={"username": user, "password": password},
                              auth=admin, timeout=10)
        what = "password set"
    elif found.status_code == 404:
        done = requests.post(f"{api}/create", json={"username": user, "password": password}, auth=admin,
                             timeout=10)
        what = "created"
    else:
        done = found
        what = "lookup"
    if done.status_code != 200:
        print(f"mlflow-init: account {user!r} at {url}: {what} failed: HTTP {done.status_code} {done.text[:300]}",
              file=sys.stderr)
        return 1
    print(f"mlflow-init: account {user!r} {what}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

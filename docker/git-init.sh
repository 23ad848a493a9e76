#!/bin/bash
# One-shot (compose service git-init): the git remote's bare repository, on its own volume, cloned from
# the project checkout (mounted read-only at $MEDSQL_CHECKOUT) the first time only. From then on the
# repository is the remote's own: the run branches runs/<run id> and the DVC experiments the pipeline
# pushes exist only there, and new code reaches it by `git push`, never by cloning the checkout again.
# Only committed history is copied (branches and tags; HEAD is the checkout's current branch).
#
#   MEDSQL_CHECKOUT   the checkout to clone (default /srv/checkout)
#   MEDSQL_GIT_REPO   the bare repository git-server serves (default /srv/git/medsql.git)
set -euo pipefail
source=${MEDSQL_CHECKOUT:-/srv/checkout}
repo=${MEDSQL_GIT_REPO:-/srv/git/medsql.git}

if [[ -f $repo/HEAD ]]; then
    echo "kept    $repo (HEAD $(git --git-dir="$repo" rev-parse --short HEAD 2>/dev/null || echo unborn))"
    exit 0
fi

# Cloned beside it and renamed when complete: a clone cut short never looks like the repository.
partial="$repo.cloning-$$"
rm -rf "$partial"
mkdir -p "$(dirname "$repo")"
# --no-local: through git's transport (no hard links or copied files of a read-only mount).
git clone --quiet --bare --no-local "$source" "$partial"
in_repo() { git --git-dir="$partial" "$@"; }
in_repo config core.sharedRepository group              # group 0 writes too (a changed AIRFLOW_UID)
in_repo config receive.denyNonFastForwards false         # `dvc exp push --force` replaces an experiment
in_repo config uploadpack.allowReachableSHA1InWant true  # MEDSQL_GIT_REF may be a commit no branch names
in_repo remote remove origin 2>/dev/null || true         # the checkout's path means nothing to clients
mv "$partial" "$repo"
echo "created $repo from $source (HEAD $(git --git-dir="$repo" rev-parse --short HEAD))"

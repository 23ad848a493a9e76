#!/bin/bash
# Entrypoint of every Airflow container (the image's ENTRYPOINT, under dumb-init): this container's own
# clone of the project code, then the Airflow image's entrypoint with the command given (`scheduler`,
# `celery worker --queues gpu`, ...). Nothing is shared with other containers: on every start the clone
# at $MEDSQL_PROJECT_DIR (a volume of this container's) is made if absent, else fetched, and moved to
# $MEDSQL_GIT_REF of the git remote $MEDSQL_GIT_REMOTE (a branch, tag or commit; empty: the remote's
# HEAD). Pushing code to the git remote and restarting a container is how it gets new code.
#
#   MEDSQL_GIT_REMOTE       git URL to clone (git://git-server/medsql.git); unset: no clone, only the hand-over
#   MEDSQL_GIT_REF          what to check out; empty or unset: the remote's HEAD
#   MEDSQL_PROJECT_DIR      where (default /opt/medsql); the data share is its sibling ../shared
#   MEDSQL_GIT_ATTEMPTS     tries, 2 s apart, while the remote cannot be reached (default 30)
#   MEDSQL_NEXT_ENTRYPOINT  what runs the command afterwards (default: /entrypoint, Airflow's)
#
# The clone is code only: tasks never run in it (they work in per-run workspaces, medsql/workspace.py).
# It is checked out detached and forced: local edits in a container do not survive a restart.
set -euo pipefail

next=${MEDSQL_NEXT_ENTRYPOINT:-/entrypoint}
remote=${MEDSQL_GIT_REMOTE:-}
dir=${MEDSQL_PROJECT_DIR:-/opt/medsql}
ref=${MEDSQL_GIT_REF:-}
attempts=${MEDSQL_GIT_ATTEMPTS:-30}

say() { echo "clone-project: $*" >&2; }

retry() {  # retry COMMAND...: the git remote may still be starting, or be across the network
    local attempt
    for ((attempt = 1; ; attempt++)); do
        "$@" && return 0
        if ((attempt >= attempts)); then
            say "gave up after $attempts attempts: $*"
            return 1
        fi
        sleep 2
    done
}

in_clone() { git -C "$dir" "$@"; }

if [[ -n $remote ]]; then
    # `git init` works in a folder that is not empty (a volume's mount point, or what a start cut short
    # left behind): the forced checkout below overwrites tracked files and `git clean` drops the rest.
    if [[ ! -d $dir/.git ]]; then
        say "new clone of $remote in $dir"
        mkdir -p "$dir"
        git init --quiet "$dir"
    fi
    if in_clone remote get-url origin >/dev/null 2>&1; then
        in_clone remote set-url origin "$remote"
    else
        in_clone remote add origin "$remote"
    fi
    retry in_clone fetch --quiet --prune --tags --force origin '+refs/heads/*:refs/remotes/origin/*'

    if [[ -z $ref ]]; then
        retry in_clone fetch --quiet origin HEAD
        target=$(in_clone rev-parse --verify FETCH_HEAD^{commit})
    elif target=$(in_clone rev-parse --verify --quiet "refs/remotes/origin/$ref^{commit}"); then
        :  # a branch of the remote
    elif target=$(in_clone rev-parse --verify --quiet "$ref^{commit}"); then
        :  # a tag, or a commit fetched with the branches
    else
        retry in_clone fetch --quiet origin "$ref"  # a commit no branch holds (the remote allows it)
        target=$(in_clone rev-parse --verify FETCH_HEAD^{commit})
    fi
    in_clone checkout --quiet --force --detach "$target"
    in_clone clean --quiet --force -d
    say "$dir at $(in_clone log -1 --format='%h %s') (${ref:-HEAD} of $remote)"
fi

exec "$next" "$@"

#!/bin/sh
# Entrypoint of the Celery broker: the password comes from a Docker secret file into a config file
# only redis can read (not onto the command line, where `ps` would show it), then the image's own
# entrypoint starts redis-server as the redis user.
set -eu
umask 077
printf 'requirepass %s\n' "$(cat /run/secrets/redis_password)" > /tmp/redis.conf
chown redis /tmp/redis.conf
exec docker-entrypoint.sh redis-server /tmp/redis.conf

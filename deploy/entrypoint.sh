#!/bin/sh
# Reads the API token from a file (a Compose or Kubernetes secret) into SMALLFIRST_API_TOKEN,
# so the token never appears in the image, the compose file or `docker inspect`.
set -eu
if [ -n "${SMALLFIRST_API_TOKEN_FILE:-}" ] && [ -z "${SMALLFIRST_API_TOKEN:-}" ]; then
    SMALLFIRST_API_TOKEN="$(cat "$SMALLFIRST_API_TOKEN_FILE")"
    export SMALLFIRST_API_TOKEN
fi
exec "$@"

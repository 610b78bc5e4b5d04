#!/usr/bin/env bash
# Installs the MinIO server that the end-to-end tests (internal/e2e) run,
# into ${WICKET_CI_CACHE:-$HOME/.cache/wicket-ci}/bin/minio. Idempotent: a
# cached binary built from the pinned version is kept; concurrent runs
# wait for each other. Prints the binary's path last.
set -euo pipefail

version=v0.0.0-20260212201848-7aac2a2c5b7c
cache=${WICKET_CI_CACHE:-$HOME/.cache/wicket-ci}
bin=$cache/bin/minio

installed_version() {
  # `go version -m` reads the module version go install recorded.
  go version -m "$bin" 2>/dev/null | awk '$1 == "mod" && $2 == "github.com/minio/minio" { print $3 }'
}

mkdir -p "$cache/bin"
exec 9>"$cache/minio.lock"
flock 9

if [ -x "$bin" ] && [ "$(installed_version)" = "$version" ]; then
  echo "minio $version already installed"
  echo "$bin"
  exit 0
fi

echo "installing minio $version (a few minutes the first time)"
log=$cache/minio-install.log
# Outside any module, so this checkout's go.mod does not get involved.
if ! (cd "$cache" && GOFLAGS= GOBIN="$cache/bin" go install "github.com/minio/minio@$version") >"$log" 2>&1; then
  tail -n 30 "$log" >&2
  echo "minio install failed; full log in $log" >&2
  exit 1
fi
if [ "$(installed_version)" != "$version" ]; then
  echo "minio install produced $bin with version '$(installed_version)', want $version" >&2
  exit 1
fi
echo "$bin"

#!/usr/bin/env bash
# Builds the SPIRE agent and server binaries that the SPIFFE interop tests
# (internal/spiffetest) run as real clients, into
# ${WICKET_CI_CACHE:-$HOME/.cache/wicket-ci}/spire-$version/bin. Idempotent:
# cached binaries built from the pinned version are kept; concurrent runs
# wait for each other. The first build takes ~15 minutes on 2 cores.
# Prints the binaries' directory last.
set -euo pipefail

version=v1.13.3
cache=${WICKET_CI_CACHE:-$HOME/.cache/wicket-ci}
dir=$cache/spire-$version
bin=$dir/bin

installed_version() {
  # `go version -m` reads the module version go install recorded (a "dep"
  # line: the binaries are built as tools of a scratch module).
  go version -m "$bin/$1" 2>/dev/null | awk '($1 == "mod" || $1 == "dep") && $2 == "github.com/spiffe/spire" { print $3 }'
}

installed() {
  [ -x "$bin/spire-agent" ] && [ -x "$bin/spire-server" ] &&
    [ "$(installed_version spire-agent)" = "$version" ] &&
    [ "$(installed_version spire-server)" = "$version" ]
}

mkdir -p "$dir/src" "$bin"
exec 9>"$dir.lock"
flock 9

if installed; then
  echo "spire $version already installed"
  echo "$bin"
  exit 0
fi

echo "building spire-agent and spire-server $version (~15 minutes the first time)"
log=$dir/install.log
# A scratch module of its own, so this checkout's go.mod does not get involved
# and SPIRE's own dependency versions are used as its go.mod pins them.
if ! (
  cd "$dir/src"
  export GOFLAGS=
  [ -f go.mod ] || go mod init scratch
  go get -tool "github.com/spiffe/spire/cmd/spire-agent@$version"
  go get -tool "github.com/spiffe/spire/cmd/spire-server@$version"
  GOBIN="$bin" go install github.com/spiffe/spire/cmd/spire-agent github.com/spiffe/spire/cmd/spire-server
) >"$log" 2>&1; then
  tail -n 30 "$log" >&2
  echo "spire build failed; full log in $log" >&2
  exit 1
fi
if ! installed; then
  echo "spire build produced binaries in $bin with versions '$(installed_version spire-agent)'/'$(installed_version spire-server)', want $version" >&2
  exit 1
fi
echo "$bin"

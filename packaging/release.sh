#!/usr/bin/env bash
# Builds wicket's release binaries: stripped, static, reproducible (the
# same source, version and Go toolchain give the same bytes, wherever the
# checkout is), for linux/amd64 and linux/arm64, with a SHA256SUMS file.
#
#   packaging/release.sh [--out DIR] [--arch "amd64 arm64"] [--bin "wicket wicket-agent"]
#
# The version is $WICKET_VERSION, else the git tag at HEAD, else
# `git describe --tags --always --dirty` (a dev build); the commit is
# $WICKET_COMMIT, else HEAD's. `wicket version` prints both
# (internal/version). The Dockerfiles in packaging/docker build with this
# script too, so every build uses these flags.
set -euo pipefail
cd "$(dirname "$0")/.."

out=dist
arches="amd64 arm64"
bins="wicket wicket-agent"
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out=$2; shift 2 ;;
    --arch) arches=$2; shift 2 ;;
    --bin) bins=$2; shift 2 ;;
    *) echo "release.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done

version=${WICKET_VERSION:-}
commit=${WICKET_COMMIT:-}
if [ -z "$version" ]; then
  version=$(git describe --tags --exact-match 2>/dev/null || git describe --tags --always --dirty 2>/dev/null || true)
fi
if [ -z "$commit" ]; then
  commit=$(git rev-parse HEAD 2>/dev/null || true)
fi
if [ -z "$version" ] || [ -z "$commit" ]; then
  echo "release.sh: no version or commit: set WICKET_VERSION and WICKET_COMMIT outside a git checkout" >&2
  exit 2
fi
case "$version$commit" in
  *[!A-Za-z0-9._+-]*) echo "release.sh: version and commit may hold only [A-Za-z0-9._+-]" >&2; exit 2 ;;
esac

pkg=github.com/wicket-sh/wicket/internal/version
# -trimpath drops local paths, -buildvcs=false the checkout's VCS state
# (the commit comes in through -X instead), -buildid= the linker's
# content-hash id; -s -w strip the symbol table and DWARF.
ldflags="-s -w -buildid= -X $pkg.Version=$version -X $pkg.Commit=$commit"

mkdir -p "$out"
for arch in $arches; do
  for bin in $bins; do
    dst="$out/${bin}_${version}_linux_${arch}"
    echo "building $dst"
    CGO_ENABLED=0 GOOS=linux GOARCH=$arch GOFLAGS= \
      go build -trimpath -buildvcs=false -ldflags "$ldflags" -o "$dst" "./cmd/$bin"
  done
done
(cd "$out" && sha256sum -- *_"${version}"_linux_* > SHA256SUMS)
echo "wrote $out/SHA256SUMS"

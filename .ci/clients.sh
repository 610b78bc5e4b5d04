#!/usr/bin/env bash
# Installs the real clients the ecosystem suite (internal/ecosystem) runs:
# Debian's python3-boto3 and python3-jwt, node and npm, and the npm packages
# pinned by internal/ecosystem/js/package-lock.json (npm ci, cached in
# ~/.npm). Idempotent: what is installed already is kept.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
for pkg in python3-boto3 python3-jwt; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
done
command -v node >/dev/null || need+=(nodejs)
command -v npm >/dev/null || need+=(npm)
if [ ${#need[@]} -gt 0 ]; then
  echo "apt-get install ${need[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
major=$(node --version | sed 's/^v\([0-9]*\).*/\1/')
if [ "$major" -lt 20 ]; then
  echo "node $(node --version) is too old: the pinned npm clients need Node 20 or later" >&2
  exit 1
fi
echo "node $(node --version), npm $(npm --version), $(/usr/bin/python3 -c 'import boto3, botocore, jwt; print("boto3", boto3.__version__, "botocore", botocore.__version__, "PyJWT", jwt.__version__)')"

js=internal/ecosystem/js
lock_sum=$(sha256sum "$js/package-lock.json" | cut -d' ' -f1)
if [ -f "$js/node_modules/.wicket-lock-sum" ] && [ "$(cat "$js/node_modules/.wicket-lock-sum")" = "$lock_sum" ]; then
  echo "npm packages already installed from this lockfile"
else
  (cd "$js" && npm ci --no-audit --no-fund --prefer-offline --cache "$HOME/.npm" >/dev/null)
  echo "$lock_sum" >"$js/node_modules/.wicket-lock-sum"
fi

"""Strict verification with PyJWT: PyJWKClient on the org's jwks_uri,
issuer, audience and algorithms pinned. Reads
{"issuer","audience","tokens":{name:jwt}} on stdin and prints
{name:{"ok":bool,"sub"?,"error"?}} on stdout."""
import json
import sys
import urllib.request

import jwt

inp = json.load(sys.stdin)
with urllib.request.urlopen(inp["issuer"] + "/.well-known/openid-configuration") as r:
    disc = json.load(r)
if disc["issuer"] != inp["issuer"]:
    raise SystemExit("discovery names another issuer")
jwks = jwt.PyJWKClient(disc["jwks_uri"])
out = {}
for name, token in inp["tokens"].items():
    try:
        key = jwks.get_signing_key_from_jwt(token)
        claims = jwt.decode(token, key.key, algorithms=["RS256", "ES256"],
                            audience=inp["audience"], issuer=inp["issuer"],
                            options={"require": ["exp", "iat", "iss", "aud", "sub"]})
        out[name] = {"ok": True, "sub": claims["sub"]}
    except Exception as e:  # every refusal is a result, not a crash
        out[name] = {"ok": False, "error": type(e).__name__}
print(json.dumps(out))

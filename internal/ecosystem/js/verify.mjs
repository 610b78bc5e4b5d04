// Strict verification with jose: the org's JWKS fetched from its discovery
// document, issuer, audience and algorithms pinned. Reads
// {"issuer","audience","tokens":{name:jwt}} on stdin and prints
// {name:{"ok":bool,"sub"?,"error"?}} on stdout.
import { createRemoteJWKSet, jwtVerify } from 'jose';
import { readFileSync } from 'node:fs';

const input = JSON.parse(readFileSync(0, 'utf8'));
const disc = await (await fetch(input.issuer + '/.well-known/openid-configuration')).json();
if (disc.issuer !== input.issuer) throw new Error('discovery names another issuer');
const jwks = createRemoteJWKSet(new URL(disc.jwks_uri));
const out = {};
for (const [name, token] of Object.entries(input.tokens)) {
  try {
    const { payload } = await jwtVerify(token, jwks, {
      issuer: input.issuer, audience: input.audience, algorithms: ['RS256', 'ES256'],
    });
    out[name] = { ok: true, sub: payload.sub };
  } catch (e) {
    out[name] = { ok: false, error: e.code || e.name };
  }
}
console.log(JSON.stringify(out));

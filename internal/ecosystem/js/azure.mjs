// @azure/identity's WorkloadIdentityCredential from the environment
// `wicket env azure` prints (AZURE_CLIENT_ID, AZURE_TENANT_ID,
// AZURE_FEDERATED_TOKEN_FILE, AZURE_AUTHORITY_HOST). Reads {"scopes":[…],
// "wait_for"?} on stdin: one getToken per scope; before the second, waits
// (bounded) until the file wait_for exists, so the test can replace the
// token file in between. Prints [{"ok","error"?}…].
import { WorkloadIdentityCredential } from '@azure/identity';
import { existsSync, readFileSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';

const input = JSON.parse(readFileSync(0, 'utf8'));
// The stand-in is not a host MSAL knows, so it would ask
// login.microsoftonline.com about it first (instance discovery); with
// Entra itself this option changes nothing that matters here.
const cred = new WorkloadIdentityCredential({ disableInstanceDiscovery: true });
const out = [];
for (const [i, scope] of input.scopes.entries()) {
  if (i === 1 && input.wait_for) {
    process.stderr.write('ready\n');
    for (let n = 0; n < 600 && !existsSync(input.wait_for); n++) await sleep(50);
  }
  try {
    const t = await cred.getToken(scope);
    out.push({ ok: !!t.token });
  } catch (e) {
    out.push({ ok: false, error: String(e && e.message || e).split('\n')[0] });
  }
}
console.log(JSON.stringify(out));

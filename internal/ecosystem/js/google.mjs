// google-auth-library with the external_account credentials file that
// `wicket gcp config` wrote (GOOGLE_APPLICATION_CREDENTIALS), the project
// from GOOGLE_CLOUD_PROJECT. Prints {"ok","token"?,"project"?,"error"?}.
import { GoogleAuth } from 'google-auth-library';

try {
  const auth = new GoogleAuth({ scopes: ['https://www.googleapis.com/auth/cloud-platform'] });
  const client = await auth.getClient();
  const { token } = await client.getAccessToken();
  const project = await auth.getProjectId();
  console.log(JSON.stringify({ ok: true, token, project }));
} catch (e) {
  console.log(JSON.stringify({ ok: false, error: String(e && e.message || e).split('\n')[0] }));
}

// The AWS SDK for JavaScript v3 against MinIO's STS and S3. Reads
// {"mode","bucket","role_arn","tokens"} on stdin; the environment holds the
// rest (AWS_ENDPOINT_URL_STS/_S3, AWS_ROLE_ARN, AWS_WEB_IDENTITY_TOKEN_FILE,
// AWS_CONFIG_FILE). Prints one JSON line.
import { readFileSync } from 'node:fs';
import { S3Client, CreateBucketCommand, PutObjectCommand, GetObjectCommand } from '@aws-sdk/client-s3';
import { fromTokenFile, fromWebToken, fromProcess, fromNodeProviderChain } from '@aws-sdk/credential-providers';

const input = JSON.parse(readFileSync(0, 'utf8'));
const region = 'us-east-1';

async function roundTrip(credentials) {
  const s3 = new S3Client({ region, credentials, forcePathStyle: true });
  await s3.send(new CreateBucketCommand({ Bucket: input.bucket }));
  await s3.send(new PutObjectCommand({ Bucket: input.bucket, Key: 'k', Body: 'hello from aws-sdk-js' }));
  const got = await s3.send(new GetObjectCommand({ Bucket: input.bucket, Key: 'k' }));
  return await got.Body.transformToString();
}

const providers = {
  fromTokenFile: () => fromTokenFile({ clientConfig: { region } }),
  fromWebToken: () => fromWebToken({ roleArn: input.role_arn, webIdentityToken: readFileSync(process.env.AWS_WEB_IDENTITY_TOKEN_FILE, 'utf8'), clientConfig: { region } }),
  chain: () => fromNodeProviderChain({ clientConfig: { region } }),
  fromProcess: () => fromProcess(),
};

if (input.mode === 'negatives') {
  const out = {};
  for (const [name, token] of Object.entries(input.tokens)) {
    try {
      await fromWebToken({ roleArn: input.role_arn, webIdentityToken: token, roleSessionName: 'web-1', clientConfig: { region } })();
      out[name] = { ok: true };
    } catch (e) {
      out[name] = { ok: false, error: e.name || e.Code || String(e) };
    }
  }
  console.log(JSON.stringify(out));
} else {
  const creds = providers[input.mode]();
  const body = await roundTrip(creds);
  const c = await creds();
  console.log(JSON.stringify({ body, expiration: c.expiration, hasSession: !!c.sessionToken }));
}

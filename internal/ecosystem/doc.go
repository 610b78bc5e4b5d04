// Package ecosystem holds the real-client suite: wicket's tokens presented
// to the clients users run (boto3 and the AWS SDK for JavaScript against
// MinIO, google-auth-library and @azure/identity against loopback stand-ins
// for Google STS and Entra that verify what they receive, the jose and
// PyJWT strict verifiers, and Vault's JWT auth plugin in process), each
// with its negative cases. The clients are installed by .ci/run: Debian's
// python3-boto3 and python3-jwt, and the npm packages pinned by js/'s
// lockfile. The suite writes down what it ran (client, version, flow), and
// docs/federation.md's "Tested with" table must match it
// (WICKET_ECOSYSTEM_UPDATE_DOCS=1 rewrites the table).
package ecosystem

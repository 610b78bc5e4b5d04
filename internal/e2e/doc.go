// Package e2e holds end-to-end tests, and the helpers that start the real
// components they need on loopback: an issuer in-process, and MinIO (whose
// STS and S3 API trust wicket's OIDC tokens) as a child process. The
// helpers are for tests only (they take a testing.TB).
package e2e

// Package promtext holds the test that the agent's and the issuer's
// /metrics (on their admin sockets) are valid Prometheus text, read by
// Prometheus's own parser. It is test-only so the parser never reaches a
// binary: wicket's encoder is internal/metrics.
package promtext

// Package spiffetest holds the SPIFFE end-to-end tests: a real issuer and
// a real agent in-process, and real SPIFFE clients (go-spiffe, and SPIRE's
// binaries when WICKET_SPIRE_BIN_DIR names them) speaking the Workload
// API, with workloads of other uids run as child processes.
package spiffetest

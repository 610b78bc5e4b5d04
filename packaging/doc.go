// Package packaging holds what an operator installs wicket with — the
// systemd units (systemd/), the Dockerfiles (docker/) and the release
// script (release.sh) — and the tests that check them as far as a
// machine without systemd as PID 1 or a Docker daemon allows.
package packaging

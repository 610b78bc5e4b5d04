// Package feature is the contract between the agent's core and its
// feature modules. The core (internal/agent) keeps the sockets, HTTP
// limits, logging, policy, admin and reload; a feature owns one section of
// the config (config.Section: its TOML key, type, defaults and
// validation) and what it adds at run time through the optional
// interfaces below. Features are registered statically, in one list
// (internal/agent/builtin); nothing is loaded at run time.
//
// A feature keeps no state between reloads: each reload decodes every
// section into a fresh value, and the agent swaps the whole config, and
// with it every feature's value, in one atomic step.
package feature

import "github.com/wicket-sh/wicket/internal/config"

// Module is one feature of the agent.
type Module interface {
	config.Section
}

// Host is what the running agent offers a feature.
type Host interface {
	// MachineID is the machine's id from the latest metadata, "" before
	// the first successful fetch.
	MachineID() string
}

// Env is implemented by a feature that gives a workload started next to
// the agent environment variables (KEY=value pairs), from its section's
// value v in the running config c. They never hold a secret.
type Env interface {
	Env(v any, c *config.Agent, h Host) []string
}

// Sections returns the config sections of modules, in order.
func Sections(modules []Module) []config.Section {
	out := make([]config.Section, len(modules))
	for i, m := range modules {
		out[i] = m
	}
	return out
}

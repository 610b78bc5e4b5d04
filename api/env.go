package api

// Default socket paths.
const (
	// DefaultAPISocket is the agent's guest API socket.
	DefaultAPISocket = "/run/wicket/api.sock"
	// DefaultAdminSocket is the agent's admin socket.
	DefaultAdminSocket = "/run/wicket/admin.sock"
	// DefaultIssuerAdminSocket is the issuer's admin socket.
	DefaultIssuerAdminSocket = "/run/wicket/issuer-admin.sock"
)

// Environment variables.
const (
	// EnvPrefix starts every wicket variable. `wicket agent run` removes
	// all of them from a workload's environment except SocketEnv.
	EnvPrefix = "WICKET_"
	// SocketEnv holds the guest API socket's path; `wicket agent run`
	// sets it for the workload and the client reads it.
	SocketEnv = "WICKET_SOCKET"
	// MachineTokenEnv may hold the machine token at the agent's start; the
	// agent unsets it at once.
	MachineTokenEnv = "WICKET_MACHINE_TOKEN"
	// AdminSocketEnv is the admin socket the `wicket admin` commands use.
	AdminSocketEnv = "WICKET_ADMIN_SOCKET"
	// IssuerSocketEnv is the issuer admin socket the `wicket issuer`
	// client commands use.
	IssuerSocketEnv = "WICKET_ISSUER_SOCKET"
	// AdminTokenEnv holds the admin token the CLI presents when no
	// --token-file is given.
	AdminTokenEnv = "WICKET_ADMIN_TOKEN"
)

// AuthScheme is the Authorization scheme of a machine token (or an
// attenuated copy) sent to the issuer or a proxied upstream:
// "Authorization: FlyV1 <token>". The issuer also accepts "Bearer".
const AuthScheme = "FlyV1"

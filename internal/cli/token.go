package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/wicket-sh/wicket/api"
	"github.com/wicket-sh/wicket/client"
	"github.com/wicket-sh/wicket/internal/tokenfile"
)

func NewTokenCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "token",
		Short: "Get tokens from the local agent",
		Args:  cobra.NoArgs,
	}
	cmd.AddCommand(newTokenOIDCCmd())
	return cmd
}

func newTokenOIDCCmd() *cobra.Command {
	var (
		socket, aud, out string
		asJSON           bool
		timeout          time.Duration
	)
	cmd := &cobra.Command{
		Use:   "oidc",
		Short: "Print an OIDC token (JWT) for this machine from the agent",
		Long: `Print an OIDC token for this machine, as issued through the local agent.

The token is printed alone on one line, ready for $(...); --json prints
{"token":"…","expires_at":"RFC3339"} instead. --out FILE writes the token
to FILE instead (atomically replaced, mode 0600, no trailing newline: an
STS reading a token file rejects the newline that "> FILE" would leave).
The socket is --socket, else $WICKET_SOCKET, else /run/wicket/api.sock.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if out != "" && asJSON {
				return errors.New("give --out or --json, not both")
			}
			c := client.New(socket)
			c.Timeout = timeout
			ctx := cmd.Context()
			if ctx == nil {
				ctx = context.Background()
			}
			tok, exp, err := c.OIDCToken(ctx, aud)
			if err != nil {
				return tokenError(err)
			}
			if out != "" {
				return tokenfile.Write(out, []byte(tok), 0o600, -1)
			}
			if asJSON {
				return json.NewEncoder(cmd.OutOrStdout()).Encode(api.TokenReply{Token: tok, ExpiresAt: exp.UTC().Truncate(time.Second)})
			}
			_, err = fmt.Fprintln(cmd.OutOrStdout(), tok)
			return err
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&socket, "socket", "", "agent API socket (default $WICKET_SOCKET or "+api.DefaultAPISocket+")")
	fl.StringVar(&aud, "aud", "", "audience; default: the issuer's default for this org")
	fl.BoolVar(&asJSON, "json", false, `print {"token","expires_at"} as JSON`)
	fl.StringVar(&out, "out", "", "write the token to this file (mode 0600, no newline, atomic replace) instead of stdout")
	fl.DurationVar(&timeout, "timeout", 30*time.Second, "give up after this long")
	return cmd
}

// tokenError turns a client error into one clear line; main prints it with
// the "wicket:" prefix and exits 1.
func tokenError(err error) error {
	var ce *client.Error
	if errors.As(err, &ce) {
		hint := ""
		switch ce.Code {
		case api.CodeForbidden:
			hint = "; the agent's policy does not allow this uid (or executable) to get tokens"
		case api.CodeUpstreamUnavailable:
			hint = "; the issuer is unreachable and no cached token is valid"
		case api.CodeBadRequest:
			hint = "; check --aud (printable ASCII, no spaces, at most 256 bytes)"
		case api.CodeRateLimited:
			if ce.RetryAfter > 0 {
				hint = fmt.Sprintf("; retry in %v", ce.RetryAfter)
			}
		}
		return fmt.Errorf("token oidc: %s%s", strings.TrimPrefix(ce.Error(), "wicket agent: "), hint)
	}
	return fmt.Errorf("token oidc: %w", err)
}

package cli

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/wicket-sh/wicket/api"
)

// unixClient returns an HTTP client that always dials the socket at path.
func unixClient(path string, timeout time.Duration) *http.Client {
	return &http.Client{
		Timeout: timeout,
		Transport: &http.Transport{
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				var d net.Dialer
				return d.DialContext(ctx, "unix", path)
			},
			DisableCompression: true,
		},
	}
}

func NewAdminCmd() *cobra.Command {
	var socket, tokenFile string
	cmd := &cobra.Command{
		Use:   "admin",
		Short: "Talk to a wicket admin socket (agent or issuer)",
	}
	cmd.PersistentFlags().StringVar(&socket, "socket", EnvOr(api.AdminSocketEnv, api.DefaultAdminSocket), "admin socket path ($WICKET_ADMIN_SOCKET)")
	cmd.PersistentFlags().StringVar(&tokenFile, "token-file", "", "file holding the admin token (or set $WICKET_ADMIN_TOKEN)")
	for _, c := range []struct{ name, method, path, short string }{
		{"status", http.MethodGet, "/v1/status", "Print the service's status"},
		{"health", http.MethodGet, "/v1/health", "Check the service is up"},
		{"reload", http.MethodPost, "/v1/reload", "Reload the configuration"},
		{"metrics", http.MethodGet, "/metrics", "Print Prometheus metrics"},
	} {
		c := c
		cmd.AddCommand(&cobra.Command{
			Use:   c.name,
			Short: c.short,
			Args:  cobra.NoArgs,
			RunE: func(cmd *cobra.Command, _ []string) error {
				return AdminCall(cmd, socket, tokenFile, c.method, c.path, nil)
			},
		})
	}
	return cmd
}

// adminCall sends one admin request and prints the reply; a non-2xx reply
// is printed to stderr and gives a non-zero exit.
func AdminCall(cmd *cobra.Command, socket, tokenFile, method, path string, body io.Reader) error {
	data, err := AdminDo(cmd, socket, tokenFile, method, path, body)
	if err != nil {
		return err
	}
	fmt.Fprint(cmd.OutOrStdout(), string(data))
	return nil
}

// AdminDo is AdminCall returning a successful reply's body instead of
// printing it, for a command that prints only part of it.
func AdminDo(cmd *cobra.Command, socket, tokenFile, method, path string, body io.Reader) ([]byte, error) {
	req, err := http.NewRequestWithContext(cmd.Context(), method, "http://wicket"+path, body)
	if err != nil {
		return nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	tok, err := adminToken(tokenFile)
	if err != nil {
		return nil, err
	}
	if tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	resp, err := unixClient(socket, 30*time.Second).Do(req)
	if err != nil {
		return nil, fmt.Errorf("cannot reach admin socket %s: %w", socket, unwrapURLError(err))
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return nil, fmt.Errorf("read reply: %w", err)
	}
	if resp.StatusCode/100 != 2 {
		fmt.Fprint(cmd.ErrOrStderr(), string(data))
		return nil, ExitError{1}
	}
	return data, nil
}

func adminToken(file string) (string, error) {
	if file != "" {
		b, err := os.ReadFile(file)
		if err != nil {
			return "", fmt.Errorf("admin token: %w", err)
		}
		return strings.TrimSpace(string(b)), nil
	}
	return strings.TrimSpace(os.Getenv(api.AdminTokenEnv)), nil
}

func unwrapURLError(err error) error {
	if ue, ok := err.(interface{ Unwrap() error }); ok {
		if inner := ue.Unwrap(); inner != nil {
			return inner
		}
	}
	return err
}

func EnvOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

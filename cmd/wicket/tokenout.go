package main

import (
	"encoding/json"
	"errors"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/wicket-sh/wicket/api"
	"github.com/wicket-sh/wicket/internal/tokenfile"
)

// tokenOutFlag registers --token-out on a command whose reply holds a
// machine token.
func tokenOutFlag(cmd *cobra.Command, out *string) {
	cmd.Flags().StringVar(out, "token-out", "", "write the machine token to this new file (mode 0600, no newline; never overwrites) and leave it out of the JSON printed")
}

// callTokenOut is adminFlags.call for a reply holding a machine token
// (found by token in the decoded reply). With out set, the file is claimed
// before the issuer is asked, so a name already taken fails before a token
// is minted; the token goes into it alone, and the JSON printed keeps
// everything else, its token field empty. A token that could not be
// written is not printed either: the error names its token_id to revoke.
func (a *adminFlags) callTokenOut(cmd *cobra.Command, method, path string, body any, out string, token func(reply any) *api.MintedToken, reply any) error {
	if out == "" {
		return a.call(cmd, method, path, body)
	}
	f, err := tokenfile.CreateExclusive(out, 0o600)
	if err != nil {
		return err
	}
	data, err := a.do(cmd, method, path, body)
	if err != nil {
		f.Abort()
		return err
	}
	mt := (*api.MintedToken)(nil)
	if json.Unmarshal(data, reply) == nil {
		mt = token(reply)
	}
	if mt == nil || mt.Token == "" {
		f.Abort()
		return errors.New("the issuer's reply holds no machine token")
	}
	werr := f.Commit([]byte(mt.Token))
	mt.Token = ""
	rest, err := json.MarshalIndent(reply, "", "  ")
	if err != nil {
		return err
	}
	fmt.Fprintf(cmd.OutOrStdout(), "%s\n", rest)
	if werr != nil {
		return fmt.Errorf("%w; the token was not saved: revoke token_id %s and mint another", werr, mt.TokenID)
	}
	return nil
}

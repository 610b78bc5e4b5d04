package cli

import (
	"encoding/json"
	"fmt"
	"io"
	"os"

	"github.com/spf13/cobra"

	"github.com/wicket-sh/wicket/internal/trust"
)

// NewTrustCmd prints and checks relying parties' trust configuration for
// an org's tokens. Pure computation (internal/trust): it reads nothing but
// its flags and, for check, the policy file.
func NewTrustCmd() *cobra.Command {
	var issuerURL, org, app, machine string
	var orgWide bool
	cmd := &cobra.Command{
		Use:   "trust",
		Short: "Print or check the configuration that makes a cloud or tool trust an org's (app's, machine's) tokens",
		Long: `Prints the relying-party configuration that accepts the tokens of one
app of an org (--app), one machine of it (--machine too) or every app of
the org (--org-wide), with audience and subject pinned; 'trust check aws'
flags trust policies that leave either open.

--issuer-url is the issuer's public_url (or the org's issuer,
<public_url>/<org>; both give the same output).`,
	}
	pf := cmd.PersistentFlags()
	pf.StringVar(&issuerURL, "issuer-url", "", "the issuer's public_url (required)")
	pf.StringVar(&org, "org", "", "the org (required)")
	pf.StringVar(&app, "app", "", "the app (required unless --org-wide)")
	pf.StringVar(&machine, "machine", "", "one machine name of the app")
	pf.BoolVar(&orgWide, "org-wide", false, "admit every app of the org")
	cmd.MarkPersistentFlagRequired("issuer-url")
	cmd.MarkPersistentFlagRequired("org")
	target := func() (trust.Target, error) { return trust.NewTarget(issuerURL, org, app, machine, orgWide) }

	var awsAccount, awsPartition, awsAud, awsPart string
	awsCmd := &cobra.Command{
		Use:   "aws",
		Short: "Print the IAM role trust policy (or, with --part provider, the IAM OIDC provider)",
		Long: `Prints the role trust policy, for
  aws iam create-role --role-name NAME --assume-role-policy-document file://trust.json
or with --part provider the IAM OIDC provider, for
  aws iam create-open-id-connect-provider --cli-input-json file://provider.json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			t, err := target()
			if err != nil {
				return err
			}
			switch awsPart {
			case "provider":
				return printJSON(cmd.OutOrStdout(), trust.AWSProviderConfig(t, awsAud))
			case "policy":
				p, err := trust.AWSTrustPolicy(t, awsPartition, awsAccount, awsAud)
				if err != nil {
					return err
				}
				return printJSON(cmd.OutOrStdout(), p)
			}
			return fmt.Errorf("trust aws: --part must be policy or provider")
		},
	}
	awsCmd.Flags().StringVar(&awsAccount, "account-id", "", "the AWS account of the role and provider (12 digits; required for the policy)")
	awsCmd.Flags().StringVar(&awsPartition, "partition", "aws", "the AWS partition (aws, aws-cn, aws-us-gov)")
	awsCmd.Flags().StringVar(&awsAud, "aud", trust.AWSAudience, "the audience (the provider's client ID)")
	awsCmd.Flags().StringVar(&awsPart, "part", "policy", "policy or provider")

	gcpCmd := &cobra.Command{
		Use:   "gcp",
		Short: "Print the workload identity pool provider (IAM API resource)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			t, err := target()
			if err != nil {
				return err
			}
			return printJSON(cmd.OutOrStdout(), trust.GCPProviderConfig(t))
		},
	}

	var azureAud string
	azureCmd := &cobra.Command{
		Use:   "azure",
		Short: "Print the federated identity credential of one machine (needs --machine)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			t, err := target()
			if err != nil {
				return err
			}
			c, err := trust.AzureCredentialConfig(t, azureAud)
			if err != nil {
				return err
			}
			return printJSON(cmd.OutOrStdout(), c)
		},
	}
	azureCmd.Flags().StringVar(&azureAud, "aud", trust.AzureAudience, "the audience")

	var vaultAud, vaultPart string
	var vaultPolicies []string
	vaultCmd := &cobra.Command{
		Use:   "vault",
		Short: "Print the JWT auth role (or, with --part config, the auth method's config)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			t, err := target()
			if err != nil {
				return err
			}
			switch vaultPart {
			case "config":
				return printJSON(cmd.OutOrStdout(), trust.VaultAuthConfig(t))
			case "role":
				if len(vaultPolicies) == 0 {
					vaultPolicies = []string{defaultPolicy(t)}
				}
				r, err := trust.VaultRoleConfig(t, vaultAud, vaultPolicies)
				if err != nil {
					return err
				}
				return printJSON(cmd.OutOrStdout(), r)
			}
			return fmt.Errorf("trust vault: --part must be role or config")
		},
	}
	vaultCmd.Flags().StringVar(&vaultAud, "aud", "", "the audience the machines ask for (required for the role)")
	vaultCmd.Flags().StringVar(&vaultPart, "part", "role", "role or config")
	vaultCmd.Flags().StringSliceVar(&vaultPolicies, "policies", nil, "token_policies (default: the app's name, or the org's)")

	var minioAud, minioPolicy string
	minioCmd := &cobra.Command{
		Use:   "minio",
		Short: "Print MinIO's environment for the org (MinIO cannot bind app or machine)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			t, err := target()
			if err != nil {
				return err
			}
			if minioPolicy == "" {
				minioPolicy = defaultPolicy(t)
			}
			env, err := trust.MinIOEnv(t, minioAud, minioPolicy)
			if err != nil {
				return err
			}
			_, err = io.WriteString(cmd.OutOrStdout(), env)
			return err
		},
	}
	minioCmd.Flags().StringVar(&minioAud, "aud", "", "MinIO's client ID, the audience (required)")
	minioCmd.Flags().StringVar(&minioPolicy, "policy", "", "the role policy (default: the app's name, or the org's)")

	checkCmd := &cobra.Command{Use: "check", Short: "Check relying-party configuration for this issuer"}
	var checkAccount, checkAud string
	var checkJSON bool
	checkAWS := &cobra.Command{
		Use:   "aws POLICY.json",
		Short: "Flag a role trust policy that leaves aud or sub open for this issuer",
		Long: `Reads an IAM role trust policy and flags, for every Allow statement
that lets this issuer's tokens assume the role: no condition pinning aud
(to --aud) or sub, a wildcard that admits other orgs or apps (or other
machines, with --machine), ForAllValues or IfExists conditions that pass
when the claim is absent, and "*" or NotPrincipal principals. Statements
for other providers are listed as ignored. Exits 1 on any finding.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			t, err := target()
			if err != nil {
				return err
			}
			doc, err := readPolicy(args[0])
			if err != nil {
				return err
			}
			rep := trust.CheckAWS(t, doc, checkAccount, checkAud)
			out := cmd.OutOrStdout()
			if checkJSON {
				err = printJSON(out, rep)
			} else {
				_, err = io.WriteString(out, rep.String())
			}
			if err != nil {
				return err
			}
			if !rep.OK {
				return ExitError{Code: 1}
			}
			return nil
		},
	}
	checkAWS.Flags().StringVar(&checkAccount, "account-id", "", "only the provider of this account is ours (default: any account)")
	checkAWS.Flags().StringVar(&checkAud, "aud", trust.AWSAudience, "the audience aud must be pinned to (\"\": any fixed value)")
	checkAWS.Flags().BoolVar(&checkJSON, "json", false, "print the report as JSON")
	checkCmd.AddCommand(checkAWS)

	cmd.AddCommand(awsCmd, gcpCmd, azureCmd, vaultCmd, minioCmd, checkCmd)
	return cmd
}

// defaultPolicy names a policy after what it admits: the app, or the org.
func defaultPolicy(t trust.Target) string {
	if t.OrgWide {
		return t.Org
	}
	return t.App
}

// maxPolicyBytes bounds the file read; IAM's own limit is 2,048 to 8,192
// characters for a trust policy.
const maxPolicyBytes = 1 << 20

func readPolicy(path string) ([]byte, error) {
	var r io.Reader = os.Stdin
	if path != "-" {
		f, err := os.Open(path)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		r = f
	}
	b, err := io.ReadAll(io.LimitReader(r, maxPolicyBytes+1))
	if err != nil {
		return nil, err
	}
	if len(b) > maxPolicyBytes {
		return nil, fmt.Errorf("trust check: %s is larger than %d bytes", path, maxPolicyBytes)
	}
	return b, nil
}

// printJSON writes v indented, without HTML escaping (a GCP condition's
// "&&" stays readable).
func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

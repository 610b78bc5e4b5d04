package oidc

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/go-jose/go-jose/v4/jwt"
)

// ErrInvalidAudience is wrapped by [ValidateAudience] errors, so a handler
// can answer 400 with a stable code without echoing the input.
var ErrInvalidAudience = errors.New("oidc: invalid audience")

// Audience limits: enough for any relying party, small enough that a caller
// cannot inflate tokens or logs.
const (
	MaxAudiences   = 10
	MaxAudienceLen = 256
)

// Claims are the claims of a wicket OIDC token.
type Claims struct {
	Issuer    string // iss: IssuerURL(publicURL, Org)
	Subject   string // sub: Subject(Org, App, MachineName)
	Audience  []string
	IssuedAt  time.Time
	NotBefore time.Time // zero means IssuedAt
	Expiry    time.Time
	ID        string // jti: lets logs name a token without carrying it

	Org, App, MachineID, MachineName, Region, Image, ImageDigest string
}

// wireClaims fixes the JSON names. jwt.Audience encodes one value as a string
// and several as an array, which is what relying parties expect.
type wireClaims struct {
	Issuer      string           `json:"iss"`
	Subject     string           `json:"sub"`
	Audience    jwt.Audience     `json:"aud"`
	Expiry      *jwt.NumericDate `json:"exp"`
	NotBefore   *jwt.NumericDate `json:"nbf"`
	IssuedAt    *jwt.NumericDate `json:"iat"`
	ID          string           `json:"jti"`
	Org         string           `json:"org"`
	App         string           `json:"app"`
	MachineID   string           `json:"machine_id"`
	MachineName string           `json:"machine_name"`
	Region      string           `json:"region,omitempty"`
	Image       string           `json:"image,omitempty"`
	ImageDigest string           `json:"image_digest,omitempty"`
}

// ClaimsSupported lists the claim names discovery advertises.
var ClaimsSupported = []string{
	"iss", "sub", "aud", "exp", "nbf", "iat", "jti",
	"org", "app", "machine_id", "machine_name", "region", "image", "image_digest",
}

// Sign returns c as a compact JWS signed by k, with kid and typ "JWT" in the
// protected header. It refuses claims no relying party should accept, so a
// bug upstream cannot mint a token without an audience or an expiry.
func Sign(k *Key, c Claims) (string, error) {
	if c.Issuer == "" || c.Subject == "" || c.ID == "" {
		return "", errors.New("oidc: sign: iss, sub and jti are required")
	}
	if err := ValidateAudience(c.Audience); err != nil {
		return "", fmt.Errorf("oidc: sign: %w", err)
	}
	if c.IssuedAt.IsZero() || !c.Expiry.After(c.IssuedAt) {
		return "", errors.New("oidc: sign: iat must be set and exp after it")
	}
	if c.NotBefore.IsZero() {
		c.NotBefore = c.IssuedAt
	}
	w := wireClaims{
		Issuer:      c.Issuer,
		Subject:     c.Subject,
		Audience:    jwt.Audience(c.Audience),
		Expiry:      jwt.NewNumericDate(c.Expiry),
		NotBefore:   jwt.NewNumericDate(c.NotBefore),
		IssuedAt:    jwt.NewNumericDate(c.IssuedAt),
		ID:          c.ID,
		Org:         c.Org,
		App:         c.App,
		MachineID:   c.MachineID,
		MachineName: c.MachineName,
		Region:      c.Region,
		Image:       c.Image,
		ImageDigest: c.ImageDigest,
	}
	s, err := k.jws()
	if err != nil {
		return "", err
	}
	// Claims are a few hundred bytes: this buffer usually stays on the stack.
	var buf [512]byte
	tok, err := s.sign(appendClaims(buf[:0], &w))
	if err != nil {
		return "", fmt.Errorf("oidc: sign with key %s: %w", k.ID, err)
	}
	return tok, nil
}

// JWTSVIDClaims are the claims of a JWT-SVID: the SPIFFE ID as sub, its
// audiences, when it was issued and ends, and a jti for the logs. Nothing
// else: no iss and none of the org/app/machine claims of an OIDC token,
// so a relying party that reads OIDC tokens' claims finds nothing of them.
type JWTSVIDClaims struct {
	Subject  string
	Audience []string
	IssuedAt time.Time
	Expiry   time.Time
	ID       string
}

type wireJWTSVID struct {
	Subject  string           `json:"sub"`
	Audience jwt.Audience     `json:"aud"`
	Expiry   *jwt.NumericDate `json:"exp"`
	IssuedAt *jwt.NumericDate `json:"iat"`
	ID       string           `json:"jti"`
}

// SignJWTSVID returns c as a compact JWS signed by k (kid and typ "JWT"
// in the protected header), refusing claims without sub, jti, an
// audience or an expiry after iat.
func SignJWTSVID(k *Key, c JWTSVIDClaims) (string, error) {
	if c.Subject == "" || c.ID == "" {
		return "", errors.New("oidc: sign jwt-svid: sub and jti are required")
	}
	if err := ValidateAudience(c.Audience); err != nil {
		return "", fmt.Errorf("oidc: sign jwt-svid: %w", err)
	}
	if c.IssuedAt.IsZero() || !c.Expiry.After(c.IssuedAt) {
		return "", errors.New("oidc: sign jwt-svid: iat must be set and exp after it")
	}
	payload, err := json.Marshal(wireJWTSVID{Subject: c.Subject, Audience: jwt.Audience(c.Audience),
		Expiry: jwt.NewNumericDate(c.Expiry), IssuedAt: jwt.NewNumericDate(c.IssuedAt), ID: c.ID})
	if err != nil {
		return "", fmt.Errorf("oidc: sign jwt-svid: %w", err)
	}
	s, err := k.jws()
	if err != nil {
		return "", err
	}
	tok, err := s.sign(payload)
	if err != nil {
		return "", fmt.Errorf("oidc: sign jwt-svid with key %s: %w", k.ID, err)
	}
	return tok, nil
}

// IssuerURL returns the issuer of org: one issuer per org, so a cloud trust
// set up for one org never accepts another org's tokens.
func IssuerURL(publicURL, org string) string {
	return strings.TrimRight(publicURL, "/") + "/" + org
}

// Subject returns the sub claim "<org>:<app>:<machine_name>". Parts must be
// non-empty and free of ':', or two machines could share a subject and so
// each other's cloud trust policies.
func Subject(org, app, machineName string) (string, error) {
	for _, p := range []string{org, app, machineName} {
		if p == "" || strings.Contains(p, ":") {
			return "", errors.New("oidc: subject parts must be non-empty and contain no ':'")
		}
	}
	return org + ":" + app + ":" + machineName, nil
}

// ValidateAudience checks requested audiences: 1 to [MaxAudiences] values,
// each 1 to [MaxAudienceLen] bytes of printable ASCII without whitespace.
// Errors wrap [ErrInvalidAudience] and never quote the input.
func ValidateAudience(aud []string) error {
	if len(aud) == 0 || len(aud) > MaxAudiences {
		return fmt.Errorf("%w: want 1 to %d values", ErrInvalidAudience, MaxAudiences)
	}
	for i, a := range aud {
		if a == "" || len(a) > MaxAudienceLen {
			return fmt.Errorf("%w: value %d must be 1 to %d bytes", ErrInvalidAudience, i, MaxAudienceLen)
		}
		for j := 0; j < len(a); j++ {
			if a[j] <= ' ' || a[j] > '~' {
				return fmt.Errorf("%w: value %d has a byte outside printable ASCII", ErrInvalidAudience, i)
			}
		}
	}
	return nil
}

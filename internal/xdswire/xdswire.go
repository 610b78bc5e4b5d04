// Package xdswire encodes and decodes, by hand, the few Envoy xDS
// messages the agent's Secret Discovery Service needs: the
// DiscoveryRequest Envoy sends, and the DiscoveryResponse of Secrets the
// agent answers with (envoy.service.discovery.v3,
// envoy.extensions.transport_sockets.tls.v3).
//
// Envoy's generated Go protos (go-control-plane) would do the same; they
// pull in every xDS package's descriptors and validators, 5 MiB of binary
// and 2.5 MiB of resident memory at start, in a process that runs on
// every machine. The messages here are a handful of strings and byte
// fields, so they are written with protowire: field numbers and wire
// types as Envoy's .proto files give them. Tests decode every message
// encoded here with go-control-plane's types, and encode with them every
// request decoded here.
package xdswire

import (
	"errors"
	"fmt"
	"unicode/utf8"

	"google.golang.org/protobuf/encoding/protowire"
)

// SecretTypeURL is the type URL of an SDS resource, and of the Any that
// carries each Secret.
const SecretTypeURL = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"

// SPIFFEValidator names Envoy's SPIFFE certificate validator extension;
// spiffeValidatorTypeURL is its config's type.
const (
	SPIFFEValidator        = "envoy.tls.cert_validator.spiffe"
	spiffeValidatorTypeURL = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.SPIFFECertValidatorConfig"
)

// Field numbers, as Envoy's protos give them.
const (
	// envoy.service.discovery.v3.DiscoveryRequest
	reqVersionInfo   = 1
	reqResourceNames = 3
	reqTypeURL       = 4
	reqResponseNonce = 5
	reqErrorDetail   = 6

	// google.rpc.Status
	statusCode    = 1
	statusMessage = 2

	// envoy.service.discovery.v3.DiscoveryResponse
	respVersionInfo = 1
	respResources   = 2
	respTypeURL     = 4
	respNonce       = 5

	// google.protobuf.Any
	anyTypeURL = 1
	anyValue   = 2

	// envoy.extensions.transport_sockets.tls.v3.Secret
	secretName              = 1
	secretTLSCertificate    = 2
	secretValidationContext = 4

	// ...TlsCertificate
	tlsCertificateChain = 1
	tlsPrivateKey       = 2

	// ...CertificateValidationContext
	vcTrustedCA             = 1
	vcCustomValidatorConfig = 12

	// envoy.config.core.v3.TypedExtensionConfig
	extName        = 1
	extTypedConfig = 2

	// ...SPIFFECertValidatorConfig and its TrustDomain
	spiffeTrustDomains = 1
	tdName             = 1
	tdTrustBundle      = 2

	// envoy.config.core.v3.DataSource
	dsInlineBytes = 2
)

// Status is the google.rpc.Status of a NACK: what Envoy could not apply.
type Status struct {
	Code    int32
	Message string
}

// DiscoveryRequest is what the agent reads of Envoy's request. The node,
// resource locators, error_detail's details and any field a later Envoy
// adds are skipped unread: a malformed node, which protobuf-go would
// refuse, is accepted here. Nothing skipped decides a reply (the caller
// is who the kernel says; the names, type and nonce are read as
// protobuf-go reads them).
type DiscoveryRequest struct {
	VersionInfo   string
	ResourceNames []string
	TypeURL       string
	ResponseNonce string
	ErrorDetail   *Status // set on a NACK
}

// ErrMalformed is returned for bytes that are not a DiscoveryRequest.
var ErrMalformed = errors.New("xdswire: malformed message")

// Unmarshal reads b into r, as protobuf-go's generated code would: the
// last value of a singular field wins, repeated error_detail messages
// merge, unknown fields (and a known number with another wire type) are
// skipped, and a string that is not UTF-8 is refused.
func (r *DiscoveryRequest) Unmarshal(b []byte) error {
	*r = DiscoveryRequest{}
	return eachField(b, func(num protowire.Number, typ protowire.Type, v []byte, _ uint64) error {
		if typ != protowire.BytesType {
			return nil
		}
		var err error
		switch num {
		case reqVersionInfo:
			r.VersionInfo, err = str(v)
		case reqResourceNames:
			var s string
			if s, err = str(v); err == nil {
				r.ResourceNames = append(r.ResourceNames, s)
			}
		case reqTypeURL:
			r.TypeURL, err = str(v)
		case reqResponseNonce:
			r.ResponseNonce, err = str(v)
		case reqErrorDetail:
			if r.ErrorDetail == nil {
				r.ErrorDetail = &Status{}
			}
			err = r.ErrorDetail.unmarshal(v)
		}
		return err
	})
}

func (s *Status) unmarshal(b []byte) error {
	return eachField(b, func(num protowire.Number, typ protowire.Type, v []byte, x uint64) error {
		var err error
		switch {
		case num == statusCode && typ == protowire.VarintType:
			s.Code = int32(x)
		case num == statusMessage && typ == protowire.BytesType:
			s.Message, err = str(v)
		}
		return err
	})
}

// eachField calls f with every field of the message b: its number, wire
// type, and its bytes (a length-delimited field's contents) or varint.
// Groups and fields a later protocol adds are skipped whole.
func eachField(b []byte, f func(protowire.Number, protowire.Type, []byte, uint64) error) error {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return ErrMalformed
		}
		b = b[n:]
		var (
			v []byte
			x uint64
		)
		switch typ {
		case protowire.BytesType:
			v, n = protowire.ConsumeBytes(b)
		case protowire.VarintType:
			x, n = protowire.ConsumeVarint(b)
		default:
			n = protowire.ConsumeFieldValue(num, typ, b)
		}
		if n < 0 {
			return ErrMalformed
		}
		b = b[n:]
		if err := f(num, typ, v, x); err != nil {
			return err
		}
	}
	return nil
}

// str is a string field's value: proto3 strings are UTF-8.
func str(v []byte) (string, error) {
	if !utf8.Valid(v) {
		return "", fmt.Errorf("%w: a string field is not UTF-8", ErrMalformed)
	}
	return string(v), nil
}

// Secret is one SDS resource: an X.509-SVID (TLSCertificate) or the CAs
// to validate peers with (ValidationContext). Exactly one is set.
type Secret struct {
	Name              string
	TLSCertificate    *TLSCertificate
	ValidationContext *ValidationContext
}

// TLSCertificate is a certificate chain and its private key, both PEM,
// sent inline.
type TLSCertificate struct {
	CertificateChain []byte
	PrivateKey       []byte
}

// ValidationContext is either a plain trusted_ca (TrustedCA, PEM, sent
// even when empty) or, when SPIFFE is not nil, Envoy's SPIFFE validator
// with each trust domain's CAs kept to that domain (TrustedCA unused).
type ValidationContext struct {
	TrustedCA []byte
	SPIFFE    []TrustDomain
}

// TrustDomain is one entry of the SPIFFE validator's config: a trust
// domain's name and its CAs (PEM).
type TrustDomain struct {
	Name        string
	TrustBundle []byte
}

// Marshal encodes s.
func (s *Secret) Marshal() []byte { return s.append(nil) }

func (s *Secret) append(b []byte) []byte {
	b = appendString(b, secretName, s.Name)
	if c := s.TLSCertificate; c != nil {
		b = appendMessage(b, secretTLSCertificate, func(b []byte) []byte {
			b = appendInline(b, tlsCertificateChain, c.CertificateChain)
			return appendInline(b, tlsPrivateKey, c.PrivateKey)
		})
	}
	if vc := s.ValidationContext; vc != nil {
		b = appendMessage(b, secretValidationContext, vc.append)
	}
	return b
}

func (vc *ValidationContext) append(b []byte) []byte {
	if vc.SPIFFE == nil {
		// Even empty (a bundle with no X.509 authorities): the field
		// says which kind of validation context this is.
		return appendInline(b, vcTrustedCA, vc.TrustedCA)
	}
	{
		b = appendMessage(b, vcCustomValidatorConfig, func(b []byte) []byte {
			b = appendString(b, extName, SPIFFEValidator)
			return appendMessage(b, extTypedConfig, func(b []byte) []byte {
				return appendAny(b, spiffeValidatorTypeURL, func(b []byte) []byte {
					for _, td := range vc.SPIFFE {
						b = appendMessage(b, spiffeTrustDomains, func(b []byte) []byte {
							b = appendString(b, tdName, td.Name)
							return appendInline(b, tdTrustBundle, td.TrustBundle)
						})
					}
					return b
				})
			})
		})
	}
	return b
}

// DiscoveryResponse is an SDS response of Secrets, each given encoded
// (Secret.Marshal): a stream keeps the bytes it sent to compare with the
// next build, and sends those very bytes.
type DiscoveryResponse struct {
	VersionInfo string
	Nonce       string
	Resources   [][]byte
}

// Marshal encodes r, each Secret in an Any, with the Secret type URL.
func (r *DiscoveryResponse) Marshal() []byte {
	var b []byte
	b = appendString(b, respVersionInfo, r.VersionInfo)
	for _, s := range r.Resources {
		b = appendMessage(b, respResources, func(b []byte) []byte {
			b = appendString(b, anyTypeURL, SecretTypeURL)
			if len(s) == 0 {
				return b // proto3 leaves an empty bytes field out
			}
			b = protowire.AppendTag(b, anyValue, protowire.BytesType)
			return protowire.AppendBytes(b, s)
		})
	}
	b = appendString(b, respTypeURL, SecretTypeURL)
	return appendString(b, respNonce, r.Nonce)
}

// appendString appends a string field; proto3 leaves out an empty one.
func appendString(b []byte, num protowire.Number, s string) []byte {
	if s == "" {
		return b
	}
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendString(b, s)
}

// appendMessage appends an embedded message field, whose contents body
// appends. It is written even when empty: a set message field is present.
func appendMessage(b []byte, num protowire.Number, body func([]byte) []byte) []byte {
	b = protowire.AppendTag(b, num, protowire.BytesType)
	// Reserve one byte for the length, the common case below 128, and
	// move the contents if the length needs more.
	at := len(b)
	b = append(b, 0)
	b = body(b)
	n := len(b) - at - 1
	if size := protowire.SizeVarint(uint64(n)); size > 1 {
		b = append(b, make([]byte, size-1)...)
		copy(b[at+size:], b[at+1:at+1+n])
	}
	// b[at:at] has room for the length: AppendVarint writes it in place.
	protowire.AppendVarint(b[at:at], uint64(n))
	return b
}

// appendAny appends the fields of a google.protobuf.Any holding the
// message body appends. Its value is a bytes field: proto3 leaves it out
// when empty.
func appendAny(b []byte, typeURL string, body func([]byte) []byte) []byte {
	b = appendString(b, anyTypeURL, typeURL)
	at := len(b)
	if b = appendMessage(b, anyValue, body); len(b) == at+2 {
		b = b[:at] // a tag and a zero length
	}
	return b
}

// appendInline appends a DataSource field holding v as inline_bytes.
func appendInline(b []byte, num protowire.Number, v []byte) []byte {
	return appendMessage(b, num, func(b []byte) []byte {
		b = protowire.AppendTag(b, dsInlineBytes, protowire.BytesType)
		return protowire.AppendBytes(b, v)
	})
}

package spiffetest

import (
	"context"
	"testing"

	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
)

// The cached fetches over the real socket with the generated gRPC client
// (no SVID parsing on the client side, which in go-spiffe costs more than
// the agent's answer), agent and client in this process: ns/op and
// allocs/op are mostly the agent's per-call work, steadier than the
// bench's -peer spire mode on a shared machine.

func benchClient(b *testing.B) (workload.SpiffeWorkloadAPIClient, context.Context) {
	e := setup(b)
	conn, err := grpc.NewClient("unix://"+e.sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { conn.Close() })
	return workload.NewSpiffeWorkloadAPIClient(conn), metadata.AppendToOutgoingContext(b.Context(), "workload.spiffe.io", "true")
}

func BenchmarkWorkloadAPI_CachedJWTSVID(b *testing.B) {
	c, ctx := benchClient(b)
	req := &workload.JWTSVIDRequest{Audience: []string{"bench"}}
	if _, err := c.FetchJWTSVID(ctx, req); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := c.FetchJWTSVID(ctx, req); err != nil {
			b.Fatal(err)
		}
	}
}

// One-shot, as workloadapi.FetchX509SVID does: open the stream, take
// the first message, close it.
func BenchmarkWorkloadAPI_CachedX509SVID(b *testing.B) {
	c, ctx := benchClient(b)
	fetch := func() error {
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()
		st, err := c.FetchX509SVID(ctx, &workload.X509SVIDRequest{})
		if err != nil {
			return err
		}
		_, err = st.Recv()
		return err
	}
	if err := fetch(); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if err := fetch(); err != nil {
			b.Fatal(err)
		}
	}
}

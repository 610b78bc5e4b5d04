package main

import (
	"context"
	"fmt"
)

// measurePeer measures a peer's equivalent of wicket's cached token beside
// it, in the same run.
func measurePeer(ctx context.Context, o options, work string, reference, token target) ([]comparison, string, error) {
	switch o.peer {
	case "spire":
		return measureSPIRE(ctx, o, work, reference, token)
	default:
		return nil, "", fmt.Errorf("-peer %q: only spire is known", o.peer)
	}
}

package client_test

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/wicket-sh/wicket/api"
	"github.com/wicket-sh/wicket/client"
)

func ExampleClient_OIDCToken() {
	c := client.New("") // $WICKET_SOCKET or /run/wicket/api.sock
	tok, exp, err := c.OIDCToken(context.Background(), "sts.amazonaws.com")
	var ae *client.Error
	switch {
	case errors.As(err, &ae) && ae.Code == api.CodeUpstreamUnavailable:
		fmt.Println("issuer unreachable and no cached token; retry later")
	case err != nil:
		fmt.Println(err)
	default:
		fmt.Println(len(tok) > 0, time.Until(exp) > 0)
	}
}

func ExampleClient_Watch() {
	c := client.New("")
	ctx := context.Background()
	_, etag, err := c.Metadata(ctx)
	for err == nil {
		var m api.Metadata
		m, etag, err = c.Watch(ctx, etag, time.Minute)
		if err == nil {
			fmt.Println("role:", m.Tags["role"])
		}
	}
}

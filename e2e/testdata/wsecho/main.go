// Command wsecho is a WebSocket echo server the proxy test runs inside a
// sandbox: every message comes back as it was sent.
package main

import (
	"context"
	"log"
	"net/http"
	"os"

	"github.com/coder/websocket"
)

func main() {
	addr := ":8090"
	if len(os.Args) > 1 {
		addr = os.Args[1]
	}
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := websocket.Accept(w, r, &websocket.AcceptOptions{InsecureSkipVerify: true})
		if err != nil {
			return
		}
		defer c.CloseNow()
		ctx := context.Background()
		for {
			typ, msg, err := c.Read(ctx)
			if err != nil {
				return
			}
			if err := c.Write(ctx, typ, msg); err != nil {
				return
			}
		}
	})
	log.Fatal(http.ListenAndServe(addr, h))
}

package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"golang.org/x/term"

	"github.com/tsstore/tsstore/client"
	pb "github.com/tsstore/tsstore/proto/tsstorev1"
)

// Helpers shared by the data operations: snapshot, backup, restore,
// verify and dump.

// clusterNode connects to one node's Cluster service: the node with id
// node if set (found through Status), otherwise the first --addr. It
// returns the client (close it), the node's API address and its id when
// known.
func (c *clientFlags) clusterNode(ctx context.Context, node string) (*client.Client, pb.ClusterClient, string, error) {
	cl, _, cancel, err := c.connect()
	if err != nil {
		return nil, nil, "", err
	}
	cancel() // the caller's ctx bounds the calls
	addr := c.addrList()[0]
	if node != "" {
		st, err := cl.Status(ctx)
		if err != nil {
			cl.Close()
			return nil, nil, "", err
		}
		addr = ""
		var ids []string
		for _, n := range st.Nodes {
			ids = append(ids, n.Id)
			if n.Id == node {
				addr = n.ApiAddress
			}
		}
		if addr == "" {
			cl.Close()
			return nil, nil, "", fmt.Errorf("%w: node %q is not a member with a known API address (members: %s)", errUsage, node, strings.Join(ids, ", "))
		}
	}
	conn, err := cl.NodeConn(addr)
	if err != nil {
		cl.Close()
		return nil, nil, "", err
	}
	return cl, pb.NewClusterClient(conn), addr, nil
}

// progressBar draws "label  done / total  pct" on a terminal, redrawn at
// most every 100 ms; on anything else it draws nothing.
type progressBar struct {
	w     io.Writer
	label string
	on    bool
	last  time.Time
	drawn bool
}

func newProgressBar(stderr io.Writer, label string) *progressBar {
	f, ok := stderr.(*os.File)
	return &progressBar{w: stderr, label: label, on: ok && term.IsTerminal(int(f.Fd()))}
}

func (p *progressBar) update(done, total int64) {
	if !p.on || (time.Since(p.last) < 100*time.Millisecond && done != total) {
		return
	}
	p.last = time.Now()
	pct := 100.0
	if total > 0 {
		pct = 100 * float64(done) / float64(total)
	}
	const width = 30
	fill := int(pct / 100 * width)
	fmt.Fprintf(p.w, "\r%s [%s%s] %s / %s %5.1f%%", p.label, strings.Repeat("#", fill), strings.Repeat(".", width-fill),
		humanBytes(done), humanBytes(total), pct)
	p.drawn = true
}

// finish ends the progress line.
func (p *progressBar) finish() {
	if p.drawn {
		fmt.Fprintln(p.w)
		p.drawn = false
	}
}

func humanBytes(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.2f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}

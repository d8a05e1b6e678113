package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/schollz/progressbar/v3"
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

// progressBar draws a progress line on a terminal: label, bar, percent,
// bytes done of the total in IEC units, rate and ETA, e.g.
//
//	backup  42% |████████████          | (1.2/2.9 GiB, 212 MiB/s) [5s:8s]
//
// It is github.com/schollz/progressbar (a well-kept library: throttled
// redraws, rate smoothing, ETA), in place of the hand-drawn line that had
// no rate or ETA. On anything but a terminal it draws nothing, so scripts
// and logs stay clean.
type progressBar struct {
	w     io.Writer
	label string
	on    bool
	bar   *progressbar.ProgressBar
}

func newProgressBar(stderr io.Writer, label string) *progressBar {
	f, ok := stderr.(*os.File)
	return &progressBar{w: stderr, label: label, on: ok && term.IsTerminal(int(f.Fd()))}
}

// update reports done of total bytes; the signature is backup.Open's and
// segment.Log.Verify's progress callback.
func (p *progressBar) update(done, total int64) {
	if !p.on {
		return
	}
	if p.bar == nil {
		p.bar = progressbar.NewOptions64(total,
			progressbar.OptionSetWriter(p.w),
			progressbar.OptionSetDescription(p.label),
			progressbar.OptionSetWidth(30),
			progressbar.OptionShowBytes(true),
			progressbar.OptionUseIECUnits(true),
			progressbar.OptionShowCount(),
			progressbar.OptionSetPredictTime(true),
			progressbar.OptionShowElapsedTimeOnFinish(),
			progressbar.OptionThrottle(100*time.Millisecond),
		)
	}
	if total != p.bar.GetMax64() {
		p.bar.ChangeMax64(total)
	}
	p.bar.Set64(done)
}

// finish draws the final state and ends the progress line.
func (p *progressBar) finish() {
	if p.bar == nil {
		return
	}
	if p.bar.GetMax64() > 0 && p.bar.State().CurrentNum >= p.bar.GetMax64() {
		p.bar.Finish()
	} else {
		p.bar.Exit()
	}
	fmt.Fprintln(p.w)
	p.bar = nil
}

// progressReader reports the bytes read through it to a progressBar.
type progressReader struct {
	r     io.Reader
	bar   *progressBar
	done  int64
	total int64
}

func (r *progressReader) Read(b []byte) (int, error) {
	n, err := r.r.Read(b)
	r.done += int64(n)
	r.bar.update(r.done, r.total)
	return n, err
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

// Package client is the Go SDK for tsstore. It speaks the tsstore.v1 gRPC
// API (package tsstorev1) and decodes replayed events with package record;
// it never imports the server side (server/, fsm/, segment/).
//
// # Guarantees
//
// Ordering. Appends of one Producer are sent one at a time, in call order,
// so their events get increasing offsets in that order. A Replay yields
// events in offset order.
//
// Idempotent retries. Every append carries the producer's id and
// sequence. When an attempt fails with Unavailable, a connection error or
// its own RequestTimeout, the client retries on another node (preferring
// the leader, learned from Status) with exponential backoff and the same
// sequence; the server commits the events at most once and answers a
// retry of a committed append with the original offsets
// (AppendResult.Duplicate). The sequence advances only after a commit. An
// append whose outcome stays unknown is kept "in doubt" by its Producer and
// settled before the producer sends anything else (see Producer.Append).
// Idempotency holds for one Producer id at a time; a restarted process that
// reuses an id must continue its sequence (Client.ResumeProducer).
//
// Read-your-writes. A local Replay from a Client waits until the serving
// node holds the highest offset that Client has appended (min_next_offset),
// so a replay after an append sees it even on a lagging follower. Use
// Linearizable to also see other clients' completed appends.
//
// Gap detection. Replay checks that the batches it receives cover the log
// without holes: the first batch covers from, each next batch starts where
// the previous ended, and a batch that claims to be complete holds every
// offset of its span. A violation ends the replay with a *GapError. Every
// batch's CRC is verified (ErrCorruption otherwise). If the serving node
// fails mid-stream the replay resumes on another node after the last
// delivered batch, without gaps or duplicates.
//
// # Errors
//
// Server errors carry a google.rpc.ErrorInfo (domain "tsstore.io") that the
// client maps to the sentinel and typed errors listed in errors.go
// (ErrSequenceGap, *WrongExpectedVersionError, ErrNoLeader, ...); check
// them with errors.Is and errors.As. Other errors keep their gRPC status.
//
// # Example
//
//	c, err := client.New(client.DefaultConfig("10.0.0.1:7000", "10.0.0.2:7000"))
//	if err != nil {
//		return err
//	}
//	defer c.Close()
//
//	p := c.NewProducer("") // random unique id
//	res, err := p.AppendWith(ctx,
//		[]client.Event{{Stream: "run/42", Type: "Started", Payload: body}},
//		client.WithExpectedVersion("run/42", client.NoStream))
//	var wrong *client.WrongExpectedVersionError
//	if errors.As(err, &wrong) {
//		return fmt.Errorf("run/42 already has %d events", wrong.Actual)
//	}
//	if err != nil {
//		return err
//	}
//
//	for ev, err := range c.Replay(ctx, res.FirstOffset) {
//		if err != nil {
//			return err // *client.GapError, ErrCorruption, ...
//		}
//		fmt.Println(ev.Offset, ev.Stream, ev.Type)
//	}
package client

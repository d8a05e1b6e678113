// Package client is the Go SDK for tsstore. It speaks the tsstore.v1 gRPC
// API (package tsstorev1) and decodes replayed events with package record;
// it never imports the server side (server/, fsm/, segment/).
//
// # Guarantees
//
// Ordering. Appends of one Producer are sent one at a time, in call order,
// so their events get increasing offsets in that order. Replay and
// Subscribe yield events in offset order, each exactly once.
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
// Transport. The appends of every Producer and AsyncProducer of a Client
// that go to one node share one AppendStream call to it, opened on first
// use: it saves the per-call cost of a unary Append. It changes nothing
// above: each append is one attempt with the retries and rules above; a
// broken stream fails the appends on it as Unavailable (outcome unknown,
// retried with the same sequence). A node without AppendStream gets unary
// Appends, as do appends over 1 MiB and every append when
// Config.UnaryAppend is set (append_stream.go).
//
// Batching. An AsyncProducer (Client.NewAsyncProducer) is for high event
// rates such as a trainer's: Send queues events and returns at once; they
// are coalesced into append requests and several requests are in flight,
// with the same guarantees (Send order, exactly once, by the producer
// sequence) and acknowledgements in Send order (Pending).
//
// Consistency. Replay and ReadBatches are linearizable by default: the
// serving node first applies everything the cluster had committed when the
// read was issued (the leader's read index), so the read sees every append
// that completed before it, by any client, and is never silently short on
// a lagging or stuck node (that node hands the read to another). Local()
// reads what the answering node has applied instead, which works without a
// leader; such a read still waits until the node holds the highest offset
// this Client has appended (read-your-writes, min_next_offset). A resumed
// read never goes to a node behind what it has already read, and a node
// that refuses with DataLoss (a damaged segment) is replaced by another.
//
// # Reads and subscriptions
//
// Replay (events) and ReadBatches (raw batches) read the stored log from an
// offset and end at its end, or at To. Subscribe reads the same way and
// then follows the log: every selected event is yielded as it commits, with
// no gap or duplicate at the switch from history to live, and the
// iteration never ends by itself. A consumer that is slow holds the server
// back through gRPC flow control; one that falls further behind the live
// log than the server allows is cut off (SLOW_CONSUMER) and resumed
// transparently (counted in Client.Stats, reported to OnResume).
//
// Selection. A read starts at its from offset, or with FromTime at the
// first event committed at or after a time, or with Stream and FromVersion
// at a 1-based stream version (from is then 0). Filters narrow what is
// delivered: Stream (one stream, served from the server's per-stream
// index), StreamPrefix, and EventTypes (any of). A Replay of a stream with
// no events fails with ErrStreamNotFound; a Subscribe waits for it.
//
// Filtered reads receive "thinned" batches: a batch keeps its span (base
// offset to last offset) but holds only the matching records, and batches
// without a match are not sent, so there are gaps between batches. Instead
// of batch chaining the protocol guarantees that each response message
// covers the offsets [start, next_offset) completely, where start is the
// read's position before the message: every matching record in that range
// is in the message, and every batch lies inside it (only the first batch
// after a (re)start may begin before start). A message may hold no batch
// at all (a heartbeat, or a range without a match) and still advances or
// repeats next_offset; next_offset == log_next_offset means the read has
// caught up with the serving node (Progress.CaughtUp).
//
// Resume tokens. A read's token is the offset after the last batch span or
// message it covered: everything selected below it has been delivered.
// OnProgress reports it after every message, heartbeats included; the
// offset after the last delivered event is also a valid (if older) token.
// When the serving node fails (Unavailable, connection reset, node killed)
// or cuts a subscriber off, the read resumes on another node with
// from_offset = token and the same filters (a stream read sends Stream and
// the token, not FromVersion; FromTime is dropped too), and with
// min_next_offset at least the token, so a lagging node never serves a
// shorter log than one already read. To restart a read later, pass the
// token as from with the same filters. Config.MaxRetries bounds the
// consecutive failures without progress before the error is returned.
//
// Gap detection. Every batch's CRC is verified (ErrCorruption otherwise),
// and the client checks that what it receives leaves no hole:
//
//   - Every read: next_offset never goes backwards, and every batch lies
//     inside the range its message covers, after the batches before it
//     (ErrProtocol otherwise: a duplicate or reordering).
//   - Unfiltered reads: batches chain without holes: the first one after
//     a (re)start covers the position, each next one starts where the
//     previous ended, next_offset is where the last one ends, and a batch
//     that claims to be complete holds every offset of its span. A
//     violation is a *GapError naming the missing offsets.
//   - Filtered reads: every record matches the filters (ErrProtocol
//     otherwise). Offsets between batches are expected; a hole a server
//     leaves between messages cannot be seen, except that:
//   - Single-stream reads (Stream without EventTypes): StreamVersion grows
//     by exactly 1 from event to event, across messages and resumes,
//     starting at FromVersion if given. A jump is a *StreamGapError naming
//     the missing versions; a repeated or lower version is ErrProtocol.
//     With EventTypes, versions only have to increase.
//
// Gaps match ErrGap; the read stops at the gap, after yielding every event
// before it, and is not retried.
//
// # Errors
//
// Server errors carry a google.rpc.ErrorInfo (domain "tsstore.io") that the
// client maps to the sentinel and typed errors listed in errors.go
// (ErrSequenceGap, *WrongExpectedVersionError, ErrNoLeader, ...); check
// them with errors.Is and errors.As. Other errors keep their gRPC status.
//
// # TLS and tokens
//
// A cluster with security on (docs/operations.md#security) needs
// Config.TLS, from LoadTLS(caFile, certFile, keyFile, serverName), and a
// Config.Token whose role covers the calls: read for reads, append for
// appends. Refusals are not retried: codes.Unauthenticated (no token, or
// one the cluster does not know) and codes.PermissionDenied (the token's
// role is too low; the message names the role needed). A token is never
// sent over plaintext unless InsecureToken is set.
//
// # Example
//
// The addresses are nodes' API addresses (serve's --api-addr); here the
// API ports of `tsstore dev` (7201-7203; 7101-7103 are its Raft ports).
// More in the package's examples (example_test.go, shown by `go doc -http`
// and pkg.go.dev).
//
//	c, err := client.New(client.DefaultConfig("127.0.0.1:7201", "127.0.0.1:7202", "127.0.0.1:7203"))
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
//
//	// Every event of run/42 from version 1, then live ones, forever.
//	for ev, err := range c.Subscribe(ctx, 0, client.Stream("run/42"), client.FromVersion(1)) {
//		if err != nil {
//			return err // *client.StreamGapError, context.Canceled, ...
//		}
//		fmt.Println(ev.StreamVersion, ev.Type)
//	}
package client

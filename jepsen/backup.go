package jepsen

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/tsstore/tsstore/client"
	pb "github.com/tsstore/tsstore/proto/tsstorev1"
)

// backupStep takes a backup through the SDK's Cluster client, during a
// membership change, and records it as a linearizable read of [0, the
// backup's next offset): every append acknowledged before the backup
// started must be in it (checker 7), at the offset and with the value of
// the final log (checker 5). A backup that fails is not a violation (a
// node may refuse while it catches up); one that completes must hold
// every acknowledged append.
func (n *nemesis) backupStep(ctx context.Context, cl *client.Client, s *steps) {
	s.do("backup", func() (string, error) {
		invoke := n.rec.now()
		var info *pb.BackupInfo
		var data bytes.Buffer
		err := cl.Cluster(ctx, func(ctx context.Context, cc pb.ClusterClient) error {
			info = nil
			data.Reset()
			stream, err := cc.Backup(ctx, &pb.BackupRequest{})
			if err != nil {
				return err
			}
			for {
				c, err := stream.Recv()
				if errors.Is(err, io.EOF) {
					return nil
				}
				if err != nil {
					return err
				}
				if c.Info != nil {
					info = c.Info
				}
				data.Write(c.Data)
			}
		})
		complete := n.rec.now()
		if err != nil {
			return "", err
		}
		values, err := backupValues(data.Bytes(), info.GetNextOffset())
		if err != nil {
			return "", fmt.Errorf("the backup does not decode: %w", err)
		}
		n.rec.read(ReadOp{Process: "backup", From: 0, Linearizable: true, Invoke: invoke, Complete: complete,
			Outcome: OK, Values: values, Count: len(values)})
		return fmt.Sprintf("cut at raft index %d from %s: offsets [0, %d), %d bytes", info.GetRaftIndex(), info.GetNodeId(), info.GetNextOffset(), data.Len()), nil
	})
}

// backupValues decodes the events of a snapshot stream (fsm's frozen
// layout: an 8-byte magic, the header's length and CRC, the header, then
// the segments' batches back to back) up to next.
func backupValues(stream []byte, next uint64) ([]string, error) {
	if len(stream) < 16 {
		return nil, fmt.Errorf("%d bytes: no snapshot header", len(stream))
	}
	body := 16 + uint64(binary.BigEndian.Uint32(stream[8:12]))
	if body > uint64(len(stream)) {
		return nil, fmt.Errorf("header of %d bytes in a %d-byte stream", body-16, len(stream))
	}
	rep := Replica{}
	if err := decodeInto(&rep, stream[body:], next); err != nil {
		return nil, err
	}
	if uint64(len(rep.Values)) != next || len(rep.Gaps) > 0 {
		return nil, fmt.Errorf("%d values (gaps at %v), the backup says %d", len(rep.Values), rep.Gaps, next)
	}
	return rep.Values, nil
}

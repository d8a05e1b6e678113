package main

import (
	"encoding/json"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/tsstore/tsstore/cdc/pgsource"
)

// newCDCReadCmd prints the connector's events decoded: `tsstore read`
// shows their msgpack payloads only as bytes.
func newCDCReadCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "read [--prefix P | --stream S] [--from N] [--to N]",
		Short: "print captured changes decoded, one JSON object per event",
		Long: "cdc read replays the events `tsstore cdc postgres` wrote (default: every stream under cdc/) and prints each\n" +
			"as one JSON object: offset, stream, type, metadata and the decoded payload (row change, schema or marker).",
		Args: noArgs,
	}
	var c clientFlags
	var sel selectFlags
	fs := cmd.Flags()
	c.registerTimeout(fs, 0)
	sel.register(fs, true)
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		stdout, _ := stdio(cmd)
		if sel.stream == "" && sel.prefix == "" {
			sel.prefix = "cdc/"
		}
		opts, err := sel.options()
		if err != nil {
			return err
		}
		cl, ctx, cancel, err := c.connect()
		if err != nil {
			return err
		}
		defer cancel()
		defer cl.Close()
		enc := json.NewEncoder(stdout)
		for ev, err := range cl.Replay(ctx, sel.from, opts...) {
			if err != nil {
				return err
			}
			var payload any
			switch ev.Type {
			case pgsource.TypeTransaction, pgsource.TypeSlotCreated, pgsource.TypeSnapshotChunk, pgsource.TypeSnapshotCompleted:
				m, err := pgsource.DecodeMarker(ev.Payload)
				if err != nil {
					return fmt.Errorf("offset %d: %w", ev.Offset, err)
				}
				payload = m.View()
			case pgsource.TypeSchema:
				payload, err = pgsource.DecodeSchema(ev.Payload)
			default:
				payload, err = pgsource.DecodeChange(ev.Payload)
			}
			if err != nil {
				return fmt.Errorf("offset %d (%s): %w", ev.Offset, ev.Type, err)
			}
			out := map[string]any{"offset": ev.Offset, "stream": ev.Stream, "type": ev.Type, "payload": payload}
			if json.Valid(ev.Metadata) {
				out["metadata"] = json.RawMessage(ev.Metadata)
			}
			if err := enc.Encode(out); err != nil {
				return err
			}
		}
		return nil
	}
	return cmd
}

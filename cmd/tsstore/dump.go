package main

import (
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"

	"github.com/tsstore/tsstore/segment"
	"github.com/tsstore/tsstore/server"
)

func newDumpCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "dump FILE",
		Short: "print the batches of a segment file (exit 1 if it is damaged)",
		Long:  "dump prints a segment's .log, .streams or .tiered file, an index bundle (.idx, an object copied out of the tier target), or a raft/wal/*.wal file, and exits 1 if it found damage.",
		Args:  exactArgs("FILE"),
	}
	asJSON := cmd.Flags().Bool("json", false, "print JSON instead of text (.log files)")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		return runDump(args[0], *asJSON, cmd.OutOrStdout())
	}
	return cmd
}

func runDump(path string, asJSON bool, stdout io.Writer) error {
	if strings.HasSuffix(path, ".wal") {
		d, err := server.DumpRaftLogFile(path)
		if err != nil {
			return err
		}
		if asJSON {
			err = d.WriteJSON(stdout)
		} else {
			d.WriteText(stdout)
		}
		if err == nil && !d.OK() {
			err = fmt.Errorf("%w in %s", errCorrupt, path)
		}
		return err
	}
	notLog := strings.HasSuffix(path, segment.StreamsSuffix) || strings.HasSuffix(path, segment.TieredSuffix) ||
		strings.HasSuffix(path, segment.IndexBundleSuffix)
	if asJSON && notLog {
		return fmt.Errorf("%w: --json dumps .log files; dump a .streams, .tiered or .idx file as text", errUsage)
	}
	var err error
	if asJSON {
		err = segment.DumpJSON(path, stdout)
	} else {
		err = segment.Dump(path, stdout)
	}
	if errors.Is(err, segment.ErrCorrupt) && strings.HasSuffix(path, segment.IndexBundleSuffix) {
		return fmt.Errorf("%w: %v", errCorrupt, err) // printed; exit 1
	}
	if err != nil || notLog {
		return err
	}
	// A damaged .log (bad CRC, a gap, an unreadable tail) exits 1 after
	// it was printed, as verify does.
	d, err := segment.DumpLog(path)
	if err != nil {
		return err
	}
	if d.Problems > 0 {
		return fmt.Errorf("%w in %s: %d problem(s)", errCorrupt, path, d.Problems)
	}
	return nil
}

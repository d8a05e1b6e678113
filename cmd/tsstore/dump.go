package main

import (
	"fmt"
	"io"
	"strings"

	"github.com/tsstore/tsstore/segment"
	"github.com/tsstore/tsstore/server"
)

func runDump(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("dump", stderr, "dump [--json] FILE (a segment's .log or .streams file, or a raft/wal/*.wal file)")
	asJSON := fs.Bool("json", false, "print JSON instead of text (.log files)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return fmt.Errorf("%w: one segment file is required", errUsage)
	}
	path := fs.Arg(0)
	if strings.HasSuffix(path, ".wal") {
		d, err := server.DumpRaftLogFile(path)
		if err != nil {
			return err
		}
		if *asJSON {
			err = d.WriteJSON(stdout)
		} else {
			d.WriteText(stdout)
		}
		if err == nil && !d.OK() {
			err = fmt.Errorf("%w in %s", errCorrupt, path)
		}
		return err
	}
	if *asJSON && strings.HasSuffix(path, segment.StreamsSuffix) {
		return fmt.Errorf("%w: --json dumps .log files; dump a .streams file as text", errUsage)
	}
	if *asJSON {
		return segment.DumpJSON(path, stdout)
	}
	return segment.Dump(path, stdout)
}

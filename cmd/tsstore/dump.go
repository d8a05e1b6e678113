package main

import (
	"fmt"
	"io"
	"strings"

	"github.com/tsstore/tsstore/segment"
)

func runDump(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("dump", stderr, "dump [--json] FILE (a segment's .log or .streams file)")
	asJSON := fs.Bool("json", false, "print JSON instead of text (.log files)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return fmt.Errorf("%w: one segment file is required", errUsage)
	}
	path := fs.Arg(0)
	if *asJSON && strings.HasSuffix(path, segment.StreamsSuffix) {
		return fmt.Errorf("%w: --json dumps .log files; dump a .streams file as text", errUsage)
	}
	if *asJSON {
		return segment.DumpJSON(path, stdout)
	}
	return segment.Dump(path, stdout)
}

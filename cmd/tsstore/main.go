// Command tsstore runs a tsstore node and operates a cluster.
//
//	tsstore serve   run one node (flags, TSSTORE_* environment, config file)
//	tsstore dev     a local three-node cluster plus a demo trainer
//	tsstore append  append events
//	tsstore read    replay events from an offset
//	tsstore status  a node's view of the cluster
//	tsstore members list, add, promote and remove cluster members
//	tsstore leader  hand leadership to another voter
//	tsstore streams list streams
//	tsstore tail    follow events as they commit
//	tsstore runs    list training runs
//	tsstore run     start, show, time-travel and verify one training run
//	tsstore snapshot, backup, restore, verify, repair, dump: data operations
//	tsstore version, completion bash|zsh|fish, help CMD
//
// The command tree is github.com/spf13/cobra's (root.go): flags go before or
// after positional arguments, `help CMD` and `CMD --help` print to stdout,
// a mistyped command gets suggestions, and shells get completion.
package main

import (
	"errors"
	"os"
)

// errUsage marks errors whose message already explains the usage problem.
var errUsage = errors.New("usage")

// exitPermanent is serve's exit status when restarting cannot help: the
// data directory belongs to another cluster or node, this node was
// removed from the cluster, or its data is damaged or lost beyond what a
// start repairs (docs/operations.md, Damaged FSM files) (EX_CONFIG from
// sysexits.h). The systemd unit
// lists it in RestartPreventExitStatus, so a removed node does not loop.
const exitPermanent = 78

// exitError carries a specific exit status.
type exitError struct {
	code int
	err  error
}

func (e exitError) Error() string { return e.err.Error() }
func (e exitError) Unwrap() error { return e.err }

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

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
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
)

type command struct {
	summary string
	run     func(args []string, stdout, stderr io.Writer) error
}

var commands = map[string]command{
	"serve":   {"run one tsstore node", runServe},
	"dev":     {"run a local three-node cluster and a demo trainer", runDev},
	"append":  {"append events to the store", runAppend},
	"bench":   {"benchmark appends, replay, failover and disk use (docs/benchmarks.md)", runBench},
	"read":    {"replay events from an offset", runRead},
	"members": {"list, add, promote and remove cluster members", runMembers},
	"leader":  {"hand leadership to another voter (leader transfer)", runLeader},
	"status":  {"show a node's view of the cluster", runStatus},
	"streams": {"list streams with their versions", runStreams},
	"tail":    {"follow events live as they commit", runTail},
	// Training runs (runs.go, run.go, run_verify.go).
	"runs": {"list training runs with a summary of their state", runRuns},
	"run":  {"start, show, time-travel, list checkpoints of and verify a training run", runRun},
	// Data operations (backup.go, restore.go, snapshot.go, verify.go, repair.go, dump.go).
	"snapshot": {"force a Raft snapshot on a node", runSnapshot},
	"backup":   {"write a consistent backup of the store to a file", runBackup},
	"restore":  {"seed one node of a new cluster from a backup (offline)", runRestore},
	"verify":   {"scrub a stopped node's data directory", runVerify},
	"repair":   {"check a node's sealed segments and repair damaged ones from a peer", runRepair},
	"dump":     {"print the batches of a segment file", runDump},
}

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

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		usage(stderr)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	cmd, ok := commands[args[0]]
	if !ok {
		fmt.Fprintf(stderr, "tsstore: unknown command %q\n\n", args[0])
		usage(stderr)
		return 2
	}
	if err := cmd.run(args[1:], stdout, stderr); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		fmt.Fprintf(stderr, "tsstore %s: %v\n", args[0], err)
		if hint := securityHint(err); hint != "" {
			fmt.Fprintf(stderr, "hint: %s\n", hint)
		}
		if errors.Is(err, errUsage) {
			return 2
		}
		var ee exitError
		if errors.As(err, &ee) {
			return ee.code
		}
		return 1
	}
	return 0
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "usage: tsstore <command> [flags]\n\ncommands:")
	names := make([]string, 0, len(commands))
	for name := range commands {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		fmt.Fprintf(w, "  %-8s %s\n", name, commands[name].summary)
	}
	fmt.Fprintln(w, "\nRun 'tsstore <command> -h' for a command's flags.")
}

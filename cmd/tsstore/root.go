package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"

	"github.com/spf13/cobra"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/status"

	"github.com/tsstore/tsstore/internal/version"
)

// newRootCmd builds the command tree. Every subcommand lives in its own
// file and has a newXCmd constructor.
func newRootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:   "tsstore",
		Short: "tsstore: a Raft-replicated event store",
		Long: "tsstore runs a node of a Raft-replicated event store and operates a cluster.\n\n" +
			"Client commands dial --addr, else TSSTORE_ADDR (a comma list), else the ports of `tsstore dev`.",
		Version:       version.String(),
		SilenceErrors: true,
		SilenceUsage:  true,
		// Without a subcommand: a usage error, exit 2. Args stays nil so
		// that an unknown command is an error with suggestions.
		RunE: func(cmd *cobra.Command, args []string) error {
			return fmt.Errorf("%w: a command is required (see 'tsstore --help')", errUsage)
		},
	}
	root.SetVersionTemplate("tsstore {{.Version}}\n")
	root.SetFlagErrorFunc(func(cmd *cobra.Command, err error) error {
		return fmt.Errorf("%w: %v (see 'tsstore %s --help')", errUsage, err, strings.TrimPrefix(cmd.CommandPath(), "tsstore "))
	})
	root.AddCommand(
		newServeCmd(), newDevCmd(), newAppendCmd(), newBenchCmd(), newReadCmd(), newMembersCmd(),
		newLeaderCmd(), newStatusCmd(), newStreamsCmd(), newTailCmd(), newRunsCmd(), newRunCmd(),
		newSnapshotCmd(), newBackupCmd(), newRestoreCmd(), newVerifyCmd(), newRepairCmd(), newDumpCmd(),
		newRetentionCmd(), newCompactCmd(), newTierCmd(),
		newVersionCmd(), newCDCCmd(), newSinkCmd(),
	)
	return root
}

// run executes one command line and returns the exit status: 0, 1 for a
// failure, 2 for a usage error, or an exitError's code.
func run(args []string, stdout, stderr io.Writer) int {
	root := newRootCmd()
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	cmd, err := root.ExecuteC()
	if err == nil {
		return 0
	}
	if isCobraUsageError(err) {
		err = fmt.Errorf("%w: %s", errUsage, strings.TrimSpace(err.Error()))
	}
	code := 1
	var ee exitError
	switch {
	case errors.Is(err, errUsage) && cmd != nil && daemonCommand(cmd):
		// A daemon's bad flags and arguments are configuration errors: 78
		// (EX_CONFIG), which systemd does not restart on (serve.go).
		code = exitPermanent
	case errors.Is(err, errUsage):
		code = 2
	case errors.As(err, &ee):
		code = ee.code
	}
	if cmd == nil {
		cmd = root
	}
	if jsonSet(cmd, args) {
		writeJSONError(stderr, err)
		return code
	}
	name := cmd.CommandPath()
	fmt.Fprintf(stderr, "%s: %s\n", name, strings.TrimPrefix(err.Error(), errUsage.Error()+": "))
	if hint := securityHint(err); hint != "" {
		fmt.Fprintf(stderr, "hint: %s\n", hint)
	}
	return code
}

// daemonCommand reports whether cmd is a long-running service that runs
// under systemd: serve, cdc postgres, sink postgres.
func daemonCommand(cmd *cobra.Command) bool {
	switch cmd.CommandPath() {
	case "tsstore serve", "tsstore cdc postgres", "tsstore sink postgres":
		return true
	}
	return false
}

// isCobraUsageError recognises the usage errors cobra makes itself, which
// are plain errors: an unknown command, a required flag missing, a flag
// group broken (MarkFlagsMutuallyExclusive, MarkFlagsOneRequired).
func isCobraUsageError(err error) bool {
	if errors.Is(err, errUsage) {
		return false
	}
	msg := err.Error()
	for _, p := range []string{"unknown command ", "unknown flag", "required flag(s) ", "if any flags in the group ", "at least one of the flags in the group "} {
		if strings.HasPrefix(msg, p) {
			return true
		}
	}
	return false
}

// jsonSet reports whether the command ran with its boolean --json flag
// on, or was given it in args (a flag error may stop parsing before it).
func jsonSet(cmd *cobra.Command, args []string) bool {
	f := cmd.Flags().Lookup("json")
	if f == nil || f.Value.Type() != "bool" {
		return false
	}
	return f.Value.String() == "true" || slices.Contains(args, "--json") || slices.Contains(args, "--json=true")
}

// errorJSON is the one object a command run with --json writes to stderr
// when it fails (docs/operations.md, JSON output).
type errorJSON struct {
	// Code is the gRPC code's name for an error from a server ("NotFound",
	// "Unavailable"), else "InvalidArgument" for a usage error,
	// "DataLoss" for corruption found, "Unknown" for anything else.
	Code string `json:"code"`
	// Reason is tsstore's ErrorInfo reason from a server (e.g.
	// "ERROR_REASON_FENCED"), else USAGE, CORRUPTION, UNREACHABLE or "".
	Reason  string `json:"reason"`
	Message string `json:"message"`
	Hint    string `json:"hint,omitempty"`
}

func toErrorJSON(err error) errorJSON {
	e := errorJSON{Code: "Unknown", Message: strings.TrimPrefix(err.Error(), errUsage.Error()+": "), Hint: securityHint(err)}
	var un *unreachableError
	switch st, ok := status.FromError(err); {
	case errors.Is(err, errUsage):
		e.Code, e.Reason = "InvalidArgument", "USAGE"
	case errors.Is(err, errCorrupt):
		e.Code, e.Reason = "DataLoss", "CORRUPTION"
	case errors.As(err, &un):
		e.Code, e.Reason = "Unavailable", "UNREACHABLE"
	case ok:
		e.Code = st.Code().String()
		for _, d := range st.Details() {
			if ei, ok := d.(*errdetails.ErrorInfo); ok {
				e.Reason = ei.GetReason()
			}
		}
	}
	return e
}

func writeJSONError(w io.Writer, err error) {
	json.NewEncoder(w).Encode(toErrorJSON(err))
}

// Argument checks: a wrong count is a usage error (exit 2).

func noArgs(cmd *cobra.Command, args []string) error {
	if len(args) > 0 {
		return fmt.Errorf("%w: unexpected arguments %q (%s takes none)", errUsage, args, cmd.Name())
	}
	return nil
}

// exactArgs wants the named positional arguments, no more and no fewer.
func exactArgs(names ...string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) != len(names) {
			return fmt.Errorf("%w: want %s, got %d argument(s) %q", errUsage, strings.Join(names, " "), len(args), args)
		}
		return nil
	}
}

// stdio is a command's output and error streams.
func stdio(cmd *cobra.Command) (io.Writer, io.Writer) { return cmd.OutOrStdout(), cmd.ErrOrStderr() }

// groupCmd is a command that only holds subcommands: without one it is a
// usage error, and an unknown one gets suggestions.
func groupCmd(use, short string) *cobra.Command {
	return &cobra.Command{Use: use, Short: short, RunE: func(cmd *cobra.Command, args []string) error {
		if len(args) > 0 {
			return unknownSubcommand(cmd, args[0])
		}
		return fmt.Errorf("%w: %s needs a subcommand (see 'tsstore %s --help')", errUsage, cmd.Name(), cmd.Name())
	}}
}

func unknownSubcommand(cmd *cobra.Command, name string) error {
	if cmd.SuggestionsMinimumDistance <= 0 {
		cmd.SuggestionsMinimumDistance = 2 // cobra's default for the root
	}
	hint := ""
	if s := cmd.SuggestionsFor(name); len(s) > 0 {
		hint = "; did you mean " + strings.Join(s, ", ") + "?"
	}
	return fmt.Errorf("%w: unknown command %q for %q%s", errUsage, name, cmd.CommandPath(), hint)
}

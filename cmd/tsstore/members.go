package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"strconv"
	"text/tabwriter"

	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	pb "github.com/tsstore/tsstore/proto/tsstorev1"
)

const membersUsage = `members [--addr host:port] [--json]             list members with their progress
       tsstore members add <id> <raft-addr> [--voter]  add a node (a non-voter unless --voter)
       tsstore members promote <id> [--max-lag N]      make a caught-up non-voter a voter
       tsstore members remove <id>                     remove a node for good`

func runMembers(args []string, stdout, stderr io.Writer) error {
	sub := ""
	if len(args) > 0 {
		switch args[0] {
		case "add", "promote", "remove":
			sub, args = args[0], args[1:]
		}
	}
	var cf clientFlags
	fs := newFlagSet("members", stderr, membersUsage)
	cf.register(fs)
	voter := fs.Bool("voter", false, "members add: add as a voter right away instead of a non-voter")
	maxLag := fs.Uint64("max-lag", 0, "members promote: most entries the node may be behind the leader's commit index (0: server default, 1024)")
	pos, err := parseInterleaved(fs, args)
	if err != nil {
		return err
	}
	want := map[string]int{"": 0, "add": 2, "promote": 1, "remove": 1}[sub]
	if len(pos) != want {
		fs.Usage()
		return fmt.Errorf("%w: members %s takes %d arguments, got %d", errUsage, sub, want, len(pos))
	}
	cl, ctx, cancel, err := cf.connect()
	if err != nil {
		return err
	}
	defer cancel()
	defer cl.Close()
	var resp proto.Message
	err = cl.Cluster(ctx, func(ctx context.Context, c pb.ClusterClient) error {
		var err error
		switch sub {
		case "":
			resp, err = c.Members(ctx, &pb.MembersRequest{})
		case "add":
			resp, err = c.AddMember(ctx, &pb.AddMemberRequest{NodeId: pos[0], RaftAddress: pos[1], Voter: *voter})
		case "promote":
			resp, err = c.PromoteMember(ctx, &pb.PromoteMemberRequest{NodeId: pos[0], MaxLag: *maxLag})
		case "remove":
			resp, err = c.RemoveMember(ctx, &pb.RemoveMemberRequest{NodeId: pos[0]})
		}
		return err
	})
	if err != nil {
		return statusError(err)
	}
	if cf.json {
		return printJSON(stdout, resp)
	}
	switch r := resp.(type) {
	case *pb.MembersResponse:
		return printMembers(stdout, r)
	case *pb.AddMemberResponse:
		role := "non-voter"
		if *voter {
			role = "voter"
		}
		fmt.Fprintf(stdout, "added %s (raft %s) as a %s at raft index %d\n", pos[0], pos[1], role, r.Index)
	case *pb.PromoteMemberResponse:
		fmt.Fprintf(stdout, "promoted %s to voter at raft index %d\n", pos[0], r.Index)
	case *pb.RemoveMemberResponse:
		fmt.Fprintf(stdout, "removed %s at raft index %d; its data directory can never rejoin\n", pos[0], r.Index)
	}
	return nil
}

func printMembers(w io.Writer, r *pb.MembersResponse) error {
	fmt.Fprintf(w, "leader %s, commit index %d\n\n", r.LeaderId, r.CommitIndex)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tSUFFRAGE\tLEADER\tRAFT\tAPI\tLAST CONTACT\tAPPLIED\tLAG\tERROR")
	for _, m := range r.Members {
		lead, contact, applied, lag := "", "-", "-", "-"
		if m.Leader {
			lead = "*"
		}
		if m.LastContactMs >= 0 {
			contact = strconv.FormatInt(m.LastContactMs, 10) + "ms"
		}
		if m.Error == "" {
			applied, lag = strconv.FormatUint(m.AppliedIndex, 10), strconv.FormatUint(m.Lag, 10)
		}
		api := m.ApiAddress
		if api == "" {
			api = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", m.Id, m.Suffrage, lead, m.RaftAddress, api, contact, applied, lag, m.Error)
	}
	return tw.Flush()
}

// parseInterleaved parses flags that may come before, between or after
// the positional arguments, and returns the positional ones.
func parseInterleaved(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		if fs.NArg() == 0 {
			return pos, nil
		}
		pos = append(pos, fs.Arg(0))
		args = fs.Args()[1:]
	}
}

// statusError turns a gRPC error into its code and message.
func statusError(err error) error {
	if st, ok := status.FromError(err); ok {
		return fmt.Errorf("%s: %s", st.Code(), st.Message())
	}
	return err
}

// printJSON prints a response message as indented JSON with the .proto
// field names (snake_case, like every other --json output of the CLI);
// 64-bit integers are strings, as protojson writes them.
func printJSON(w io.Writer, m proto.Message) error {
	b, err := protojson.MarshalOptions{EmitUnpopulated: true, UseProtoNames: true}.Marshal(m)
	if err != nil {
		return err
	}
	var v any
	if err := json.Unmarshal(b, &v); err != nil {
		return err
	}
	out, _ := json.MarshalIndent(v, "", "  ")
	_, err = fmt.Fprintln(w, string(out))
	return err
}

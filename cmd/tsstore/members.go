package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"text/tabwriter"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	pb "github.com/tsstore/tsstore/proto/tsstorev1"
)

func newMembersCmd() *cobra.Command {
	var cf clientFlags
	cmd := &cobra.Command{Use: "members", Short: "list, add, promote and remove cluster members",
		Long: "members lists the cluster's members with their progress; its subcommands change the membership."}
	cf.register(cmd.Flags())
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		if len(args) > 0 {
			return unknownSubcommand(cmd, args[0])
		}
		return membersCall(cmd, &cf, func(ctx context.Context, c pb.ClusterClient) (proto.Message, error) {
			return c.Members(ctx, &pb.MembersRequest{})
		}, func(w io.Writer, resp proto.Message) error { return printMembers(w, resp.(*pb.MembersResponse)) })
	}

	var addCF clientFlags
	add := &cobra.Command{Use: "add ID RAFT-ADDR [--voter]", Short: "add a node (a non-voter unless --voter)", Args: exactArgs("ID", "RAFT-ADDR")}
	addCF.register(add.Flags())
	voter := add.Flags().Bool("voter", false, "add as a voter right away instead of a non-voter")
	add.RunE = func(cmd *cobra.Command, pos []string) error {
		return membersCall(cmd, &addCF, func(ctx context.Context, c pb.ClusterClient) (proto.Message, error) {
			return c.AddMember(ctx, &pb.AddMemberRequest{NodeId: pos[0], RaftAddress: pos[1], Voter: *voter})
		}, func(w io.Writer, resp proto.Message) error {
			role := "non-voter"
			if *voter {
				role = "voter"
			}
			_, err := fmt.Fprintf(w, "added %s (raft %s) as a %s at raft index %d\n", pos[0], pos[1], role, resp.(*pb.AddMemberResponse).Index)
			return err
		})
	}

	var promoteCF clientFlags
	promote := &cobra.Command{Use: "promote ID [--max-lag N]", Short: "make a caught-up non-voter a voter", Args: exactArgs("ID")}
	promoteCF.register(promote.Flags())
	maxLag := promote.Flags().Uint64("max-lag", 0, "most entries the node may be behind the leader's commit index (0: server default, 1024)")
	promote.RunE = func(cmd *cobra.Command, pos []string) error {
		return membersCall(cmd, &promoteCF, func(ctx context.Context, c pb.ClusterClient) (proto.Message, error) {
			return c.PromoteMember(ctx, &pb.PromoteMemberRequest{NodeId: pos[0], MaxLag: *maxLag})
		}, func(w io.Writer, resp proto.Message) error {
			_, err := fmt.Fprintf(w, "promoted %s to voter at raft index %d\n", pos[0], resp.(*pb.PromoteMemberResponse).Index)
			return err
		})
	}

	var removeCF clientFlags
	remove := &cobra.Command{Use: "remove ID", Short: "remove a node for good", Args: exactArgs("ID")}
	removeCF.register(remove.Flags())
	remove.RunE = func(cmd *cobra.Command, pos []string) error {
		return membersCall(cmd, &removeCF, func(ctx context.Context, c pb.ClusterClient) (proto.Message, error) {
			return c.RemoveMember(ctx, &pb.RemoveMemberRequest{NodeId: pos[0]})
		}, func(w io.Writer, resp proto.Message) error {
			_, err := fmt.Fprintf(w, "removed %s at raft index %d; its data directory can never rejoin\n", pos[0], resp.(*pb.RemoveMemberResponse).Index)
			return err
		})
	}
	cmd.AddCommand(add, promote, remove)
	return cmd
}

// membersCall makes one Cluster call and prints its answer as JSON or
// with text.
func membersCall(cmd *cobra.Command, cf *clientFlags, call func(context.Context, pb.ClusterClient) (proto.Message, error),
	text func(io.Writer, proto.Message) error) error {
	cl, ctx, cancel, err := cf.connect()
	if err != nil {
		return err
	}
	defer cancel()
	defer cl.Close()
	var resp proto.Message
	err = cl.Cluster(ctx, func(ctx context.Context, c pb.ClusterClient) error {
		var err error
		resp, err = call(ctx, c)
		return err
	})
	if err != nil {
		return statusError(err)
	}
	if cf.json {
		return printJSON(cmd.OutOrStdout(), resp)
	}
	return text(cmd.OutOrStdout(), resp)
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

// statusError turns a gRPC error into its code and message; the status
// stays reachable through Unwrap (for --json's error object).
func statusError(err error) error {
	if st, ok := status.FromError(err); ok {
		return &codedError{msg: fmt.Sprintf("%s: %s", st.Code(), st.Message()), err: err}
	}
	return err
}

type codedError struct {
	msg string
	err error
}

func (e *codedError) Error() string { return e.msg }
func (e *codedError) Unwrap() error { return e.err }

// printJSON prints a response message as indented JSON with the .proto
// field names (snake_case, like every other --json output of the CLI),
// every field present, and 64-bit integers as numbers (protojson would
// write them as strings; see docs/operations.md, JSON output).
func printJSON(w io.Writer, m proto.Message) error {
	out, err := json.MarshalIndent(protoMap(m.ProtoReflect()), "", "  ")
	if err != nil {
		return err
	}
	_, err = fmt.Fprintln(w, string(out))
	return err
}

// protoMap is m as a JSON object keyed by the .proto field names.
func protoMap(m protoreflect.Message) map[string]any {
	out := map[string]any{}
	fields := m.Descriptor().Fields()
	for i := 0; i < fields.Len(); i++ {
		fd := fields.Get(i)
		v := m.Get(fd)
		switch {
		case fd.IsList():
			l := v.List()
			items := make([]any, l.Len())
			for j := range items {
				items[j] = protoScalar(fd, l.Get(j))
			}
			out[string(fd.Name())] = items
		case fd.IsMap():
			mm := map[string]any{}
			v.Map().Range(func(k protoreflect.MapKey, mv protoreflect.Value) bool {
				mm[k.String()] = protoScalar(fd.MapValue(), mv)
				return true
			})
			out[string(fd.Name())] = mm
		case fd.Kind() == protoreflect.MessageKind && !m.Has(fd):
			out[string(fd.Name())] = nil
		default:
			out[string(fd.Name())] = protoScalar(fd, v)
		}
	}
	return out
}

func protoScalar(fd protoreflect.FieldDescriptor, v protoreflect.Value) any {
	switch fd.Kind() {
	case protoreflect.MessageKind, protoreflect.GroupKind:
		return protoMap(v.Message())
	case protoreflect.EnumKind:
		if ev := fd.Enum().Values().ByNumber(v.Enum()); ev != nil {
			return string(ev.Name())
		}
		return int32(v.Enum())
	}
	return v.Interface() // bool, string, []byte (base64), and numbers as numbers
}

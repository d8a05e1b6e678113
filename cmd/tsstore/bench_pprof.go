package main

import (
	"fmt"
	"net"
	"net/http"
	_ "net/http/pprof" // registers /debug/pprof on http.DefaultServeMux
	"os"
	"regexp"
)

// pprofEnv, when set for any tsstore process, serves net/http/pprof on
// that host:port (port 0 picks one), for profiling a node under load:
//
//	TSSTORE_PPROF_ADDR=127.0.0.1:6060 tsstore serve ...
//	go tool pprof http://127.0.0.1:6060/debug/pprof/profile?seconds=10
//
// The address is logged to stderr as `pprof listening on ADDR`; `tsstore
// bench --profile` finds each node's endpoint that way. It is off unless
// set: the endpoint is unauthenticated and meant for loopback.
const pprofEnv = "TSSTORE_PPROF_ADDR"

func init() {
	addr := os.Getenv(pprofEnv)
	if addr == "" {
		return
	}
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		fmt.Fprintf(os.Stderr, "pprof: %v\n", err)
		return
	}
	fmt.Fprintf(os.Stderr, "pprof listening on %s\n", lis.Addr())
	// Lives as long as the process; nothing to shut down.
	go http.Serve(lis, http.DefaultServeMux)
}

var pprofLine = regexp.MustCompile(`pprof listening on (\S+)`)

// pprofAddr finds the pprof address in a node's log.
func pprofAddr(log string) string {
	m := pprofLine.FindAllStringSubmatch(log, -1)
	if len(m) == 0 {
		return ""
	}
	return m[len(m)-1][1] // the latest start of the node
}

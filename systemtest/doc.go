// Package systemtest runs tsstore as users do: the real binary, three
// processes on loopback, killed with real signals, checked through the
// public API. It holds no production code.
package systemtest

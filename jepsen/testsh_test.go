package jepsen

import (
	"os"
	"regexp"
	"strings"
	"testing"
)

// scripts/test.sh runs every scenario but disk-full when not root; its
// list must follow the Scenarios table, or a new scenario would silently
// never run for a developer.
func TestTestShNonRootListsEveryOtherScenario(t *testing.T) {
	b, err := os.ReadFile("../scripts/test.sh")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^\s*scenarios=([a-z,-]+)$`).FindAllStringSubmatch(string(b), -1)
	var list string
	for _, x := range m {
		if x[1] != "all" {
			list = x[1]
		}
	}
	var want []string
	for _, s := range Scenarios {
		if s.Name != "disk-full" {
			want = append(want, s.Name)
		}
	}
	if list != strings.Join(want, ",") {
		t.Fatalf("scripts/test.sh's non-root list is %q, want %q", list, strings.Join(want, ","))
	}
}

// Package bpf will hold the eBPF programs (C next to the Go that loads them,
// bpf2go output committed) that enforce the compiled policy tables on each
// pod's veth: ipcache, per-endpoint policy maps, conntrack, counters and
// flow events.
//
// Status: not yet implemented (issue 3). The tables it will load are
// policy.Table; their lookup semantics are policy.DirTable.Decide.
package bpf

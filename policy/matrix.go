package policy

import (
	"fmt"
	"strings"
)

// Matrix is a reachability matrix between pods for one protocol and port,
// printed as the Kubernetes network policy e2e tests print theirs: a row per
// source, a column per destination, "." allowed and "X" denied.
type Matrix struct {
	Pods  []string // "ns/pod", in row and column order
	Cells map[[2]string]Verdict
}

// NewMatrix returns a matrix over pods with every cell set to v.
func NewMatrix(pods []string, v Verdict) *Matrix {
	m := &Matrix{Pods: pods, Cells: map[[2]string]Verdict{}}
	for _, a := range pods {
		for _, b := range pods {
			m.Cells[[2]string{a, b}] = v
		}
	}
	return m
}

// Set sets one cell.
func (m *Matrix) Set(from, to string, v Verdict) { m.Cells[[2]string{from, to}] = v }

// Get returns one cell.
func (m *Matrix) Get(from, to string) Verdict { return m.Cells[[2]string{from, to}] }

func (m *Matrix) String() string {
	w := 0
	for _, p := range m.Pods {
		w = max(w, len(p))
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%-*s", w, "from\\to")
	for _, p := range m.Pods {
		fmt.Fprintf(&b, " %-*s", w, p)
	}
	b.WriteByte('\n')
	for _, from := range m.Pods {
		fmt.Fprintf(&b, "%-*s", w, from)
		for _, to := range m.Pods {
			c := "."
			if m.Get(from, to) != Allowed {
				c = "X"
			}
			fmt.Fprintf(&b, " %-*s", w, c)
		}
		b.WriteByte('\n')
	}
	return b.String()
}

// Diff lists the cells where m and other differ, as "from -> to: want X, got Y".
func (m *Matrix) Diff(got *Matrix) []string {
	var out []string
	for _, from := range m.Pods {
		for _, to := range m.Pods {
			if w, g := m.Get(from, to), got.Get(from, to); w != g {
				out = append(out, fmt.Sprintf("%s -> %s: want %s, got %s", from, to, w, g))
			}
		}
	}
	return out
}

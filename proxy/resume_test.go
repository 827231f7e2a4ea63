package proxy

import (
	"crypto/tls"
	"crypto/x509"
	"testing"
	"time"
)

// TestResumableNearExpiry: a session whose peer leaf expires within
// resumeMargin is not resumed (a full handshake presents the peer's current
// certificate instead of failing verification on the edge of the expiry);
// one valid for longer, or without a peer certificate, is.
func TestResumableNearExpiry(t *testing.T) {
	now := time.Date(2026, 11, 23, 11, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		name     string
		peer     []*x509.Certificate
		resumble bool
	}{
		{"expires in 2s", []*x509.Certificate{{NotAfter: now.Add(2 * time.Second)}}, false},
		{"expired", []*x509.Certificate{{NotAfter: now.Add(-time.Second)}}, false},
		{"expires in a minute", []*x509.Certificate{{NotAfter: now.Add(time.Minute)}}, true},
		{"no peer certificate", nil, true},
	} {
		st := &tls.SessionState{Extra: [][]byte{[]byte("another-layer:x")}}
		withPeerExpiry(st, tc.peer)
		if got := resumable(st, now); got != tc.resumble {
			t.Errorf("%s: resumable %v, want %v", tc.name, got, tc.resumble)
		}
	}
}

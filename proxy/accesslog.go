package proxy

import (
	"encoding/json"
	"io"
	"sync"
)

// accessEntry is one access log line (JSON).
type accessEntry struct {
	Time       string  `json:"time"`
	Listener   string  `json:"listener"`
	Downstream string  `json:"downstream_remote"`
	OrigDst    string  `json:"original_dst"`
	Method     string  `json:"method"`
	Path       string  `json:"path"`
	Protocol   string  `json:"protocol"`
	Status     int     `json:"status"` // 0: the stream was reset
	RBAC       string  `json:"rbac"`   // allowed, denied, none
	Policy     string  `json:"policy,omitempty"`
	Flags      string  `json:"response_flags,omitempty"`
	Cluster    string  `json:"cluster,omitempty"`
	Upstream   string  `json:"upstream,omitempty"`
	Failure    string  `json:"upstream_failure,omitempty"` // e.g. connect: connection refused
	BytesSent  int64   `json:"bytes_sent"`
	DurationMS float64 `json:"duration_ms"`
}

// accessLogger writes whole lines, one Write per line.
type accessLogger struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *accessLogger) write(e *accessEntry) {
	b, err := json.Marshal(e)
	if err != nil {
		return
	}
	b = append(b, '\n')
	l.mu.Lock()
	defer l.mu.Unlock()
	_, _ = l.w.Write(b)
}

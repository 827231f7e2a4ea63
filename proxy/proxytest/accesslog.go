package proxytest

import (
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"

	accesslogdata "github.com/envoyproxy/go-control-plane/envoy/data/accesslog/v3"
	accesslogsvc "github.com/envoyproxy/go-control-plane/envoy/service/accesslog/v3"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
)

// AccessLogServer is an access log service (envoy.service.accesslog.v3)
// on a unix socket that records every HTTP and TCP entry with the
// identifier of its stream.
type AccessLogServer struct {
	accesslogsvc.UnimplementedAccessLogServiceServer
	Socket string

	t       testing.TB
	mu      sync.Mutex
	entries []LoggedEntry
	streams int // streams opened so far
	notify  chan struct{}
	hold    chan struct{} // while not nil, streams stop reading
	srv     *grpc.Server
}

// LoggedEntry is one received entry and its stream's identifier: Entry
// for an HTTP entry, TCP for a TCP one.
type LoggedEntry struct {
	Node, LogName string
	Entry         *accesslogdata.HTTPAccessLogEntry
	TCP           *accesslogdata.TCPAccessLogEntry
}

// StartAccessLog serves the access log service on dir/name until the test
// ends (or Stop).
func StartAccessLog(t testing.TB, dir, name string) *AccessLogServer {
	t.Helper()
	a := &AccessLogServer{Socket: filepath.Join(dir, name), t: t, notify: make(chan struct{})}
	a.serve()
	t.Cleanup(a.Stop)
	return a
}

// Address is the gRPC target of the server.
func (a *AccessLogServer) Address() string { return "unix://" + a.Socket }

func (a *AccessLogServer) serve() {
	srv := grpc.NewServer()
	accesslogsvc.RegisterAccessLogServiceServer(srv, a)
	ln, err := net.Listen("unix", a.Socket)
	if err != nil {
		a.t.Fatalf("access log server: listen on %s: %v", a.Socket, err)
	}
	go func() { _ = srv.Serve(ln) }()
	a.mu.Lock()
	a.srv = srv
	a.mu.Unlock()
}

// Stop takes the server away, as when the agent exits.
func (a *AccessLogServer) Stop() {
	a.mu.Lock()
	srv := a.srv
	a.srv = nil
	if a.hold != nil {
		close(a.hold)
		a.hold = nil
	}
	a.mu.Unlock()
	if srv != nil {
		srv.Stop()
	}
}

// Restart serves again on the same socket.
func (a *AccessLogServer) Restart() { a.serve() }

// Hold makes the streams stop reading until Release, as a stuck agent.
func (a *AccessLogServer) Hold() {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.hold == nil {
		a.hold = make(chan struct{})
	}
}

// Release lets held streams read again.
func (a *AccessLogServer) Release() {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.hold != nil {
		close(a.hold)
		a.hold = nil
	}
}

// StreamAccessLogs records a stream's entries.
func (a *AccessLogServer) StreamAccessLogs(s accesslogsvc.AccessLogService_StreamAccessLogsServer) error {
	a.mu.Lock()
	a.streams++
	a.mu.Unlock()
	var node, logName string
	for {
		a.mu.Lock()
		hold := a.hold
		a.mu.Unlock()
		if hold != nil {
			select {
			case <-hold:
			case <-s.Context().Done():
				return s.Context().Err()
			}
		}
		msg, err := s.Recv()
		if err != nil {
			return err
		}
		if id := msg.GetIdentifier(); id != nil {
			node, logName = id.GetNode().GetId(), id.GetLogName()
		}
		a.mu.Lock()
		for _, e := range msg.GetHttpLogs().GetLogEntry() {
			a.entries = append(a.entries, LoggedEntry{Node: node, LogName: logName, Entry: proto.Clone(e).(*accesslogdata.HTTPAccessLogEntry)})
		}
		for _, e := range msg.GetTcpLogs().GetLogEntry() {
			a.entries = append(a.entries, LoggedEntry{Node: node, LogName: logName, TCP: proto.Clone(e).(*accesslogdata.TCPAccessLogEntry)})
		}
		close(a.notify)
		a.notify = make(chan struct{})
		a.mu.Unlock()
	}
}

// Entries returns the entries received so far.
func (a *AccessLogServer) Entries() []LoggedEntry {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]LoggedEntry(nil), a.entries...)
}

// Streams is the number of streams opened so far.
func (a *AccessLogServer) Streams() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.streams
}

// WaitEntry waits until an entry satisfies match and returns it.
func (a *AccessLogServer) WaitEntry(timeout time.Duration, match func(LoggedEntry) bool) LoggedEntry {
	a.t.Helper()
	deadline := time.After(timeout)
	seen := 0
	for {
		a.mu.Lock()
		es, ch := a.entries[seen:], a.notify
		seen = len(a.entries)
		a.mu.Unlock()
		for _, e := range es {
			if match(e) {
				return e
			}
		}
		select {
		case <-ch:
		case <-deadline:
			a.t.Fatalf("access log server: no matching entry within %s", timeout)
			return LoggedEntry{}
		}
	}
}

// Path matches an HTTP entry by its request path.
func Path(p string) func(LoggedEntry) bool {
	return func(e LoggedEntry) bool { return e.Entry != nil && e.Entry.GetRequest().GetPath() == p }
}

// TCPFrom matches a TCP entry by its downstream remote port (the
// client's source port).
func TCPFrom(port uint32) func(LoggedEntry) bool {
	return func(e LoggedEntry) bool {
		return e.TCP != nil && e.TCP.GetCommonProperties().GetDownstreamRemoteAddress().GetSocketAddress().GetPortValue() == port
	}
}

package xds

// What each node's proxy has acknowledged, from the xDS server's callbacks.
//
// A response carries a nonce and a version (state of the world: its
// version_info; delta: its system_version_info — go-control-plane sets both
// to the snapshot's version of the type). The proxy's next request of that
// type names the nonce: without error_detail it ACKs the version, with one
// it NACKs it (and keeps its previous configuration). Only the latest nonce
// per stream and type counts, as go-control-plane ignores stale ones.
//
// Versions are per type and derived from the contents, so a type whose
// resources did not change keeps its version and is not sent again: a node
// has ACKed version V of its configuration when, for every type V has
// resources of (and for the wildcard types, listeners and clusters, once
// the proxy has received them), its last ACKed version is V's version of
// that type.

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/prometheus/client_golang/prometheus"
)

// ErrSuperseded is returned by WaitAcked for a version that was replaced by
// a newer one before the proxy acknowledged it: wait for the newer one.
var ErrSuperseded = errors.New("superseded by a newer version")

// ErrUnknownNode is returned for a node that SetNode never set.
var ErrUnknownNode = errors.New("no configuration set for node")

// NACKError is a proxy's rejection of a configuration.
type NACKError struct {
	Node    string
	TypeURL string
	Version string // the rejected version of the type
	Message string // the proxy's error_detail
	Time    time.Time
}

func (e *NACKError) Error() string {
	return fmt.Sprintf("proxy of node %s rejected %s version %s: %s", e.Node, typeName(e.TypeURL), e.Version, e.Message)
}

// NodeStatus is what a node's proxy was sent and acknowledged.
type NodeStatus struct {
	Node    string
	Version string    // the configuration last set (SetNode)
	Set     time.Time // when it was set
	Streams int       // connected xDS streams of the node's proxy
	// Acked reports whether the proxy acknowledged Version.
	Acked bool
	Types map[string]TypeStatus // by type URL
}

// TypeStatus is the state of one resource type of a node.
type TypeStatus struct {
	Version string    // the current configuration's version of the type
	Updated time.Time // when the type's version last changed
	Sent    string    // the version last sent
	SentAt  time.Time
	Acked   string // the version last ACKed
	AckedAt time.Time
	NACK    *NACKError // the last NACK, if any
}

type nodeState struct {
	cur     *Resources
	set     time.Time
	history []*Resources // recent versions, oldest first, for WaitAcked
	types   map[string]*TypeStatus
	streams int
	changed chan struct{} // closed and replaced on every change
}

const historyLen = 16

func (ns *nodeState) notify() {
	close(ns.changed)
	ns.changed = make(chan struct{})
}

func (ns *nodeState) typeStatus(t string) *TypeStatus {
	ts, ok := ns.types[t]
	if !ok {
		ts = &TypeStatus{}
		ns.types[t] = ts
	}
	return ts
}

func (ns *nodeState) setVersion(r *Resources, now time.Time) {
	ns.cur, ns.set = r, now
	ns.history = append(ns.history, r)
	if len(ns.history) > historyLen {
		ns.history = ns.history[1:]
	}
	for _, t := range ResourceTypes {
		ts := ns.typeStatus(t)
		if v := r.TypeVersion(t); v != ts.Version {
			ts.Version, ts.Updated = v, now
		}
	}
	ns.notify()
}

// node returns the state of node, creating it. s.mu is held.
func (s *Server) node(node string) *nodeState {
	ns, ok := s.nodes[node]
	if !ok {
		ns = &nodeState{types: map[string]*TypeStatus{}, changed: make(chan struct{})}
		s.nodes[node] = ns
	}
	return ns
}

// Status returns what node's proxy was sent and acknowledged.
func (s *Server) Status(node string) NodeStatus {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := NodeStatus{Node: node, Types: map[string]TypeStatus{}}
	ns, ok := s.nodes[node]
	if !ok {
		return st
	}
	st.Streams, st.Set = ns.streams, ns.set
	for t, ts := range ns.types {
		c := *ts
		if c.NACK != nil {
			n := *c.NACK
			c.NACK = &n
		}
		st.Types[t] = c
	}
	if ns.cur != nil {
		st.Version = ns.cur.Version
		done, _ := ns.acked(node, ns.cur)
		st.Acked = done
	}
	return st
}

// acked reports whether the proxy acknowledged r, or the NACK that
// rejected part of it.
func (ns *nodeState) acked(node string, r *Resources) (bool, *NACKError) {
	done := true
	for _, t := range ResourceTypes {
		ts := ns.types[t]
		want := r.TypeVersion(t)
		if len(r.ByType(t)) == 0 && !(wildcardType(t) && ts != nil && ts.Sent != "") {
			continue // the proxy will not be sent this type
		}
		if ts != nil && ts.Acked == want {
			continue
		}
		if ts != nil && ts.NACK != nil && ts.NACK.Version == want && ts.NACK.Time.After(ts.AckedAt) {
			n := *ts.NACK
			n.Node = node
			return false, &n
		}
		done = false
	}
	return done, nil
}

// WaitAcked waits until node's proxy has acknowledged version (as returned
// by SetNode) for every resource type, so that the datapath may steer
// flows to the listeners it serves. It returns a *NACKError when the proxy
// rejected the version, ErrSuperseded when a newer version replaced it
// first, or ctx's error.
func (s *Server) WaitAcked(ctx context.Context, node, version string) error {
	for {
		s.mu.Lock()
		ns, ok := s.nodes[node]
		if !ok || ns.cur == nil {
			s.mu.Unlock()
			return fmt.Errorf("wait for node %s version %s: %w", node, version, ErrUnknownNode)
		}
		i := slices.IndexFunc(ns.history, func(r *Resources) bool { return r.Version == version })
		if i < 0 {
			s.mu.Unlock()
			return fmt.Errorf("wait for node %s version %s: not a recent version of the node", node, version)
		}
		done, nack := ns.acked(node, ns.history[i])
		current := ns.cur.Version == version
		changed := ns.changed
		s.mu.Unlock()
		switch {
		case done:
			return nil
		case nack != nil:
			return nack
		case !current:
			return fmt.Errorf("wait for node %s version %s: %w", node, version, ErrSuperseded)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for node %s version %s: %w", node, version, context.Cause(ctx))
		case <-changed:
		}
	}
}

// ---- callbacks ----

type streamKey struct {
	delta bool // the state-of-the-world and delta servers number streams independently
	id    int64
}

type sentResponse struct {
	nonce, version string
}

type streamState struct {
	node string
	last map[string]sentResponse // by type URL: the latest response
	// has is, by type URL, the version the proxy said it has applied in
	// its first request of the stream (a proxy reconnecting to a
	// restarted agent).
	has map[string]string
}

// adoptApplied records as ACKed the types of node's current configuration
// that a connected proxy said it has already applied and was sent nothing
// else since: versions derive from the contents, so the proxy runs the
// current configuration, and the server sends it nothing for them. s.mu is
// held.
func (s *Server) adoptApplied(node string) {
	ns := s.nodes[node]
	if ns == nil || ns.cur == nil {
		return
	}
	changed := false
	for _, st := range s.streams {
		if st.node != node {
			continue
		}
		for t, v := range st.has {
			if _, sent := st.last[t]; sent {
				continue
			}
			if ts := ns.typeStatus(t); v == ts.Version && ts.Acked != v {
				ts.Acked, ts.AckedAt = v, s.now()
				changed = true
				s.log.Info("xds: reconnected proxy has the current configuration", "node", node, "type", typeName(t), "version", v)
			}
		}
	}
	if changed {
		ns.notify()
	}
}

// callbacks implements serverv3.Callbacks for a Server.
type callbacks Server

func (c *callbacks) open(k streamKey) error {
	s := (*Server)(c)
	s.mu.Lock()
	s.streams[k] = &streamState{last: map[string]sentResponse{}, has: map[string]string{}}
	s.mu.Unlock()
	s.metrics.streams.Inc()
	return nil
}

func (c *callbacks) closed(k streamKey, node *corev3.Node) {
	s := (*Server)(c)
	s.mu.Lock()
	st := s.streams[k]
	delete(s.streams, k)
	if st != nil && st.node != "" {
		if ns, ok := s.nodes[st.node]; ok {
			ns.streams--
			ns.notify()
			if ns.streams == 0 && ns.cur == nil {
				delete(s.nodes, st.node)
			}
		}
	}
	s.mu.Unlock()
	s.metrics.streams.Dec()
	s.log.Info("xds: stream closed", "node", node.GetId(), "stream", k.id, "delta", k.delta)
}

// request records an ACK or NACK. It refuses a stream without a node ID:
// snapshots are per node.
func (c *callbacks) request(k streamKey, node *corev3.Node, typeURL, nonce, version string, errorDetail interface{ GetMessage() string }) error {
	s := (*Server)(c)
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.streams[k]
	if st == nil {
		return nil
	}
	id := node.GetId()
	if id == "" { // only the first request must carry the node
		id = st.node
	}
	if id == "" {
		return errors.New("xds: request without node id")
	}
	if st.node == "" {
		st.node = id
		s.node(id).streams++
		s.log.Info("xds: proxy connected", "node", id, "stream", k.id, "delta", k.delta)
	} else if st.node != id {
		return fmt.Errorf("xds: stream of node %s sent a request as node %s", st.node, id)
	}
	ns := s.node(id)
	sent, ok := st.last[typeURL]
	if nonce == "" && !ok && version != "" && errorDetail == nil {
		// A proxy reconnecting (to a restarted agent) names the version it
		// has applied.
		st.has[typeURL] = version
		s.adoptApplied(id)
		return nil
	}
	if nonce == "" || !ok || sent.nonce != nonce {
		return nil // an initial request, a new subscription or a stale nonce
	}
	ts := ns.typeStatus(typeURL)
	now := s.now()
	if errorDetail != nil {
		ts.NACK = &NACKError{Node: id, TypeURL: typeURL, Version: sent.version, Message: errorDetail.GetMessage(), Time: now}
		s.metrics.nacks.WithLabelValues(typeName(typeURL)).Inc()
		s.log.Error("xds: proxy rejected configuration", "node", id, "type", typeName(typeURL), "version", sent.version, "error", errorDetail.GetMessage())
	} else {
		if ts.Acked != sent.version {
			s.log.Debug("xds: proxy acknowledged configuration", "node", id, "type", typeName(typeURL), "version", sent.version)
		}
		ts.Acked, ts.AckedAt = sent.version, now
		s.metrics.acks.WithLabelValues(typeName(typeURL)).Inc()
	}
	ns.notify()
	return nil
}

func (c *callbacks) response(k streamKey, typeURL, nonce, version string) {
	s := (*Server)(c)
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.streams[k]
	if st == nil {
		return
	}
	st.last[typeURL] = sentResponse{nonce: nonce, version: version}
	if st.node != "" {
		ts := s.node(st.node).typeStatus(typeURL)
		ts.Sent, ts.SentAt = version, s.now()
	}
	s.metrics.responses.WithLabelValues(typeName(typeURL)).Inc()
}

func (c *callbacks) OnStreamOpen(_ context.Context, id int64, _ string) error {
	return c.open(streamKey{false, id})
}

func (c *callbacks) OnStreamClosed(id int64, node *corev3.Node) { c.closed(streamKey{false, id}, node) }

func (c *callbacks) OnStreamRequest(id int64, req *discovery.DiscoveryRequest) error {
	var detail interface{ GetMessage() string }
	if req.GetErrorDetail() != nil {
		detail = req.GetErrorDetail()
	}
	return c.request(streamKey{false, id}, req.GetNode(), req.GetTypeUrl(), req.GetResponseNonce(), req.GetVersionInfo(), detail)
}

func (c *callbacks) OnStreamResponse(_ context.Context, id int64, req *discovery.DiscoveryRequest, resp *discovery.DiscoveryResponse) {
	c.response(streamKey{false, id}, resp.GetTypeUrl(), resp.GetNonce(), resp.GetVersionInfo())
}

func (c *callbacks) OnDeltaStreamOpen(_ context.Context, id int64, _ string) error {
	return c.open(streamKey{true, id})
}

func (c *callbacks) OnDeltaStreamClosed(id int64, node *corev3.Node) {
	c.closed(streamKey{true, id}, node)
}

func (c *callbacks) OnStreamDeltaRequest(id int64, req *discovery.DeltaDiscoveryRequest) error {
	var detail interface{ GetMessage() string }
	if req.GetErrorDetail() != nil {
		detail = req.GetErrorDetail()
	}
	return c.request(streamKey{true, id}, req.GetNode(), req.GetTypeUrl(), req.GetResponseNonce(), "", detail)
}

func (c *callbacks) OnStreamDeltaResponse(id int64, req *discovery.DeltaDiscoveryRequest, resp *discovery.DeltaDiscoveryResponse) {
	c.response(streamKey{true, id}, resp.GetTypeUrl(), resp.GetNonce(), resp.GetSystemVersionInfo())
}

// REST fetches are not served (only ADS is registered).
func (c *callbacks) OnFetchRequest(context.Context, *discovery.DiscoveryRequest) error {
	return errors.New("xds: fetch is not supported, use ADS")
}

func (c *callbacks) OnFetchResponse(*discovery.DiscoveryRequest, *discovery.DiscoveryResponse) {}

// ---- metrics ----

type metrics struct {
	streams                prometheus.Gauge
	responses, acks, nacks *prometheus.CounterVec
}

func newMetrics() *metrics {
	return &metrics{
		streams: prometheus.NewGauge(prometheus.GaugeOpts{Name: "nodemesh_xds_streams", Help: "Open xDS streams of proxies."}),
		responses: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "nodemesh_xds_responses_total",
			Help: "xDS responses sent to proxies, by resource type."}, []string{"type"}),
		acks: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "nodemesh_xds_acks_total",
			Help: "xDS responses proxies acknowledged, by resource type."}, []string{"type"}),
		nacks: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "nodemesh_xds_nacks_total",
			Help: "xDS responses proxies rejected, by resource type."}, []string{"type"}),
	}
}

func (m *metrics) register(reg prometheus.Registerer) {
	reg.MustRegister(m.streams, m.responses, m.acks, m.nacks)
}

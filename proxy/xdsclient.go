package proxy

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"time"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
)

// The xDS client speaks state-of-the-world ADS: it subscribes to all
// clusters and listeners (wildcard), to the route configurations the
// listeners name and to the secrets listeners and clusters name (SDS). Every response is answered: an ACK carries the version
// and nonce just applied, a NACK the last good version, the nonce and an
// error_detail naming each refused resource and field. When the stream
// fails the proxy keeps serving its last configuration and reconnects
// with jittered exponential backoff, announcing the versions it has.

// runXDS keeps an ADS stream up until ctx ends.
func (p *Proxy) runXDS(ctx context.Context) error {
	backoff := p.cfg.BackoffMin
	for {
		healthy, err := p.streamOnce(ctx)
		p.metrics.xdsConnected.Set(0)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if healthy {
			backoff = p.cfg.BackoffMin
		}
		wait := backoff/2 + rand.N(backoff/2+1)
		p.log.Warn("xDS stream ended; keeping the last configuration", "err", err, "retry_in", wait)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(wait):
		}
		backoff = min(2*backoff, p.cfg.BackoffMax)
	}
}

// adsState is one stream's bookkeeping per type URL.
type adsState struct {
	nonce   map[string]string
	names   []string // RDS subscription
	secrets []string // SDS subscription
	// The last version refused per type, and how long to wait before
	// refusing it again.
	nacked    map[string]string
	nackDelay map[string]time.Duration
}

// streamOnce runs one ADS stream; healthy reports that it got at least
// one response (so the backoff starts over).
func (p *Proxy) streamOnce(ctx context.Context) (healthy bool, err error) {
	conn, err := grpc.NewClient(p.cfg.XDSAddress, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return false, fmt.Errorf("xDS client %s: %w", p.cfg.XDSAddress, err)
	}
	defer conn.Close()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := discovery.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err != nil {
		return false, fmt.Errorf("xDS stream %s: %w", p.cfg.XDSAddress, err)
	}
	node := &core.Node{Id: p.cfg.NodeID, Cluster: p.cfg.Cluster, UserAgentName: "nodemesh-proxy"}
	st := &adsState{nonce: map[string]string{}, nacked: map[string]string{}, nackDelay: map[string]time.Duration{}}
	send := func(typeURL string, names []string, errDetail error) error {
		req := &discovery.DiscoveryRequest{
			Node: node, TypeUrl: typeURL, ResourceNames: names,
			VersionInfo: p.version(typeURL), ResponseNonce: st.nonce[typeURL],
		}
		if errDetail != nil {
			req.ErrorDetail = &status.Status{Code: int32(codes.InvalidArgument), Message: errDetail.Error()}
		}
		return stream.Send(req)
	}
	// Clusters first, then listeners: routes refer to clusters (Envoy's
	// order on ADS).
	if err := send(typeCluster, nil, nil); err != nil {
		return false, fmt.Errorf("xDS subscribe: %w", err)
	}
	if err := send(typeListener, nil, nil); err != nil {
		return false, fmt.Errorf("xDS subscribe: %w", err)
	}
	if st.names = p.rdsNames(); len(st.names) > 0 {
		if err := send(typeRoute, st.names, nil); err != nil {
			return false, fmt.Errorf("xDS subscribe: %w", err)
		}
	}
	if st.secrets = p.sdsNames(); len(st.secrets) > 0 {
		if err := send(typeSecret, st.secrets, nil); err != nil {
			return false, fmt.Errorf("xDS subscribe: %w", err)
		}
	}
	for {
		resp, err := stream.Recv()
		if err != nil {
			return healthy, fmt.Errorf("xDS stream %s: %w", p.cfg.XDSAddress, err)
		}
		if !healthy {
			healthy = true
			p.metrics.xdsConnected.Set(1)
			p.log.Info("xDS stream up", "address", p.cfg.XDSAddress)
		}
		typeURL := resp.GetTypeUrl()
		st.nonce[typeURL] = resp.GetNonce()
		applyErr := p.applyResponse(resp)
		var names []string // wildcard for LDS and CDS
		switch typeURL {
		case typeRoute:
			names = st.names
		case typeSecret:
			names = st.secrets
		}
		if applyErr != nil {
			p.metrics.xdsUpdates.WithLabelValues(shortType(typeURL), "nack").Inc()
			p.log.Warn("xDS update rejected (NACK)", "type", typeURL, "version", resp.GetVersionInfo(), "err", applyErr)
			// A server that answers a NACK by sending the same version
			// again (go-control-plane's snapshot cache does) would spin:
			// slow the repeats down.
			if st.nacked[typeURL] == resp.GetVersionInfo() {
				st.nackDelay[typeURL] = min(max(2*st.nackDelay[typeURL], 100*time.Millisecond), 5*time.Second)
				select {
				case <-ctx.Done():
					return healthy, ctx.Err()
				case <-time.After(st.nackDelay[typeURL]):
				}
			} else {
				st.nacked[typeURL], st.nackDelay[typeURL] = resp.GetVersionInfo(), 0
			}
		} else {
			delete(st.nacked, typeURL)
			p.accepted(typeURL, resp.GetVersionInfo())
			p.metrics.xdsUpdates.WithLabelValues(shortType(typeURL), "ack").Inc()
			p.log.Info("xDS update applied (ACK)", "type", typeURL, "version", resp.GetVersionInfo(), "resources", len(resp.GetResources()))
		}
		if err := send(typeURL, names, applyErr); err != nil {
			return healthy, fmt.Errorf("xDS ack: %w", err)
		}
		// Listeners may name other route configurations now.
		if typeURL == typeListener {
			if next := p.rdsNames(); !slices.Equal(next, st.names) {
				st.names = next
				if err := send(typeRoute, st.names, nil); err != nil {
					return healthy, fmt.Errorf("xDS subscribe: %w", err)
				}
			}
		}
		// Listeners and clusters may name other secrets now. An empty
		// list would be a wildcard subscription: the last one stays,
		// and what it brings that nothing uses is dropped.
		if typeURL == typeListener || typeURL == typeCluster {
			if next := p.sdsNames(); len(next) > 0 && !slices.Equal(next, st.secrets) {
				st.secrets = next
				if err := send(typeSecret, st.secrets, nil); err != nil {
					return healthy, fmt.Errorf("xDS subscribe: %w", err)
				}
			}
		}
	}
}

func (p *Proxy) version(typeURL string) string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.versions[typeURL]
}

// applyResponse decodes and applies one DiscoveryResponse.
func (p *Proxy) applyResponse(resp *discovery.DiscoveryResponse) error {
	typeURL, version := resp.GetTypeUrl(), resp.GetVersionInfo()
	var errs []error
	switch typeURL {
	case typeListener:
		var ls []*listener.Listener
		for i, a := range resp.GetResources() {
			l := &listener.Listener{}
			if err := unpackAny(fmt.Sprintf("resources[%d]", i), a, l); err != nil {
				errs = append(errs, err)
				continue
			}
			ls = append(ls, l)
		}
		if len(errs) > 0 {
			// Without every listener decoded the state of the world is
			// unknown: refuse it whole.
			return errors.Join(errs...)
		}
		return p.applyListeners(version, ls)
	case typeCluster:
		var cs []*cluster.Cluster
		for i, a := range resp.GetResources() {
			c := &cluster.Cluster{}
			if err := unpackAny(fmt.Sprintf("resources[%d]", i), a, c); err != nil {
				errs = append(errs, err)
				continue
			}
			cs = append(cs, c)
		}
		if len(errs) > 0 {
			return errors.Join(errs...)
		}
		return p.applyClusters(version, cs)
	case typeRoute:
		var rcs []*route.RouteConfiguration
		for i, a := range resp.GetResources() {
			rc := &route.RouteConfiguration{}
			if err := unpackAny(fmt.Sprintf("resources[%d]", i), a, rc); err != nil {
				errs = append(errs, err)
				continue
			}
			rcs = append(rcs, rc)
		}
		return errors.Join(append(errs, p.applyRoutes(version, rcs))...)
	case typeSecret:
		var ss []*tlsv3.Secret
		for i, a := range resp.GetResources() {
			s := &tlsv3.Secret{}
			if err := unpackAny(fmt.Sprintf("resources[%d]", i), a, s); err != nil {
				errs = append(errs, err)
				continue
			}
			ss = append(ss, s)
		}
		return errors.Join(append(errs, p.applySecrets(version, ss))...)
	}
	return fmt.Errorf("resource type %q is not supported by nodemesh-proxy", typeURL)
}

package proxy

// The envoy.access_loggers.http_grpc and tcp_grpc loggers: requests (or
// closed tcp_proxy connections) → bounded queue →
// one goroutine per logger (a distinct access log configuration, as
// Envoy caches its loggers by configuration) → batches → one
// StreamAccessLogs stream to a static gRPC cluster.
//
// Requests never wait for it: an entry that finds the queue full is
// dropped and counted. The goroutine takes entries from the queue only
// while its stream is up, so while the service is away or slow the queue
// holds the latest Config.AccessLogQueue entries' worth of the past and
// drops the rest. A batch is sent when it reaches buffer_size_bytes or
// buffer_flush_interval has passed (Envoy's defaults: 16 KiB, 1 s); the
// first message of each stream carries the identifier (node, log name).
// A stream that fails is opened again with jittered exponential backoff;
// the batch it could not send goes to the next stream.
//
// Lock order: loggers are created and stopped under Proxy.mu; their
// goroutine takes no proxy lock.

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	accesslogdata "github.com/envoyproxy/go-control-plane/envoy/data/accesslog/v3"
	grpcals "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/grpc/v3"
	accesslogsvc "github.com/envoyproxy/go-control-plane/envoy/service/accesslog/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// Envoy's defaults of CommonGrpcAccessLogConfig.
const (
	defaultLogFlushInterval = time.Second
	defaultLogBufferBytes   = 16384
)

// grpcLogKey identifies a logger: HCMs (or tcp_proxies) with the same
// configuration share its stream. As in Envoy, whose logger cache is keyed
// by configuration and logger type, an http_grpc and a tcp_grpc logger
// never share a stream.
type grpcLogKey struct {
	tcp              bool // tcp_grpc: TCPAccessLogEntry (StreamAccessLogsMessage.tcp_logs)
	cluster, logName string
	flushInterval    time.Duration
	bufferBytes      int // a batch this large is sent at once; 0: every entry
}

// grpcLogConfig is a compiled HttpGrpcAccessLogConfig of an HCM or
// TcpGrpcAccessLogConfig of a tcp_proxy; logger
// is resolved when its listener is installed (the cluster must be one of
// the proxy's static gRPC clusters).
type grpcLogConfig struct {
	key         grpcLogKey
	clusterPath string // field path of cluster_name, for the NACK
	logger      *grpcLogger
}

func compileHTTPGRPCLog(path string, a *anypb.Any) (*grpcLogConfig, error) {
	var cfg grpcals.HttpGrpcAccessLogConfig
	if err := unpackAny(path, a, &cfg); err != nil {
		return nil, err
	}
	if err := onlyFields(path, &cfg, "common_config"); err != nil {
		return nil, err
	}
	return compileGRPCLogCommon(path+".common_config", cfg.GetCommonConfig(), false)
}

// compileTCPGRPCLog compiles an envoy.access_loggers.tcp_grpc logger of a
// tcp_proxy: the http_grpc logger's common_config, TCP entries.
func compileTCPGRPCLog(path string, a *anypb.Any) (*grpcLogConfig, error) {
	var cfg grpcals.TcpGrpcAccessLogConfig
	if err := unpackAny(path, a, &cfg); err != nil {
		return nil, err
	}
	if err := onlyFields(path, &cfg, "common_config"); err != nil {
		return nil, err
	}
	return compileGRPCLogCommon(path+".common_config", cfg.GetCommonConfig(), true)
}

// compileGRPCLogCommon compiles the CommonGrpcAccessLogConfig at cp.
func compileGRPCLogCommon(cp string, cc *grpcals.CommonGrpcAccessLogConfig, tcp bool) (*grpcLogConfig, error) {
	if cc == nil {
		return nil, fmt.Errorf("%s: is required", cp)
	}
	if err := onlyFields(cp, cc, "log_name", "grpc_service", "transport_api_version", "buffer_flush_interval", "buffer_size_bytes"); err != nil {
		return nil, err
	}
	if cc.GetLogName() == "" {
		return nil, fmt.Errorf("%s.log_name: is required", cp)
	}
	if v := cc.GetTransportApiVersion(); v != core.ApiVersion_V3 {
		return nil, fmt.Errorf("%s.transport_api_version: %s is not supported (V3)", cp, v)
	}
	gp := cp + ".grpc_service"
	gs := cc.GetGrpcService()
	if gs == nil {
		return nil, fmt.Errorf("%s: is required", gp)
	}
	if err := onlyFields(gp, gs, "envoy_grpc"); err != nil {
		return nil, err
	}
	eg := gs.GetEnvoyGrpc()
	if eg == nil {
		return nil, fmt.Errorf("%s: envoy_grpc is required", gp)
	}
	if err := onlyFields(gp+".envoy_grpc", eg, "cluster_name"); err != nil {
		return nil, err
	}
	if eg.GetClusterName() == "" {
		return nil, fmt.Errorf("%s.envoy_grpc.cluster_name: is required", gp)
	}
	g := &grpcLogConfig{
		key:         grpcLogKey{tcp: tcp, cluster: eg.GetClusterName(), logName: cc.GetLogName(), flushInterval: defaultLogFlushInterval, bufferBytes: defaultLogBufferBytes},
		clusterPath: gp + ".envoy_grpc.cluster_name",
	}
	if cc.BufferFlushInterval != nil {
		g.key.flushInterval = cc.GetBufferFlushInterval().AsDuration()
		if g.key.flushInterval <= 0 {
			return nil, fmt.Errorf("%s.buffer_flush_interval: must be positive", cp)
		}
	}
	if cc.BufferSizeBytes != nil {
		g.key.bufferBytes = int(cc.GetBufferSizeBytes().GetValue())
	}
	return g, nil
}

// grpcLogger streams one access log's entries to its cluster.
type grpcLogger struct {
	key    grpcLogKey
	target string
	id     *accesslogsvc.StreamAccessLogsMessage_Identifier
	log    *slog.Logger
	// queue holds *HTTPAccessLogEntry, or *TCPAccessLogEntry for a
	// tcp_grpc logger.
	queue chan proto.Message

	backoffMin, backoffMax time.Duration
	written, dropped       prometheus.Counter
	up                     prometheus.Gauge

	// pending is the batch not sent yet; only the logger's goroutine
	// touches it.
	pending     []proto.Message
	pendingSize int

	stopOnce sync.Once
	stop     chan struct{}
	done     chan struct{}
}

func (p *Proxy) newGRPCLogger(key grpcLogKey, target string) *grpcLogger {
	labels := prometheus.Labels{"cluster": key.cluster, "log_name": key.logName}
	l := &grpcLogger{
		key:    key,
		target: target,
		id: &accesslogsvc.StreamAccessLogsMessage_Identifier{
			Node:    &core.Node{Id: p.cfg.NodeID, Cluster: p.cfg.Cluster, UserAgentName: "nodemesh-proxy"},
			LogName: key.logName,
		},
		log:        p.log.With("access_log", key.logName, "cluster", key.cluster),
		queue:      make(chan proto.Message, p.cfg.AccessLogQueue),
		backoffMin: p.cfg.BackoffMin,
		backoffMax: p.cfg.BackoffMax,
		written:    p.metrics.accessLogEntries.MustCurryWith(labels).WithLabelValues("written"),
		dropped:    p.metrics.accessLogEntries.MustCurryWith(labels).WithLabelValues("dropped"),
		up:         p.metrics.accessLogUp.With(labels),
		stop:       make(chan struct{}),
		done:       make(chan struct{}),
	}
	go l.run()
	return l
}

// enqueue hands an entry to the logger without waiting: a full queue
// drops it.
func (l *grpcLogger) enqueue(e proto.Message) {
	select {
	case l.queue <- e:
	default:
		l.dropped.Inc()
	}
}

// close stops the logger after it sent what it holds, if its stream is
// up, waiting at most timeout. Entries logged after are dropped.
func (l *grpcLogger) close(timeout time.Duration) {
	l.stopOnce.Do(func() { close(l.stop) })
	select {
	case <-l.done:
	case <-time.After(timeout):
	}
}

func (l *grpcLogger) stopped() bool {
	select {
	case <-l.stop:
		return true
	default:
		return false
	}
}

func (l *grpcLogger) run() {
	defer close(l.done)
	defer l.up.Set(0)
	backoff := l.backoffMin
	for {
		healthy, err := l.streamOnce()
		l.up.Set(0)
		if l.stopped() {
			l.dropped.Add(float64(len(l.pending) + len(l.queue)))
			return
		}
		if healthy {
			backoff = l.backoffMin
		}
		wait := backoff/2 + rand.N(backoff/2+1)
		if healthy {
			l.log.Warn("access log stream down; entries queue until it is back, then drop", "err", err, "retry_in", wait)
		} else {
			l.log.Debug("access log stream still down", "err", err, "retry_in", wait)
		}
		select {
		case <-l.stop:
			l.dropped.Add(float64(len(l.pending) + len(l.queue)))
			return
		case <-time.After(wait):
		}
		backoff = min(2*backoff, l.backoffMax)
	}
}

// errStopped ends a stream when the logger stops.
var errStopped = errors.New("access logger stopped")

// streamOnce runs one stream; healthy reports that it sent something or
// stayed up for a while, so that the backoff starts over.
func (l *grpcLogger) streamOnce() (healthy bool, err error) {
	conn, err := grpc.NewClient(l.target, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return false, fmt.Errorf("access log client %s: %w", l.target, err)
	}
	defer conn.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// Stopping waits for the last batch only so long.
	go func() {
		select {
		case <-l.stop:
			select {
			case <-time.After(time.Second):
				cancel()
			case <-ctx.Done():
			}
		case <-ctx.Done():
		}
	}()
	stream, err := accesslogsvc.NewAccessLogServiceClient(conn).StreamAccessLogs(ctx)
	if err != nil {
		return false, fmt.Errorf("access log stream %s: %w", l.target, err)
	}
	// The service answers only when it ends the stream: watch for that
	// even while no entry comes.
	ended := make(chan error, 1)
	go func() { ended <- stream.RecvMsg(&accesslogsvc.StreamAccessLogsResponse{}) }()
	l.up.Set(1)
	l.log.Debug("access log stream up", "target", l.target)
	started := time.Now()
	first := true
	send := func() error {
		if len(l.pending) == 0 {
			return nil
		}
		msg := l.message()
		if first {
			msg.Identifier = l.id
		}
		if err := stream.Send(msg); err != nil {
			// The stream is gone; the entries may or may not have
			// arrived. Send them again rather than lose them.
			return fmt.Errorf("access log stream %s: send: %w", l.target, err)
		}
		first, healthy = false, true
		l.written.Add(float64(len(l.pending)))
		l.pending, l.pendingSize = nil, 0
		return nil
	}
	tick := time.NewTicker(l.key.flushInterval)
	defer tick.Stop()
	for {
		select {
		case e := <-l.queue:
			l.pending = append(l.pending, e)
			l.pendingSize += proto.Size(e)
			if l.pendingSize >= l.key.bufferBytes {
				if err := send(); err != nil {
					return healthy, err
				}
			}
		case <-tick.C:
			if err := send(); err != nil {
				return healthy, err
			}
		case err := <-ended:
			return healthy || time.Since(started) > l.backoffMax, fmt.Errorf("access log stream %s ended: %w", l.target, err)
		case <-l.stop:
			// What is queued now goes too.
			for more := true; more; {
				select {
				case e := <-l.queue:
					l.pending = append(l.pending, e)
				default:
					more = false
				}
			}
			err := send()
			if err == nil {
				_ = stream.CloseSend()
				select {
				case <-ended:
				case <-ctx.Done():
				}
				return healthy, errStopped
			}
			return healthy, err
		}
	}
}

// message is a StreamAccessLogsMessage of the pending entries (without
// identifier).
func (l *grpcLogger) message() *accesslogsvc.StreamAccessLogsMessage {
	if l.key.tcp {
		es := make([]*accesslogdata.TCPAccessLogEntry, 0, len(l.pending))
		for _, e := range l.pending {
			es = append(es, e.(*accesslogdata.TCPAccessLogEntry))
		}
		return &accesslogsvc.StreamAccessLogsMessage{LogEntries: &accesslogsvc.StreamAccessLogsMessage_TcpLogs{
			TcpLogs: &accesslogsvc.StreamAccessLogsMessage_TCPAccessLogEntries{LogEntry: es}}}
	}
	es := make([]*accesslogdata.HTTPAccessLogEntry, 0, len(l.pending))
	for _, e := range l.pending {
		es = append(es, e.(*accesslogdata.HTTPAccessLogEntry))
	}
	return &accesslogsvc.StreamAccessLogsMessage{LogEntries: &accesslogsvc.StreamAccessLogsMessage_HttpLogs{
		HttpLogs: &accesslogsvc.StreamAccessLogsMessage_HTTPAccessLogEntries{LogEntry: es}}}
}

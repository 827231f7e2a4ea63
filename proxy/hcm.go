package proxy

import (
	"fmt"
	"strings"
	"time"

	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/config/accesslog/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	grpcals "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/grpc/v3"
	stdoutlog "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/stream/v3"
	routerfilter "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"google.golang.org/protobuf/types/known/anypb"
)

// hcmConfig is a compiled HttpConnectionManager. The connection-level part
// (profile) is fixed when a connection is accepted; the rest is looked up
// again for every request.
type hcmConfig struct {
	statPrefix       string
	profile          serverProfile
	rdsName          string
	inline           *routeTable
	rbac             []*rbacFilter
	streamIdle       time.Duration
	requestTimeout   time.Duration
	maxHeaderBytes   int
	accessLog        bool             // the stdout logger
	grpcLogs         []*grpcLogConfig // http_grpc loggers
	useRemoteAddress bool
	// generate_request_id (default true): add x-request-id when missing.
	generateRequestID bool
	serverHeader      hcm.HttpConnectionManager_ServerHeaderTransformation
	serverName        string
	upgrades          []string // lower-case upgrade types allowed (websocket)
}

// serverProfile is the connection-level configuration of an HCM: the
// proxy runs one HTTP server per profile and listener, and a connection
// stays on the server it was accepted into.
type serverProfile struct {
	codec          hcm.HttpConnectionManager_CodecType
	idleTimeout    time.Duration
	headersTimeout time.Duration
	maxHeaderBytes int
}

// Envoy's defaults.
const (
	defaultStreamIdleTimeout = 5 * time.Minute
	defaultMaxHeadersKB      = 60
	maxMaxHeadersKB          = 8192
)

func compileHCM(path string, h *hcm.HttpConnectionManager) (*hcmConfig, error) {
	if err := onlyFields(path, h, "codec_type", "stat_prefix", "rds", "route_config", "http_filters",
		"common_http_protocol_options", "max_request_headers_kb", "stream_idle_timeout", "request_timeout",
		"request_headers_timeout", "access_log", "use_remote_address", "normalize_path", "merge_slashes",
		"path_with_escaped_slashes_action", "generate_request_id", "server_name", "server_header_transformation",
		"upgrade_configs"); err != nil {
		return nil, err
	}
	c := &hcmConfig{
		statPrefix:        h.GetStatPrefix(),
		streamIdle:        defaultStreamIdleTimeout,
		useRemoteAddress:  h.GetUseRemoteAddress().GetValue(),
		generateRequestID: h.GenerateRequestId == nil || h.GetGenerateRequestId().GetValue(),
		serverHeader:      h.GetServerHeaderTransformation(),
		serverName:        h.GetServerName(),
	}
	if c.serverName == "" {
		c.serverName = "envoy"
	}
	for i, u := range h.GetUpgradeConfigs() {
		up := fmt.Sprintf("%s.upgrade_configs[%d]", path, i)
		if err := onlyFields(up, u, "upgrade_type", "enabled"); err != nil {
			return nil, err
		}
		if u.GetUpgradeType() == "" {
			return nil, fmt.Errorf("%s.upgrade_type: is required", up)
		}
		if strings.EqualFold(u.GetUpgradeType(), "CONNECT") {
			return nil, fmt.Errorf("%s.upgrade_type: CONNECT is not supported by nodemesh-proxy", up)
		}
		if u.Enabled == nil || u.GetEnabled().GetValue() {
			c.upgrades = append(c.upgrades, strings.ToLower(u.GetUpgradeType()))
		}
	}
	// Path normalization changes what RBAC and routes see: refuse to be
	// asked for it rather than match differently from Envoy.
	if h.GetNormalizePath().GetValue() {
		return nil, fmt.Errorf("%s.normalize_path: true is not supported by nodemesh-proxy", path)
	}
	if h.GetMergeSlashes() {
		return nil, fmt.Errorf("%s.merge_slashes: true is not supported by nodemesh-proxy", path)
	}
	switch a := h.GetPathWithEscapedSlashesAction(); a {
	case hcm.HttpConnectionManager_IMPLEMENTATION_SPECIFIC_DEFAULT, hcm.HttpConnectionManager_KEEP_UNCHANGED:
	default:
		return nil, fmt.Errorf("%s.path_with_escaped_slashes_action: %s is not supported (KEEP_UNCHANGED)", path, a)
	}
	switch h.GetCodecType() {
	case hcm.HttpConnectionManager_AUTO, hcm.HttpConnectionManager_HTTP1, hcm.HttpConnectionManager_HTTP2:
		c.profile.codec = h.GetCodecType()
	default:
		return nil, fmt.Errorf("%s.codec_type: %s is not supported (AUTO, HTTP1, HTTP2)", path, h.GetCodecType())
	}
	c.profile.idleTimeout = time.Hour
	if o := h.GetCommonHttpProtocolOptions(); o != nil {
		op := path + ".common_http_protocol_options"
		if err := onlyFields(op, o, "idle_timeout"); err != nil {
			return nil, err
		}
		if o.IdleTimeout != nil {
			c.profile.idleTimeout = o.GetIdleTimeout().AsDuration()
		}
	}
	kb := uint32(defaultMaxHeadersKB)
	if h.MaxRequestHeadersKb != nil {
		kb = h.GetMaxRequestHeadersKb().GetValue()
		if kb == 0 || kb > maxMaxHeadersKB {
			return nil, fmt.Errorf("%s.max_request_headers_kb %d: must be in [1, %d]", path, kb, maxMaxHeadersKB)
		}
	}
	c.maxHeaderBytes = int(kb) * 1024
	c.profile.maxHeaderBytes = c.maxHeaderBytes
	if h.StreamIdleTimeout != nil {
		c.streamIdle = h.GetStreamIdleTimeout().AsDuration()
	}
	if h.RequestTimeout != nil {
		c.requestTimeout = h.GetRequestTimeout().AsDuration()
	}
	if h.RequestHeadersTimeout != nil {
		c.profile.headersTimeout = h.GetRequestHeadersTimeout().AsDuration()
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"stream_idle_timeout", c.streamIdle}, {"request_timeout", c.requestTimeout}, {"request_headers_timeout", c.profile.headersTimeout}, {"common_http_protocol_options.idle_timeout", c.profile.idleTimeout}} {
		if d.v < 0 {
			return nil, fmt.Errorf("%s.%s: must not be negative", path, d.name)
		}
	}

	switch r := h.GetRouteSpecifier().(type) {
	case *hcm.HttpConnectionManager_Rds:
		rp := path + ".rds"
		if err := onlyFields(rp, r.Rds, "config_source", "route_config_name"); err != nil {
			return nil, err
		}
		if r.Rds.GetRouteConfigName() == "" {
			return nil, fmt.Errorf("%s.route_config_name: is required", rp)
		}
		if err := checkADSSource(rp+".config_source", r.Rds.GetConfigSource()); err != nil {
			return nil, err
		}
		c.rdsName = r.Rds.GetRouteConfigName()
	case *hcm.HttpConnectionManager_RouteConfig:
		t, err := compileRouteConfig(path+".route_config", r.RouteConfig)
		if err != nil {
			return nil, err
		}
		c.inline = t
	default:
		return nil, fmt.Errorf("%s: rds or route_config is required (scoped_routes is not supported)", path)
	}

	fs := h.GetHttpFilters()
	if len(fs) == 0 || fs[len(fs)-1].GetName() != filterRouter {
		return nil, fmt.Errorf("%s.http_filters: the last filter must be %s", path, filterRouter)
	}
	for i, f := range fs {
		fp := fmt.Sprintf("%s.http_filters[%d]", path, i)
		if err := onlyFields(fp, f, "name", "typed_config"); err != nil {
			return nil, err
		}
		switch {
		case i == len(fs)-1:
			var rc routerfilter.Router
			if f.GetTypedConfig() != nil {
				if err := unpackAny(fp+".typed_config", f.GetTypedConfig(), &rc); err != nil {
					return nil, err
				}
				if err := onlyFields(fp+".typed_config", &rc); err != nil {
					return nil, err
				}
			}
		case f.GetName() == filterRBAC:
			rf, err := compileRBAC(fp+".typed_config", f.GetName(), f.GetTypedConfig())
			if err != nil {
				return nil, err
			}
			c.rbac = append(c.rbac, rf)
		case f.GetName() == filterRouter:
			return nil, fmt.Errorf("%s: %s must be the last filter", fp, filterRouter)
		default:
			return nil, fmt.Errorf("%s: http filter %q is not supported by nodemesh-proxy (%s, %s)", fp, f.GetName(), filterRBAC, filterRouter)
		}
	}

	var err error
	c.accessLog, c.grpcLogs, err = compileAccessLogs(path, h.GetAccessLog(), typeURLOf(&grpcals.HttpGrpcAccessLogConfig{}), compileHTTPGRPCLog,
		func(ap string, al *accesslogv3.AccessLog) error {
			return fmt.Errorf("%s: access logger %q is not supported by nodemesh-proxy (%s without log_format, %s)", ap, al.GetName(), accessLogStdout, accessLogHTTPGRPC)
		})
	if err != nil {
		return nil, err
	}
	return c, nil
}

// checkADSSource accepts the config sources that mean "this ADS stream".
func checkADSSource(path string, cs *core.ConfigSource) error {
	if cs == nil {
		return fmt.Errorf("%s: is required", path)
	}
	if err := onlyFields(path, cs, "ads", "resource_api_version", "initial_fetch_timeout"); err != nil {
		return err
	}
	if cs.GetAds() == nil {
		return fmt.Errorf("%s: only ads is supported", path)
	}
	if v := cs.GetResourceApiVersion(); v != core.ApiVersion_AUTO && v != core.ApiVersion_V3 {
		return fmt.Errorf("%s.resource_api_version: %s is not supported", path, v)
	}
	return nil
}

// compileAccessLogs compiles a filter's access_log list: the stdout logger
// (without log_format: the proxy writes its own JSON line) and the gRPC
// logger whose config has type URL grpcType (compiled by compileGRPC). As
// in Envoy, the typed_config's type selects the logger. unsupported makes
// the error for any other entry.
func compileAccessLogs(path string, logs []*accesslogv3.AccessLog, grpcType string, compileGRPC func(string, *anypb.Any) (*grpcLogConfig, error),
	unsupported func(ap string, al *accesslogv3.AccessLog) error) (stdout bool, grpc []*grpcLogConfig, err error) {
	for i, al := range logs {
		ap := fmt.Sprintf("%s.access_log[%d]", path, i)
		if err := onlyFields(ap, al, "name", "typed_config"); err != nil {
			return false, nil, err
		}
		switch al.GetTypedConfig().GetTypeUrl() {
		case typeURLOf(&stdoutlog.StdoutAccessLog{}):
			var so stdoutlog.StdoutAccessLog
			if err := unpackAny(ap+".typed_config", al.GetTypedConfig(), &so); err != nil {
				return false, nil, err
			}
			if err := onlyFields(ap+".typed_config", &so); err != nil {
				return false, nil, fmt.Errorf("%s: the proxy writes its own JSON line: %w", ap, err)
			}
			stdout = true
		case grpcType:
			g, err := compileGRPC(ap+".typed_config", al.GetTypedConfig())
			if err != nil {
				return false, nil, err
			}
			grpc = append(grpc, g)
		default:
			return false, nil, unsupported(ap, al)
		}
	}
	return stdout, grpc, nil
}

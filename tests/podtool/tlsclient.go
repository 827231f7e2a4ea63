package podtool

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"time"
)

// TLSConfig is one TLS echo exchange with a client certificate: what a
// node proxy's peer would send, with whatever certificate a test wants to
// present (expired, from another CA...).
type TLSConfig struct {
	To       string
	CertFile string // PEM chain, leaf first
	KeyFile  string // PEM key
	ALPN     string
	Timeout  time.Duration
	Payload  string
}

// TLSResult says how far the exchange got.
type TLSResult struct {
	OK bool `json:"ok"`
	// Stage is where it ended: connect, handshake, echo, or done.
	Stage string `json:"stage"`
	// PeerID is the URI SAN of the server's certificate.
	PeerID string `json:"peer_id,omitempty"`
	Error  string `json:"error,omitempty"`
}

// TLSEcho connects, handshakes (TLS 1.3, the server's certificate is not
// verified: the test is about what the server accepts) and echoes the
// payload.
func TLSEcho(ctx context.Context, cfg TLSConfig) TLSResult {
	res := TLSResult{Stage: "connect"}
	cert, err := tls.LoadX509KeyPair(cfg.CertFile, cfg.KeyFile)
	if err != nil {
		res.Error = err.Error()
		return res
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	var d net.Dialer
	raw, err := d.DialContext(ctx, "tcp", cfg.To)
	if err != nil {
		res.Error = err.Error()
		return res
	}
	defer raw.Close()
	if dl, ok := ctx.Deadline(); ok {
		raw.SetDeadline(dl)
	}
	res.Stage = "handshake"
	c := tls.Client(raw, &tls.Config{
		Certificates:       []tls.Certificate{cert},
		NextProtos:         []string{cfg.ALPN},
		MinVersion:         tls.VersionTLS13,
		InsecureSkipVerify: true,
	})
	if err := c.HandshakeContext(ctx); err != nil {
		res.Error = err.Error()
		return res
	}
	if st := c.ConnectionState(); len(st.PeerCertificates) > 0 && len(st.PeerCertificates[0].URIs) > 0 {
		res.PeerID = st.PeerCertificates[0].URIs[0].String()
	}
	// In TLS 1.3 the server checks the client's certificate after the
	// client's handshake is done: a refusal shows as an alert on the
	// first read.
	res.Stage = "echo"
	if _, err := io.WriteString(c, cfg.Payload); err != nil {
		res.Error = err.Error()
		return res
	}
	buf := make([]byte, len(cfg.Payload))
	if _, err := io.ReadFull(c, buf); err != nil {
		res.Error = err.Error()
		return res
	}
	if string(buf) != cfg.Payload {
		res.Error = fmt.Sprintf("echo %q, sent %q", buf, cfg.Payload)
		return res
	}
	res.OK, res.Stage = true, "done"
	return res
}

func (cfg TLSConfig) validate() error {
	var errs []error
	if cfg.To == "" || cfg.CertFile == "" || cfg.KeyFile == "" {
		errs = append(errs, errors.New("--to, --cert and --key are required"))
	}
	if cfg.Timeout <= 0 || cfg.Timeout > MaxTimeout {
		errs = append(errs, fmt.Errorf("timeout %s: want (0, %s]", cfg.Timeout, MaxTimeout))
	}
	return errors.Join(errs...)
}

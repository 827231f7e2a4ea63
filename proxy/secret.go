package proxy

// SDS over ADS: envoy.extensions.transport_sockets.tls.v3.Secret
// resources, subscribed by name as listeners and clusters reference them
// (tls_certificate_sds_secret_configs, validation_context_sds_secret_config,
// combined_validation_context) with sds_config {ads: {}}. As for route
// configurations, a response need not list every subscribed secret and
// an absent one is not deleted; a secret is forgotten once no listener or
// cluster (active or warming) references it. Each secret is accepted or
// refused on its own; a refused one keeps its last good version.
//
// Secrets are read by every handshake from an atomic map, so an update
// applies to the next handshake: listeners keep their sockets and
// established connections keep going. A listener or cluster that
// references a secret not received yet warms (see listenerRuntime.update
// and pendingCluster); it never serves without its certificate nor
// accepts a peer it cannot verify.
//
// Private keys never leave the secret: /config_dump redacts them as
// Envoy does (redact.go), and no error or log line carries one.

import (
	"crypto/tls"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"

	admin "github.com/envoyproxy/go-control-plane/envoy/admin/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

const typeSecret = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"

// secretKind is what a secret holds, or what a reference expects.
type secretKind int

const (
	kindCertificate secretKind = iota + 1
	kindValidation
)

func (k secretKind) String() string {
	switch k {
	case kindCertificate:
		return "tls_certificate"
	case kindValidation:
		return "validation_context"
	}
	return "unknown"
}

// secret is a compiled Secret, immutable.
type secret struct {
	name string
	seq  uint64 // unique per accepted version: the handshakes' caches key on it
	kind secretKind
	raw  *tlsv3.Secret
	cert *tls.Certificate // tls_certificate, Leaf parsed
	// val is the validation context compiled on its own (for
	// validation_context_sds_secret_config); valErr why it cannot serve
	// alone (it may still complete a combined validation context).
	val    *validator
	valErr error
}

func (p *Proxy) compileSecret(path string, s *tlsv3.Secret) (*secret, error) {
	if err := onlyFields(path, s, "name", "tls_certificate", "validation_context"); err != nil {
		return nil, err
	}
	sec := &secret{name: s.GetName(), raw: s, seq: p.secretSeq.Add(1)}
	switch t := s.GetType().(type) {
	case *tlsv3.Secret_TlsCertificate:
		tp := path + ".tls_certificate"
		if err := onlyFields(tp, t.TlsCertificate, "certificate_chain", "private_key"); err != nil {
			return nil, err
		}
		chain, err := compileDataSource(tp+".certificate_chain", t.TlsCertificate.GetCertificateChain())
		if err != nil {
			return nil, err
		}
		key, err := compileDataSource(tp+".private_key", t.TlsCertificate.GetPrivateKey())
		if err != nil {
			return nil, err
		}
		// crypto/tls's errors name what is wrong, never the key's bytes.
		c, err := tls.X509KeyPair(chain, key)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", tp, err)
		}
		if c.Leaf == nil {
			return nil, fmt.Errorf("%s.certificate_chain: no certificate", tp)
		}
		sec.kind, sec.cert = kindCertificate, &c
	case *tlsv3.Secret_ValidationContext:
		vp := path + ".validation_context"
		if _, err := compileValidation(vp, t.ValidationContext, p.svid, true); err != nil {
			return nil, err
		}
		sec.kind = kindValidation
		sec.val, sec.valErr = compileValidation(vp, t.ValidationContext, p.svid, false)
	case nil:
		return nil, fmt.Errorf("%s: tls_certificate or validation_context is required", path)
	default:
		return nil, fmt.Errorf("%s: secret type %T is not supported by nodemesh-proxy (tls_certificate, validation_context)", path, t)
	}
	return sec, nil
}

// secretRef is one use of a secret by a listener's filter chain or a
// cluster.
type secretRef struct {
	kind secretKind
	ctx  *tlsContext
	user string // listener "x".filter_chains[i] or cluster "y"
}

// secretRefsLocked lists the secrets the listeners and clusters (active
// and warming) use.
func (p *Proxy) secretRefsLocked() map[string][]secretRef {
	refs := map[string][]secretRef{}
	add := func(user string, tc *tlsContext) {
		if tc == nil {
			return
		}
		for name, kind := range tc.refs() {
			refs[name] = append(refs[name], secretRef{kind: kind, ctx: tc, user: user})
		}
	}
	for _, st := range p.listeners {
		if st.rt == nil {
			continue
		}
		cfgs := []*listenerConfig{st.rt.cfg.Load()}
		st.rt.mu.Lock()
		cfgs = append(cfgs, st.rt.pending)
		st.rt.mu.Unlock()
		for _, lc := range cfgs {
			if lc == nil {
				continue
			}
			for _, c := range lc.allChains() {
				if c.tlsCtx != nil {
					add(fmt.Sprintf("listener %q chain %q", lc.name, c.name), c.tlsCtx)
				}
			}
		}
	}
	for _, u := range *p.clusters.Load() {
		if u.tls != nil {
			add(fmt.Sprintf("cluster %q", u.name), u.tls.ctx)
		}
	}
	for _, pc := range p.pendingClusters {
		if pc.u.tls != nil {
			add(fmt.Sprintf("cluster %q", pc.u.name), pc.u.tls.ctx)
		}
	}
	return refs
}

// sdsNames is the secrets to subscribe to.
func (p *Proxy) sdsNames() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Sorted(maps.Keys(p.secretRefsLocked()))
}

// checkSecretUse refuses a secret its users could not use, as Envoy's SDS
// validation callbacks do: a kind other than the one referenced, or a
// validation context that is incomplete on its own or does not merge
// with a combined validation context's default.
func (p *Proxy) checkSecretUse(path string, s *secret, refs []secretRef) error {
	for _, r := range refs {
		if r.kind != s.kind {
			return fmt.Errorf("%s: is a %s, but %s uses it as %s", path, s.kind, r.user, r.kind)
		}
		if s.kind != kindValidation {
			continue
		}
		if r.ctx.defaultVal == nil {
			if s.valErr != nil {
				return fmt.Errorf("%s (used by %s): %w", path, r.user, s.valErr)
			}
			continue
		}
		if _, err := mergeValidation(r.ctx.defaultVal, s.raw.GetValidationContext(), p.svid); err != nil {
			return fmt.Errorf("%s: merged into the default_validation_context of %s: %w", path, r.user, err)
		}
	}
	return nil
}

// applySecrets applies an SDS response: each secret on its own; the
// listeners and clusters waiting for them activate.
func (p *Proxy) applySecrets(version string, ss []*tlsv3.Secret) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	var errs []error
	refs := p.secretRefsLocked()
	cur := *p.secrets.Load()
	next := maps.Clone(cur)
	seen := map[string]bool{}
	for _, s := range ss {
		name := s.GetName()
		path := fmt.Sprintf("secret %q", name)
		if name == "" {
			errs = append(errs, errors.New("secret: name is required"))
			continue
		}
		if seen[name] {
			errs = append(errs, fmt.Errorf("%s: duplicate name in one response", path))
			continue
		}
		seen[name] = true
		st := p.secretStates[name]
		if st != nil && st.raw != nil && cur[name] != nil && proto.Equal(st.raw, s) {
			st.failed = nil
			continue
		}
		sec, err := p.compileSecret(path, s)
		if err == nil {
			err = p.checkSecretUse(path, sec, refs[name])
		}
		if err != nil {
			errs = append(errs, err)
			markFailed(p.secretStates, name, version, s, err)
			continue
		}
		next[name] = sec
		p.secretStates[name] = &resourceState{version: version, raw: s, updated: time.Now()}
	}
	p.secrets.Store(&next)
	p.promoteListenersLocked()
	p.promoteClustersLocked()
	p.updateReadyLocked()
	return errors.Join(errs...)
}

// pruneSecretsLocked forgets the secrets nothing references.
func (p *Proxy) pruneSecretsLocked() {
	refs := p.secretRefsLocked()
	cur := *p.secrets.Load()
	next := make(map[string]*secret, len(cur))
	for n, s := range cur {
		if _, ok := refs[n]; ok {
			next[n] = s
		}
	}
	p.secrets.Store(&next)
	for n := range p.secretStates {
		if _, ok := refs[n]; !ok {
			delete(p.secretStates, n)
		}
	}
}

// secretsReady reports whether every secret refs names has arrived with
// the kind it is used as.
func secretsReady(refs map[string]secretKind, secrets map[string]*secret) bool {
	for name, kind := range refs {
		if s := secrets[name]; s == nil || s.kind != kind {
			return false
		}
	}
	return true
}

// secretsDumpLocked shows the secrets as Envoy's SecretsConfigDump does:
// received ones active (private keys redacted), referenced ones not
// received yet warming (name only), with the last refused update in
// error_state.
func (p *Proxy) secretsDumpLocked() *admin.SecretsConfigDump {
	d := &admin.SecretsConfigDump{}
	cur := *p.secrets.Load()
	names := map[string]bool{}
	for n := range p.secretRefsLocked() {
		names[n] = true
	}
	for n := range p.secretStates {
		names[n] = true
	}
	for _, name := range slices.Sorted(maps.Keys(names)) {
		st := p.secretStates[name]
		var failed *admin.UpdateFailureState
		if st != nil && st.failed != nil {
			failed = redactFailure(st.failed)
		}
		if s := cur[name]; s != nil && st != nil {
			d.DynamicActiveSecrets = append(d.DynamicActiveSecrets, &admin.SecretsConfigDump_DynamicSecret{
				Name: name, VersionInfo: st.version, LastUpdated: timestamppb.New(st.updated),
				Secret: mustAny(redacted(s.raw)), ErrorState: failed,
			})
			continue
		}
		d.DynamicWarmingSecrets = append(d.DynamicWarmingSecrets, &admin.SecretsConfigDump_DynamicSecret{
			Name: name, Secret: mustAny(&tlsv3.Secret{Name: name}), ErrorState: failed,
		})
	}
	return d
}

package proxy

import (
	"net/http"
	"net/netip"
	"testing"
	"time"

	pt "github.com/nodemesh/nodemesh/proxy/proxytest"
)

// Pools are per upstream bind: one per client address and mark, reused,
// and dropped once unused for longer than the idle timeout. (The
// namespace test, TestTransparentOriginalSrc, checks what the backend
// sees.)
func TestUpstreamPools(t *testing.T) {
	u, err := compileCluster(`cluster "od"`, pt.OriginalDstCluster("od", 0xa00, downstreamProtocol))
	if err != nil {
		t.Fatal(err)
	}
	a := upstreamBind{src: netip.MustParseAddr("10.0.1.10"), mark: 0xa00}
	b := upstreamBind{src: netip.MustParseAddr("10.0.1.11"), mark: 0xa00}
	a2 := upstreamBind{src: a.src, mark: 0xb00}
	pool := func(h2 bool, b upstreamBind) *http.Transport {
		t.Helper()
		tr, err := u.transportFor(h2, b)
		if err != nil {
			t.Fatal(err)
		}
		return tr
	}
	if pool(false, upstreamBind{}) != u.transport || pool(true, upstreamBind{}) != u.h2c {
		t.Fatal("without a bind, the cluster's own pools")
	}
	ta := pool(false, a)
	if ta == u.transport || pool(false, a) != ta || pool(true, a) == ta {
		t.Fatal("a bind gets pools of its own, per protocol, reused")
	}
	if pool(false, b) == ta || pool(false, a2) == ta {
		t.Fatal("another client address or mark shares a pool")
	}
	if n := u.poolCount(); n != 3 {
		t.Fatalf("%d pools, want 3", n)
	}
	// An hour (the idle timeout) later, only the pool used since stays.
	old := time.Now().Add(-2 * time.Hour).UnixNano()
	for _, k := range []upstreamBind{a, b, a2} {
		v, _ := u.pools.Load(poolKey{bind: k})
		v.(*bindPool).lastUsed.Store(old)
	}
	pool(false, b)
	u.lastSweep = time.Time{}
	pool(false, upstreamBind{src: netip.MustParseAddr("10.0.1.12")})
	if _, ok := u.pools.Load(poolKey{bind: a}); ok || u.poolCount() != 2 {
		t.Fatalf("after the sweep: %d pools, a kept: %v; want b and the new one", u.poolCount(), ok)
	}
	if pool(false, a) == ta {
		t.Fatal("a swept pool came back")
	}
}

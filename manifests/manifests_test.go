package manifests_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	"github.com/spf13/pflag"
	"google.golang.org/protobuf/encoding/protojson"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"

	"github.com/nodemesh/nodemesh/agent"
	"github.com/nodemesh/nodemesh/proxy"
)

// testNode and testNodeIP stand for the downward API's values.
const (
	testNode   = "node-a"
	testNodeIP = "192.0.2.10"
)

// decoder decodes strictly: unknown and duplicate fields are errors.
var decoder = func() runtime.Decoder {
	s := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{corev1.AddToScheme, appsv1.AddToScheme, rbacv1.AddToScheme} {
		if err := add(s); err != nil {
			panic(err)
		}
	}
	return serializer.NewCodecFactory(s, serializer.EnableStrict).UniversalDeserializer()
}()

// document is one YAML document of a file.
type document struct {
	index int
	json  []byte
}

func documents(t *testing.T, path string) []document {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	r := utilyaml.NewYAMLReader(bufio.NewReader(f))
	var docs []document
	for i := 1; ; i++ {
		b, err := r.Read()
		if errors.Is(err, io.EOF) {
			return docs
		}
		if err != nil {
			t.Fatalf("%s: document %d: %v", path, i, err)
		}
		j, err := utilyaml.ToJSON(b)
		if err != nil {
			t.Fatalf("%s: document %d: %v", path, i, err)
		}
		if string(j) == "null" {
			continue // comments only
		}
		docs = append(docs, document{i, j})
	}
}

func decode(t *testing.T, file string, d document) runtime.Object {
	t.Helper()
	obj, gvk, err := decoder.Decode(d.json, nil, nil)
	if err != nil {
		t.Fatalf("%s: document %d: %v", file, d.index, err)
	}
	t.Logf("%s: document %d: %s", file, d.index, gvk)
	return obj
}

func TestNodemeshYAML(t *testing.T) {
	var ds *appsv1.DaemonSet
	var sa *corev1.ServiceAccount
	var binding *rbacv1.ClusterRoleBinding
	kinds := map[string]int{}
	for _, d := range documents(t, "nodemesh.yaml") {
		obj := decode(t, "nodemesh.yaml", d)
		kinds[fmt.Sprintf("%T", obj)]++
		switch o := obj.(type) {
		case *appsv1.DaemonSet:
			ds = o
		case *corev1.ServiceAccount:
			sa = o
		case *rbacv1.ClusterRoleBinding:
			binding = o
		}
	}
	for _, k := range []string{"*v1.Namespace", "*v1.ServiceAccount", "*v1.ClusterRole", "*v1.ClusterRoleBinding", "*v1.DaemonSet"} {
		if kinds[k] != 1 {
			t.Errorf("want one %s, got %d", k, kinds[k])
		}
	}
	if ds == nil || sa == nil || binding == nil {
		t.FailNow()
	}
	if ds.Spec.Template.Spec.ServiceAccountName != sa.Name || ds.Namespace != sa.Namespace {
		t.Errorf("the DaemonSet runs as %s/%s, the manifest defines %s/%s", ds.Namespace, ds.Spec.Template.Spec.ServiceAccountName, sa.Namespace, sa.Name)
	}
	if s := binding.Subjects; len(s) != 1 || s[0].Kind != "ServiceAccount" || s[0].Name != sa.Name || s[0].Namespace != sa.Namespace {
		t.Errorf("the ClusterRoleBinding binds %v, not the agent's ServiceAccount", s)
	}
	checkPod(t, ds, "envoy")
}

// TestNodemeshProxyOverlay applies the overlay's JSON patch to the
// DaemonSet and checks the result as strictly as the Envoy variant.
func TestNodemeshProxyOverlay(t *testing.T) {
	var k struct {
		APIVersion string   `json:"apiVersion"`
		Kind       string   `json:"kind"`
		Resources  []string `json:"resources"`
		Patches    []struct {
			Path   string `json:"path"`
			Target struct {
				Group, Version, Kind, Name, Namespace string
			} `json:"target"`
		} `json:"patches"`
	}
	strictJSON(t, "nodemesh-proxy/kustomization.yaml", documents(t, "nodemesh-proxy/kustomization.yaml")[0].json, &k)
	var root struct {
		APIVersion string   `json:"apiVersion"`
		Kind       string   `json:"kind"`
		Resources  []string `json:"resources"`
	}
	strictJSON(t, "kustomization.yaml", documents(t, "kustomization.yaml")[0].json, &root)
	if !slices.Equal(root.Resources, []string{"nodemesh.yaml"}) || !slices.Equal(k.Resources, []string{".."}) || len(k.Patches) != 1 {
		t.Fatalf("kustomizations: root %v, overlay %v with %d patches; want nodemesh.yaml, .. and one patch", root.Resources, k.Resources, len(k.Patches))
	}
	var dsDoc []byte
	for _, d := range documents(t, "nodemesh.yaml") {
		if ds, ok := decode(t, "nodemesh.yaml", d).(*appsv1.DaemonSet); ok {
			tg := k.Patches[0].Target
			if tg.Kind != "DaemonSet" || tg.Group != "apps" || tg.Version != "v1" || tg.Name != ds.Name || tg.Namespace != ds.Namespace {
				t.Fatalf("the overlay's patch targets %+v, not DaemonSet %s/%s", tg, ds.Namespace, ds.Name)
			}
			dsDoc = d.json
		}
	}
	patchFile := filepath.Join("nodemesh-proxy", k.Patches[0].Path)
	var ops []patchOp
	strictJSON(t, patchFile, yamlFileJSON(t, patchFile), &ops)
	var tree any
	if err := json.Unmarshal(dsDoc, &tree); err != nil {
		t.Fatal(err)
	}
	for i, op := range ops {
		var err error
		if tree, err = op.apply(tree); err != nil {
			t.Fatalf("%s: operation %d (%s %s): %v", patchFile, i, op.Op, op.Path, err)
		}
	}
	patched, err := json.Marshal(tree)
	if err != nil {
		t.Fatal(err)
	}
	ds, ok := decode(t, patchFile+" applied", document{1, patched}).(*appsv1.DaemonSet)
	if !ok {
		t.Fatal("the patched object is not a DaemonSet")
	}
	checkPod(t, ds, "nodemesh-proxy")
}

func strictJSON(t *testing.T, file string, b []byte, v any) {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
}

func yamlFileJSON(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	j, err := utilyaml.ToJSON(b)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return j
}

// checkPod checks what must agree with the code, for the pod template
// with proxy "envoy" or "nodemesh-proxy".
func checkPod(t *testing.T, ds *appsv1.DaemonSet, proxyKind string) {
	spec := ds.Spec.Template.Spec
	if !spec.HostNetwork {
		t.Error("hostNetwork must be true: the proxy's transparent listeners and the agent's datapath live in the node's network namespace")
	}
	sel := ds.Spec.Selector.MatchLabels
	for k, v := range sel {
		if ds.Spec.Template.Labels[k] != v {
			t.Errorf("selector %s=%s does not select the template (labels %v)", k, v, ds.Spec.Template.Labels)
		}
	}
	checkImages(t, spec)

	agentC := container(t, spec.Containers, "agent")
	cfg := agentConfig(t, agentC)
	inbound, outbound := int32(cfg.Proxy.InboundPort), int32(cfg.Proxy.OutboundPort)

	// Sockets and pins: the agent's defaults, on host paths.
	xdsHost := hostPathOf(t, spec, agentC, cfg.XDSSocket)
	apiHost := hostPathOf(t, spec, agentC, cfg.APISocket)
	if want := filepath.Join("/run/nodemesh", testNode); filepath.Dir(xdsHost) != want || filepath.Dir(apiHost) != want {
		t.Errorf("agent sockets on the host: %s, %s; want them in %s, where meshctl and the proxies look", xdsHost, apiHost, want)
	}
	if pins := hostPathOf(t, spec, agentC, cfg.PinDir); pins != filepath.Join("/sys/fs/bpf/nodemesh", testNode) {
		t.Errorf("agent pins on the host: %s, want /sys/fs/bpf/nodemesh/%s", pins, testNode)
	}
	for _, p := range append(append([]string{}, cfg.WorldPaths...), cfg.PolicyPaths...) {
		if v := volumeAt(t, spec, agentC, p); v.ConfigMap == nil {
			t.Errorf("agent input %s: want a ConfigMap volume, got %+v", p, v.VolumeSource)
		}
	}
	// The splice (opt-in) attaches to cgroup v2 directories of the node.
	for _, cg := range []string{cfg.splicePods, cfg.spliceProxy} {
		if cg != "" && !strings.HasPrefix(hostPathOf(t, spec, agentC, cg), "/sys/fs/cgroup") {
			t.Errorf("splice cgroup %s is not on the node's cgroup v2 hierarchy (/sys/fs/cgroup)", cg)
		}
	}
	if (cfg.splicePods == "") != (cfg.spliceProxy == "") {
		t.Error("--splice-pods-cgroup and --splice-proxy-cgroup go together")
	}
	if cfg.MetricsAddr != "" {
		_, port, err := net.SplitHostPort(cfg.MetricsAddr)
		if err != nil {
			t.Fatalf("--metrics-addr %q: %v", cfg.MetricsAddr, err)
		}
		if !slices.ContainsFunc(agentC.Ports, func(p corev1.ContainerPort) bool { return strconv.Itoa(int(p.ContainerPort)) == port }) {
			t.Errorf("the agent's metrics port %s is not declared", port)
		}
	}

	var proxyC *corev1.Container
	switch proxyKind {
	case "envoy":
		proxyC = container(t, spec.Containers, "envoy")
		checkEnvoy(t, spec, proxyC, xdsHost)
	case "nodemesh-proxy":
		proxyC = container(t, spec.Containers, "nodemesh-proxy")
		if len(spec.InitContainers) != 0 || slices.ContainsFunc(spec.Containers, func(c corev1.Container) bool { return c.Name == "envoy" }) {
			t.Error("the nodemesh-proxy variant still has Envoy's containers")
		}
		admin := checkNodemeshProxy(t, spec, proxyC, xdsHost)
		if admin == inbound || admin == outbound {
			t.Errorf("nodemesh-proxy's admin port %d is a listener port", admin)
		}
	}
	if len(spec.Containers) != 2 {
		t.Errorf("want the agent and one proxy, got %d containers", len(spec.Containers))
	}
	if sc := proxyC.SecurityContext; sc == nil || sc.Capabilities == nil || !slices.Contains(sc.Capabilities.Add, "NET_ADMIN") ||
		!slices.Contains(sc.Capabilities.Drop, "ALL") || (sc.Privileged != nil && *sc.Privileged) {
		t.Errorf("%s: want exactly CAP_NET_ADMIN (IP_TRANSPARENT, SO_MARK), got %+v", proxyC.Name, sc)
	}

	// Ports: with host networking every declared port is a host port; none
	// may take the proxy's listener ports, and none twice.
	seen := map[int32]string{}
	for _, c := range append(append([]corev1.Container{}, spec.InitContainers...), spec.Containers...) {
		for _, p := range c.Ports {
			if p.HostPort != 0 && p.HostPort != p.ContainerPort {
				t.Errorf("%s: port %s: hostPort %d differs from containerPort %d, which host networking does not allow", c.Name, p.Name, p.HostPort, p.ContainerPort)
			}
			if p.ContainerPort == inbound || p.ContainerPort == outbound {
				t.Errorf("%s: port %s (%d) collides with the proxy's transparent listeners (%d, %d)", c.Name, p.Name, p.ContainerPort, inbound, outbound)
			}
			if o, dup := seen[p.ContainerPort]; dup {
				t.Errorf("%s: port %d is also %s's", c.Name, p.ContainerPort, o)
			}
			seen[p.ContainerPort] = c.Name
		}
	}
}

var pinned = regexp.MustCompile(`^[a-z0-9./-]+(:v?[0-9]+\.[0-9]+\.[0-9]+(-[0-9A-Za-z.]+)?)?(@sha256:[0-9a-f]{64})?$`)

func checkImages(t *testing.T, spec corev1.PodSpec) {
	t.Helper()
	for _, c := range append(append([]corev1.Container{}, spec.InitContainers...), spec.Containers...) {
		img := c.Image
		m := pinned.FindStringSubmatch(img)
		if m == nil || (m[1] == "" && m[3] == "") || strings.Contains(img, "latest") {
			t.Errorf("%s: image %q is not pinned (want :vX.Y.Z or @sha256:...)", c.Name, img)
		}
		if c.ImagePullPolicy == corev1.PullAlways {
			t.Errorf("%s: imagePullPolicy Always with a pinned image", c.Name)
		}
	}
}

func container(t *testing.T, cs []corev1.Container, name string) *corev1.Container {
	t.Helper()
	for i := range cs {
		if cs[i].Name == name {
			return &cs[i]
		}
	}
	t.Fatalf("no container %q", name)
	return nil
}

// expand substitutes $(VAR) as the kubelet does, with the container's env
// (downward API values replaced by test values); an unknown variable is an
// error, since the kubelet would pass it through literally.
func expand(t *testing.T, c *corev1.Container, s string) string {
	t.Helper()
	vals := map[string]string{}
	for _, e := range c.Env {
		switch {
		case e.ValueFrom != nil && e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "spec.nodeName":
			vals[e.Name] = testNode
		case e.ValueFrom != nil && e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "status.hostIP":
			vals[e.Name] = testNodeIP
		case e.ValueFrom == nil:
			vals[e.Name] = e.Value
		}
	}
	return regexp.MustCompile(`\$\(([A-Za-z_][A-Za-z0-9_]*)\)`).ReplaceAllStringFunc(s, func(ref string) string {
		name := ref[2 : len(ref)-1]
		v, ok := vals[name]
		if !ok {
			t.Errorf("%s: %s refers to no env variable of the container", c.Name, ref)
		}
		return v
	})
}

func expandAll(t *testing.T, c *corev1.Container, args []string) []string {
	out := make([]string, len(args))
	for i, a := range args {
		out[i] = expand(t, c, a)
	}
	return out
}

// agentArgs is what the agent's arguments say: agent.Config, parsed with
// the agent's own flags, and the flags cmd/nodemesh-agent adds.
type agentArgs struct {
	agent.Config
	splicePods, spliceProxy string // cgroup v2 directories; "" for no splice
}

// agentConfig parses the agent container's arguments with the agent's own
// flags (cmd/nodemesh-agent adds --debug, --bpf-hook and the splice's
// cgroups).
func agentConfig(t *testing.T, c *corev1.Container) agentArgs {
	t.Helper()
	if !slices.Equal(c.Command, []string{"nodemesh-agent"}) {
		t.Fatalf("agent command %v, want [nodemesh-agent]", c.Command)
	}
	var cfg agentArgs
	fs := pflag.NewFlagSet("nodemesh-agent", pflag.ContinueOnError)
	cfg.BindFlags(fs)
	fs.Bool("debug", false, "")
	fs.String("bpf-hook", "", "")
	fs.StringVar(&cfg.splicePods, "splice-pods-cgroup", "", "")
	fs.StringVar(&cfg.spliceProxy, "splice-proxy-cgroup", "", "")
	if err := fs.Parse(expandAll(t, c, c.Args)); err != nil {
		t.Fatalf("agent args %v: %v", c.Args, err)
	}
	if fs.NArg() != 0 {
		t.Fatalf("agent args: unexpected %v", fs.Args())
	}
	cfg.Defaults()
	if err := cfg.Validate(); err != nil {
		t.Fatalf("agent args %v: %v", c.Args, err)
	}
	if cfg.NodeName != testNode {
		t.Errorf("--node-name is %q, want the node's name from the downward API", cfg.NodeName)
	}
	return cfg
}

// mountOf returns the volume mount of c that holds path and path relative
// to it.
func mountOf(t *testing.T, c *corev1.Container, path string) (corev1.VolumeMount, string) {
	t.Helper()
	var best corev1.VolumeMount
	rel := ""
	for _, m := range c.VolumeMounts {
		r, err := filepath.Rel(m.MountPath, path)
		if err != nil || r == ".." || strings.HasPrefix(r, "../") {
			continue
		}
		if len(m.MountPath) > len(best.MountPath) {
			best, rel = m, r
		}
	}
	if best.Name == "" {
		t.Fatalf("%s: %s is on no volume mount", c.Name, path)
	}
	return best, filepath.Join(best.SubPath, rel)
}

func volumeAt(t *testing.T, spec corev1.PodSpec, c *corev1.Container, path string) corev1.Volume {
	t.Helper()
	m, _ := mountOf(t, c, path)
	for _, v := range spec.Volumes {
		if v.Name == m.Name {
			return v
		}
	}
	t.Fatalf("%s: mount %s names no volume %q", c.Name, m.MountPath, m.Name)
	return corev1.Volume{}
}

// hostPathOf is where path in container c is on the node; it must be on a
// hostPath volume.
func hostPathOf(t *testing.T, spec corev1.PodSpec, c *corev1.Container, path string) string {
	t.Helper()
	v := volumeAt(t, spec, c, path)
	if v.HostPath == nil {
		t.Fatalf("%s: %s is not on a hostPath volume", c.Name, path)
	}
	_, rel := mountOf(t, c, path)
	return filepath.Join(v.HostPath.Path, rel)
}

// checkEnvoy runs the init container's command (meshctl, built from this
// tree) and checks the bootstrap it writes: the node's name, the agent's
// socket as the Envoy container sees it, at the path Envoy reads.
func checkEnvoy(t *testing.T, spec corev1.PodSpec, envoy *corev1.Container, xdsHost string) {
	t.Helper()
	if len(spec.InitContainers) != 1 {
		t.Fatalf("want one init container (the bootstrap), got %d", len(spec.InitContainers))
	}
	init := &spec.InitContainers[0]
	if len(init.Command) != 3 || init.Command[0] != "/bin/sh" || init.Command[1] != "-c" {
		t.Fatalf("init container command %q: want /bin/sh -c SCRIPT", init.Command)
	}
	m := regexp.MustCompile(`^meshctl (envoy bootstrap [^>]*) > (\S+)$`).FindStringSubmatch(init.Command[2])
	if m == nil {
		t.Fatalf("init container script %q: want 'meshctl envoy bootstrap ... > FILE'", init.Command[2])
	}
	var args []string
	for _, f := range strings.Fields(m[1]) {
		f = strings.Trim(f, `"`)
		if f == "$NODE_NAME" {
			if !slices.ContainsFunc(init.Env, func(e corev1.EnvVar) bool {
				return e.Name == "NODE_NAME" && e.ValueFrom != nil && e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "spec.nodeName"
			}) {
				t.Fatal("the init container's NODE_NAME is not the downward API's spec.nodeName")
			}
			f = testNode
		}
		args = append(args, f)
	}
	out, err := exec.Command(meshctl(t), args...).Output()
	if err != nil {
		t.Fatalf("meshctl %v: %v", args, err)
	}
	var b bootstrapv3.Bootstrap
	if err := protojson.Unmarshal(out, &b); err != nil {
		t.Fatalf("meshctl %v does not print an Envoy bootstrap: %v", args, err)
	}
	if b.GetNode().GetId() != testNode {
		t.Errorf("bootstrap node.id %q, want the node's name %q", b.GetNode().GetId(), testNode)
	}
	pipes := 0
	for _, c := range b.GetStaticResources().GetClusters() {
		for _, lle := range c.GetLoadAssignment().GetEndpoints() {
			for _, lb := range lle.GetLbEndpoints() {
				p := lb.GetEndpoint().GetAddress().GetPipe().GetPath()
				if p == "" {
					continue
				}
				pipes++
				if got := hostPathOf(t, spec, envoy, p); got != xdsHost {
					t.Errorf("bootstrap cluster %s: %s in the envoy container is %s on the node; the agent serves %s", c.GetName(), p, got, xdsHost)
				}
			}
		}
	}
	if pipes == 0 {
		t.Error("the bootstrap names no unix socket of the agent")
	}

	// The file the init container writes is the one Envoy reads.
	written, writtenRel := mountOf(t, init, m[2])
	i := slices.Index(envoy.Args, "-c")
	if i < 0 || i+1 >= len(envoy.Args) {
		t.Fatalf("envoy args %v: no -c BOOTSTRAP", envoy.Args)
	}
	read, readRel := mountOf(t, envoy, envoy.Args[i+1])
	if written.Name != read.Name || writtenRel != readRel {
		t.Errorf("the init container writes %s (volume %s, %s); Envoy reads %s (volume %s, %s)", m[2], written.Name, writtenRel, envoy.Args[i+1], read.Name, readRel)
	}
	if v := volumeAt(t, spec, envoy, envoy.Args[i+1]); v.EmptyDir == nil {
		t.Errorf("the bootstrap volume %s: want an emptyDir (the pod's own), got %+v", v.Name, v.VolumeSource)
	}
}

// checkNodemeshProxy parses the container's arguments with the proxy's own
// flags; it returns the admin port.
func checkNodemeshProxy(t *testing.T, spec corev1.PodSpec, c *corev1.Container, xdsHost string) int32 {
	t.Helper()
	if !slices.Equal(c.Command, []string{"nodemesh-proxy"}) {
		t.Fatalf("nodemesh-proxy command %v", c.Command)
	}
	var cfg proxy.Config
	fs := pflag.NewFlagSet("nodemesh-proxy", pflag.ContinueOnError)
	cfg.BindFlags(fs)
	fs.Bool("debug", false, "")
	if err := fs.Parse(expandAll(t, c, c.Args)); err != nil {
		t.Fatalf("nodemesh-proxy args %v: %v", c.Args, err)
	}
	cfg.Defaults()
	if err := cfg.Validate(); err != nil {
		t.Fatalf("nodemesh-proxy args %v: %v", c.Args, err)
	}
	if cfg.NodeID != testNode {
		t.Errorf("--node-id %q, want the node's name", cfg.NodeID)
	}
	sock, ok := strings.CutPrefix(cfg.XDSAddress, "unix://")
	if !ok {
		t.Fatalf("xDS address %q: want the agent's unix socket", cfg.XDSAddress)
	}
	if got := hostPathOf(t, spec, c, sock); got != xdsHost {
		t.Errorf("nodemesh-proxy's xDS socket %s is %s on the node; the agent serves %s", sock, got, xdsHost)
	}
	_, port, err := net.SplitHostPort(cfg.AdminAddress)
	if err != nil {
		t.Fatalf("admin address %q: %v", cfg.AdminAddress, err)
	}
	admin, _ := strconv.Atoi(port)
	if rp := c.ReadinessProbe; rp == nil || rp.HTTPGet == nil || rp.HTTPGet.Path != "/ready" || rp.HTTPGet.Port.IntValue() != admin {
		t.Errorf("readiness probe %+v: want GET /ready on the admin port %d", rp, admin)
	}
	return int32(admin)
}

var meshctlBuild struct {
	once sync.Once
	path string
	err  error
}

// meshctl builds ./cmd/meshctl once per test binary.
func meshctl(t *testing.T) string {
	t.Helper()
	meshctlBuild.once.Do(func() {
		dir, err := os.MkdirTemp("", "manifests-meshctl")
		if err != nil {
			meshctlBuild.err = err
			return
		}
		out := filepath.Join(dir, "meshctl")
		cmd := exec.Command("go", "build", "-o", out, "../cmd/meshctl")
		if b, err := cmd.CombinedOutput(); err != nil {
			meshctlBuild.err = fmt.Errorf("go build ../cmd/meshctl: %v: %s", err, b)
			return
		}
		meshctlBuild.path = out
	})
	if meshctlBuild.err != nil {
		t.Fatal(meshctlBuild.err)
	}
	return meshctlBuild.path
}

func TestMain(m *testing.M) {
	code := m.Run()
	if meshctlBuild.path != "" {
		os.RemoveAll(filepath.Dir(meshctlBuild.path))
	}
	os.Exit(code)
}

// ---- a JSON patch subset: test, replace, remove ----

type patchOp struct {
	Op    string          `json:"op"`
	Path  string          `json:"path"`
	Value json.RawMessage `json:"value,omitempty"`
}

func (op patchOp) apply(doc any) (any, error) {
	if !strings.HasPrefix(op.Path, "/") {
		return nil, fmt.Errorf("path %q: want a JSON pointer", op.Path)
	}
	tokens := strings.Split(op.Path[1:], "/")
	for i, tok := range tokens {
		tokens[i] = strings.NewReplacer("~1", "/", "~0", "~").Replace(tok)
	}
	parent, err := walk(doc, tokens[:len(tokens)-1])
	if err != nil {
		return nil, err
	}
	last := tokens[len(tokens)-1]
	var val any
	if op.Op != "remove" {
		if err := json.Unmarshal(op.Value, &val); err != nil {
			return nil, fmt.Errorf("value: %w", err)
		}
	}
	switch p := parent.(type) {
	case map[string]any:
		cur, ok := p[last]
		if !ok {
			return nil, fmt.Errorf("no member %q", last)
		}
		switch op.Op {
		case "test":
			return doc, testEqual(cur, val)
		case "replace":
			p[last] = val
		case "remove":
			delete(p, last)
		default:
			return nil, fmt.Errorf("op %q is not supported here", op.Op)
		}
		return doc, nil
	case []any:
		i, err := strconv.Atoi(last)
		if err != nil || i < 0 || i >= len(p) {
			return nil, fmt.Errorf("index %q out of range (%d elements)", last, len(p))
		}
		switch op.Op {
		case "test":
			return doc, testEqual(p[i], val)
		case "replace":
			p[i] = val
			return doc, nil
		case "remove":
			// The slice shrinks: write it back into its parent.
			return replaceAt(doc, tokens[:len(tokens)-1], slices.Delete(slices.Clone(p), i, i+1))
		default:
			return nil, fmt.Errorf("op %q is not supported here", op.Op)
		}
	default:
		return nil, fmt.Errorf("%s: parent is not an object or array", op.Path)
	}
}

func walk(doc any, tokens []string) (any, error) {
	cur := doc
	for _, tok := range tokens {
		switch c := cur.(type) {
		case map[string]any:
			next, ok := c[tok]
			if !ok {
				return nil, fmt.Errorf("no member %q", tok)
			}
			cur = next
		case []any:
			i, err := strconv.Atoi(tok)
			if err != nil || i < 0 || i >= len(c) {
				return nil, fmt.Errorf("index %q out of range", tok)
			}
			cur = c[i]
		default:
			return nil, fmt.Errorf("%q: not an object or array", tok)
		}
	}
	return cur, nil
}

func replaceAt(doc any, tokens []string, val any) (any, error) {
	if len(tokens) == 0 {
		return val, nil
	}
	parent, err := walk(doc, tokens[:len(tokens)-1])
	if err != nil {
		return nil, err
	}
	last := tokens[len(tokens)-1]
	switch p := parent.(type) {
	case map[string]any:
		p[last] = val
	case []any:
		i, _ := strconv.Atoi(last)
		p[i] = val
	}
	return doc, nil
}

func testEqual(got, want any) error {
	g, _ := json.Marshal(got)
	w, _ := json.Marshal(want)
	if !bytes.Equal(g, w) {
		return fmt.Errorf("test failed: %s, want %s", g, w)
	}
	return nil
}

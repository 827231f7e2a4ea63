// Package vcluster builds a virtual Kubernetes-like cluster on one Linux
// machine: every node and every pod is a network namespace, so the datapath,
// L7 redirect, mTLS, WireGuard and Kubernetes work can be proved end to end
// without VMs or containers.
//
// Topology (all of it outside the root namespace, which gets no address and
// no route; nothing leads off the machine):
//
//	switch netns: bridge br0 ── sw-<hash> ─┬─ eth0 node-1 netns (192.168.10.1/24, ip_forward=1)
//	                                      │    ├─ lxc<hash> ══ eth0 pod netns (10.0.1.1/32)
//	                                      │    └─ route 10.0.2.0/24 via 192.168.10.2
//	                                      └─ eth0 node-2 netns ...
//
// Pods are wired Calico style: the pod's eth0 has its /32 and a default route
// via 169.254.1.1; the host-side veth has no address, MAC ee:ee:ee:ee:ee:ee
// and proxy_arp=1, and the node routes the pod's /32 to it. Because a node
// has no default route, proxy ARP would not answer for 169.254.1.1, so the
// pod gets a permanent neighbour entry for it instead. IPv6 is off in every
// namespace of the cluster (the cluster is IPv4 only, and captures then show
// only the traffic a test makes).
//
// Every pod also gets a cgroup v2 directory, in a cgroup2 hierarchy that
// vcluster mounts at /run/nodemesh-cgroup2 (the machines mount cgroup v1 at
// /sys/fs/cgroup):
//
//	/run/nodemesh-cgroup2/nodemesh-<cluster>/          Cluster.CgroupPath
//	    <node>/                                        Node.CgroupPath: the node's pods only
//	        <namespace>_<pod>/                         Pod.CgroupPath
//	    host_<node>/                                   Node.HostCgroupPath: Node.Run/Start programs
//
// Pod.Start and Pod.Exec run programs inside both the pod's network namespace
// and its cgroup (clone3 with CLONE_INTO_CGROUP), so BPF sockops attached to a
// pod's or a node's directory see every socket the pod opens; attached to the
// cluster's directory, they also see the nodes' own programs.
//
// Object names all start with the cluster name, so two runs coexist. A run
// records its owner (pid and start time) under /run/nodemesh-vcluster before
// it creates anything; Close removes everything, CleanupOnSignal closes live
// clusters on SIGINT/SIGTERM, and Sweep removes what runs that died left
// behind. Tests use NewForTest, which does all three.
package vcluster

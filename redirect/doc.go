// Package redirect will steer flows that an L7 rule covers to the node's
// proxy (bpf_sk_assign or TPROXY) and splice same-node sockets with
// sockops/sk_msg.
//
// Status: not yet implemented (issue 4). It acts on the ActionRedirect
// entries of policy.Table.
package redirect

"""libvirt's RPC protocol in front of libvirtd: framing, the XDR of the calls hookd
intercepts, the upstream socket choice, the proxy that relays and intercepts, and its
policy callback. Only the callback knows of policy; the framing knows of nothing.
"""

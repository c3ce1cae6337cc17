"""The qemu hook's path into hookd: the shim's wire format, the hook socket server and
the handler that answers each hook call. It never calls libvirt: the hook that asked
holds the domain's lock.
"""

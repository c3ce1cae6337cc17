"""hookd's libvirt client side: the worker process (the only libvirt client of hookd),
its supervisor in the daemon, the reconciler of saved definitions and the boot key of a
running QEMU. Only the worker process makes blocking libvirt calls.
"""

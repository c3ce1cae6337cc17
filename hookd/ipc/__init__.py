"""hookd's own local protocols and the systemd ones: the JSON framing between the
daemon, its libvirt worker and hookctl, and sd_notify/socket activation.
"""

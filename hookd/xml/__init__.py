"""Reading and editing libvirt domain XML: the hardened parser and one module per XML concern
(domain identity, SMBIOS sysinfo, Nova metadata), each with its paths beside its parse and
set functions. Nothing here decides a serial or does I/O.
"""

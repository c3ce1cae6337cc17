"""hookd: per-instance SMBIOS system serials for OpenStack Nova guests.

The version lives here and only here; setup.cfg, the CLIs and the packages read it.
"""

__version__ = "0.2.0"

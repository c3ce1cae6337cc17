"""Where hookd keeps state: pins (SQLite or etcd) and the host's audit log. Stores decide
nothing.
"""

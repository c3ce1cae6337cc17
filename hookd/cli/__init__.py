"""`hookctl`, the operator's command line: main (the parser and entry point), one module
per group of commands (explain, shim, audit, status, pins with pinfile), common (what
they share), and the doctor package.

Imports run one way: main imports the command modules and doctor; they import common
(and doctor's checks import shim for the shim's settings format); nothing here imports
main. The package must not hold policy logic (decisions come from hookd.decision) nor
be imported by the daemon.
"""

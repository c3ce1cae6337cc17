"""`hookctl`, the operator's command line: its commands, `doctor`, and pin files.
"""

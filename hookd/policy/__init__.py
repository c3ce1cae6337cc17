"""The serial policy: plain data types (model) and the rules that turn them into a
SerialDecision (serial). Nothing here imports lxml, reads a file or opens a socket.
"""

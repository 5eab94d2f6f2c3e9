"""Monitoring: reference profiles, drift tests, out-of-distribution scores, the request log and feedback (a
server extension, serve/extensions.py), and the offline `foundry monitor` analysis."""

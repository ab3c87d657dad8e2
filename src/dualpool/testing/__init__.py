"""Tools for testing dualpool's reliability: `faultproxy` (a TCP fault injector)."""

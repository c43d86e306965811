"""Stand-ins of vendor modules that are not installable here, for the tests (not for use)."""

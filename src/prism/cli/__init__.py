"""The `prism` command line: one module per command group; each only parses and calls the library."""

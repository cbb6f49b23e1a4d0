"""pe_server."""

"""pe_client."""

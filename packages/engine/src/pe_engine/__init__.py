"""pe_engine."""

"""pe_common: wire schema and tensor codec shared by the pe server, engine and client."""

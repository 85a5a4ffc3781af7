"""The live gateway: the NFQUEUE reader, its kernel adapters, status and configuration."""

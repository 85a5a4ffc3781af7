"""The namespace lab: reproduces client-side and server-side FTP NAT failures, then shows a
gateway fixing them. topology.json describes it; provision/ holds the per-node scripts shared
with the Vagrant backend (see provision/README.md)."""

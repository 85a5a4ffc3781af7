"""ftp-alg: a transparent FTP application-level gateway for Linux NAT routers."""

__version__ = "0.1.0"

"""Anonymous pyftpdlib server for the lab: read everywhere, write only in upload/.

`python -m pyftpdlib -w` would give anonymous write access to the whole root; the lab wants
the same layout as its vsftpd (read-only root, writable upload/), so any client works with
no set-up and a test can only ever write where it is meant to. Listening on "::" serves IPv4
too (as mapped addresses), like vsftpd's listen_ipv6=YES.
"""

from __future__ import annotations

import argparse
import os

from pyftpdlib.authorizers import DummyAuthorizer
from pyftpdlib.handlers import FTPHandler
from pyftpdlib.servers import FTPServer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--root", required=True, help="served directory (has upload/)")
    parser.add_argument("--port", type=int, default=2121)
    parser.add_argument("--address", default="::")
    parser.add_argument("--passive-ports", default="30050-30099", help="FROM-TO")
    args = parser.parse_args()

    low, high = (int(p) for p in args.passive_ports.split("-"))
    authorizer = DummyAuthorizer()
    authorizer.add_anonymous(args.root, perm="elr")
    upload = os.path.join(args.root, "upload")
    authorizer.override_perm("anonymous", upload, perm="elradfmw", recursive=True)

    handler = FTPHandler
    handler.authorizer = authorizer
    handler.passive_ports = list(range(low, high + 1))
    handler.banner = "pyftpdlib lab server ready."
    server = FTPServer((args.address, args.port), handler)
    server.serve_forever()


if __name__ == "__main__":
    main()

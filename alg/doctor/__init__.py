"""`ftp-alg doctor`: look at a router and say why FTP fails there, each finding with its fix.

facts.py holds what is gathered (and parses the texts it comes from), checks.py the pure checks,
gather.py reads the system, command.py prints.
"""

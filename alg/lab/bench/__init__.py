"""`ftp-alg lab bench`: the run (run.py), its figures and targets (figures.py), its chart."""

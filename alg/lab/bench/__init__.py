"""`ftp-alg lab bench`: the run (run.py), its hold on a lab (lab.py), the throughput phase
(throughput.py), sessions across a restart and a failover (survive.py), its figures and
targets (figures.py), its chart."""

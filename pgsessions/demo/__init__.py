"""`pgsessions demo`: a live agent workload over a replicated cluster, everything measured."""

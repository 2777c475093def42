"""MPI scale-out of the fit: rank detection (comm), dynamic unit scheduling (scheduler), per-rank shard
files assembled into HDF5 virtual datasets (shards). ``brainalign.fit.run_fit`` uses them; results never
depend on the rank count."""

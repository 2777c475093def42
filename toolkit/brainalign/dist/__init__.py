"""Scale-out of the fit: MPI detection (comm), dynamic unit scheduling (scheduler), shard files and
virtual datasets (shards). ``brainalign.fit.run_fit`` uses them; results never depend on the rank count."""

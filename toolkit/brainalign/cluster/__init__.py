"""Cluster launch: the stage plan of a study (plan), cluster profiles (profile), sbatch rendering (sbatch)
and submission through submitit/SLURM (submit). ``brainalign submit`` is its CLI verb."""

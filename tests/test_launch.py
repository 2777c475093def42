"""brainalign.launch: the one reader of the launcher's environment (log lines, the fit's MPI, finetune's DDP)."""
from brainalign.launch import Task, this_task


def test_no_launcher():
    assert this_task({}) == Task()


def test_mpi_launchers_and_their_step():
    t = this_task({"PMI_RANK": "2", "PMI_SIZE": "4", "MPI_LOCALRANKID": "1", "SLURM_PROCID": "0",
                   "SLURM_NTASKS": "8"})
    assert (t.rank, t.size, t.local_rank, t.launcher, t.step_size) == (2, 4, 1, "mpi", 4)
    t = this_task({"OMPI_COMM_WORLD_RANK": "1", "OMPI_COMM_WORLD_SIZE": "3", "OMPI_COMM_WORLD_LOCAL_RANK": "1"})
    assert (t.rank, t.size, t.local_rank, t.launcher, t.step_size) == (1, 3, 1, "mpi", 3)
    assert this_task({"PMIX_RANK": "0"}).step_size == 0                  # a launcher that does not say


def test_srun_step_versus_an_sbatch_script():
    step = this_task({"SLURM_PROCID": "3", "SLURM_NTASKS": "4", "SLURM_LOCALID": "1", "SLURM_STEP_NUM_TASKS": "4",
                      "SLURM_NTASKS_PER_NODE": "2(x2)", "SLURM_JOB_ID": "77", "SLURM_ARRAY_TASK_ID": "5"})
    assert (step.rank, step.size, step.local_rank, step.launcher, step.step_size) == (3, 4, 1, "srun", 4)
    assert (step.per_node, step.job_id, step.array_task) == (2, "77", "5")
    script = this_task({"SLURM_PROCID": "0", "SLURM_NTASKS": "4"})     # the batch script itself: no MPI step
    assert (script.rank, script.size, script.step_size) == (0, 4, None)


def test_torchrun_wins_over_srun():
    t = this_task({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "SLURM_PROCID": "0", "SLURM_NTASKS": "1"})
    assert (t.rank, t.size, t.local_rank, t.launcher) == (1, 2, 1, "torchrun")


def test_consumers_read_it(monkeypatch):
    from brainalign import finetune
    from brainalign.sharding.comm import launcher_size

    for k in ("PMI_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "RANK",
              "WORLD_SIZE", "LOCAL_RANK", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", "SLURM_STEP_NUM_TASKS"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("SLURM_PROCID", "1")
    monkeypatch.setenv("SLURM_NTASKS", "2")
    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "2")
    assert finetune.dist_env() == (1, 2, 0) and launcher_size() == 2

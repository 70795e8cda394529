"""Site profiles: fresh configs with the three roles, option handling, and real Parsl runs."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import parsl
import pytest
from parsl.errors import NoDataFlowKernelError
from parsl.executors import HighThroughputExecutor, ThreadPoolExecutor

from otfparsl.errors import SiteError
from otfparsl.workflow.site import (
    ROLES,
    build_config,
    check_site,
    format_report,
    load_site,
    open_site,
)
from otfparsl.workflow.site_options import parse_site_options

SITES_DIR = Path(__file__).resolve().parents[2] / "sites"
SITE_NAMES = ("local_threads", "local_htex", "slurm_l40s", "slurm_a100")


def site(name: str) -> Path:
    return SITES_DIR / f"{name}.py"


@pytest.fixture(autouse=True)
def _no_site_env(monkeypatch):
    """Tests see only the OTFPARSL_SITE_* variables they set themselves."""
    for key in list(os.environ):
        if key.startswith("OTFPARSL_SITE_"):
            monkeypatch.delenv(key)


def executors(config) -> dict:
    return {e.label: e for e in config.executors}


@pytest.mark.parametrize("name", SITE_NAMES)
def test_every_site_builds_a_fresh_config_with_the_three_roles(name, tmp_path):
    first = build_config(site(name), tmp_path)
    second = build_config(site(name), tmp_path)
    assert first is not second
    assert sorted(executors(first)) == sorted(ROLES) == sorted(executors(second))
    for role in ROLES:
        assert executors(first)[role] is not executors(second)[role]
    assert Path(first.run_dir) == tmp_path / "runinfo"
    assert isinstance(executors(first)["local"], ThreadPoolExecutor)
    module = load_site(site(name))
    assert not any(isinstance(v, parsl.config.Config) for v in vars(module).values())


def test_local_threads_pool_sizes_follow_options(tmp_path):
    ex = executors(build_config(site("local_threads"), tmp_path, {"chain_threads": "3"}))
    assert (ex["chains"].max_threads, ex["dft"].max_threads, ex["local"].max_threads) == (3, 1, 1)


def test_local_htex_one_worker_per_visible_gpu_else_cpu_workers(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    chains = executors(build_config(site("local_htex"), tmp_path))["chains"]
    assert chains.available_accelerators == ["2", "3"] and chains.max_workers_per_node == 2
    assert chains.address == chains.loopback_address == "127.0.0.1"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    chains = executors(build_config(site("local_htex"), tmp_path, {"chain_workers": "3"}))["chains"]
    assert chains.available_accelerators == [] and chains.max_workers_per_node == 3


def test_slurm_l40s_requests_eight_gpus_and_srun_for_dft(tmp_path):
    ex = executors(build_config(site("slurm_l40s"), tmp_path, {"account": "abc123", "gpu_partition": "gpu", "cpu_partition": "cpu"}))
    chains, dft = ex["chains"], ex["dft"]
    assert isinstance(chains, HighThroughputExecutor)
    assert chains.available_accelerators == [str(i) for i in range(8)]
    assert "--gres=gpu:8" in chains.provider.scheduler_options
    assert "--partition=gpu" in chains.provider.scheduler_options
    assert "--partition=cpu" in dft.provider.scheduler_options
    assert "--account=abc123" in dft.provider.scheduler_options
    assert "--gres" not in dft.provider.scheduler_options
    assert "OTFPARSL_MPI_COMMAND='srun -n 32'" in dft.provider.worker_init
    assert type(dft.provider.launcher).__name__ == "SimpleLauncher"


def test_gpus_per_node_zero_drops_the_gpu_request(tmp_path):
    ex = executors(build_config(site("slurm_l40s"), tmp_path, {"gpus_per_node": "0", "chain_workers": "2"}))
    assert "gpu" not in ex["chains"].provider.scheduler_options
    assert ex["chains"].available_accelerators == [] and ex["chains"].max_workers_per_node == 2


def test_slurm_a100_shares_two_gpus_between_eight_chain_workers(tmp_path):
    chains = executors(build_config(site("slurm_a100"), tmp_path))["chains"]
    assert "--gres=gpu:2" in chains.provider.scheduler_options
    # Parsl maps worker id k to GPU k // (8 workers / 2 GPUs): workers 0-3 -> 0, 4-7 -> 1.
    ids = [int(a) for a in chains.available_accelerators]
    assert [k // (len(ids) // 2) for k in ids] == [0, 0, 0, 0, 1, 1, 1, 1]
    assert "nvidia-smi" in chains.provider.worker_init
    single = executors(build_config(site("slurm_a100"), tmp_path, {"chains_per_gpu": "1"}))["chains"]
    assert len(single.available_accelerators) == 2 and "nvidia-smi" not in single.provider.worker_init


def test_environment_options_apply_and_explicit_options_win(tmp_path, monkeypatch):
    monkeypatch.setenv("OTFPARSL_SITE_ACCOUNT", "fromenv")
    monkeypatch.setenv("OTFPARSL_SITE_WALLTIME", "00:05:00")
    dft = executors(build_config(site("slurm_l40s"), tmp_path))["dft"]
    assert "--account=fromenv" in dft.provider.scheduler_options and dft.provider.walltime == "00:05:00"
    dft = executors(build_config(site("slurm_l40s"), tmp_path, {"account": "given"}))["dft"]
    assert "--account=given" in dft.provider.scheduler_options
    monkeypatch.setenv("OTFPARSL_SITE_CORES_PER_DFT", "many")
    with pytest.raises(SiteError, match=r"cores_per_dft.*OTFPARSL_SITE_CORES_PER_DFT.*int.*'many'"):
        build_config(site("slurm_l40s"), tmp_path)


@pytest.mark.parametrize(
    ("options", "pattern"),
    [
        ({"acount": "x"}, r"no option 'acount'.*Did you mean 'account'"),
        ({"gpus_per_node": "eight"}, r"gpus_per_node.*must be int; got 'eight'"),
        ({"gpus_per_node": "-1"}, r"gpus_per_node.*must be >= 0; got -1"),
        ({"walltime": "2h"}, r"walltime.*\[D-\]HH:MM:SS; got '2h'"),
        ({"exclusive": "maybe"}, r"exclusive.*true/false.*'maybe'"),
    ],
)
def test_bad_options_raise_site_error_naming_the_problem(options, pattern, tmp_path):
    with pytest.raises(SiteError, match=pattern):
        build_config(site("slurm_l40s"), tmp_path, options)


def test_parse_site_options():
    assert parse_site_options(["account=abc", "gpus-per-node = 0", "worker_init=a=b"]) == {
        "account": "abc", "gpus_per_node": "0", "worker_init": "a=b"}
    with pytest.raises(SiteError, match="key=value"):
        parse_site_options(["account"])
    with pytest.raises(SiteError, match="given twice"):
        parse_site_options(["a=1", "a=2"])


def write_site(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "custom_site.py"
    path.write_text(textwrap.dedent(body))
    return path


def test_malformed_sites_raise_site_error(tmp_path):
    with pytest.raises(SiteError, match="does not exist.*local_threads.py"):
        load_site(SITES_DIR / "local_thread.py")
    with pytest.raises(SiteError, match="no function make_config"):
        load_site(write_site(tmp_path, "X = 1\n"))
    with pytest.raises(SiteError, match="make_config failed.*boom"):
        build_config(write_site(tmp_path, "def make_config(run_dir, **o):\n    raise RuntimeError('boom')\n"), tmp_path)
    two_roles = """
        from parsl.config import Config
        from parsl.executors import ThreadPoolExecutor
        def make_config(run_dir, **options):
            return Config(executors=[ThreadPoolExecutor(label="chains"), ThreadPoolExecutor(label="gpu")])
    """
    with pytest.raises(SiteError, match=r"missing: \['dft', 'local'\], extra: \['gpu'\]"):
        build_config(write_site(tmp_path, two_roles), tmp_path)


def test_open_site_cleans_up_even_when_the_body_fails(tmp_path):
    with pytest.raises(RuntimeError, match="inside"):
        with open_site(site("local_threads"), tmp_path) as opened:
            assert opened.submit("local", os.getpid).result(timeout=30) == os.getpid()
            raise RuntimeError("inside")
    with pytest.raises(NoDataFlowKernelError):
        parsl.dfk()
    with open_site(site("local_threads"), tmp_path) as opened:  # a second open works
        with pytest.raises(SiteError, match="unknown role 'gpu'"):
            opened.submit("gpu", os.getpid)
    assert (tmp_path / "runinfo").is_dir()


def test_check_site_local_threads_runs_in_this_process(tmp_path):
    reports = check_site(site("local_threads"), tmp_path, timeout_s=60)
    assert [r.role for r in reports] == list(ROLES)
    assert all(r.ok and r.pid == os.getpid() and r.slurm_job_id is None for r in reports)
    assert all(r.cuda_device_count == 0 for r in reports)  # torch is importable, no GPU here
    assert format_report(reports)[-1] == "3/3 roles ok"


@pytest.mark.slow
def test_check_site_local_htex_runs_real_worker_processes_pinned_to_accelerators(tmp_path):
    reports = {r.role: r for r in check_site(
        site("local_htex"), tmp_path, {"accelerators": "0,1"}, timeout_s=120)}
    assert all(r.ok for r in reports.values()), format_report(list(reports.values()))
    assert reports["local"].pid == os.getpid()
    worker_pids = {reports["chains"].pid, reports["dft"].pid}
    assert len(worker_pids) == 2 and os.getpid() not in worker_pids
    assert reports["chains"].cuda_visible_devices in {"0", "1"}  # pinned by Parsl per worker
    assert reports["dft"].cuda_visible_devices == os.environ.get("CUDA_VISIBLE_DEVICES")

"""Shared fixtures: tiny configs on synthetic data, and the CLI in-process or as a process."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)

# small and fast: tiny widths, synthetic data, few steps
TINY = [
    "data.dataset=\"synthetic\"",
    "data.synthetic_train=256",
    "data.synthetic_test=128",
    "model.widths=[8,16,16]",
    "train.batch_size=64",
    "train.epochs=2",
    "train.compile=\"off\"",
    "whitening.num_images=128",
]


def tiny_sets(*more: str) -> list[str]:
    return [*TINY, *more]


@pytest.fixture
def cli(capsys):
    """Run ``hlb ARGS`` in-process through the real entry function: (code, out, err)."""
    from hlbcli.cli import main

    def run(*args: str):
        code = main([str(a) for a in args])
        cap = capsys.readouterr()
        return code, cap.out, cap.err

    return run


@pytest.fixture
def hlb_proc():
    """Run the installed ``hlb`` console script as a real process."""

    def run(*args: str, timeout: float = 300, env: dict | None = None, **kw):
        e = dict(os.environ)
        e.update(env or {})
        exe = Path(sys.executable).with_name("hlb")
        cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "hlbcli.cli"]
        return subprocess.run([*cmd, *map(str, args)], capture_output=True, text=True, timeout=timeout, env=e, **kw)

    return run


def set_args(sets: list[str]) -> list[str]:
    out = []
    for s in sets:
        out += ["--set", s]
    return out


def write_distribution(proj: Path, dist: str, package: str, modules: dict[str, str],
                       entry_points: dict[str, str], version: str = "0.1.0") -> Path:
    """A tiny installable distribution in ``proj``: the package ``package`` with ``modules``
    (module name -> source, ``__init__`` included) and ``entry_points`` in the ``hlb.tricks``
    group (name -> target); returns ``proj``, for :func:`pip_venv`."""
    (proj / package).mkdir(parents=True)
    for name, src in {"__init__": "", **modules}.items():
        (proj / package / f"{name}.py").write_text(textwrap.dedent(src))
    eps = "".join(f'{name} = "{target}"\n' for name, target in entry_points.items())
    (proj / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools>=68"]\nbuild-backend = "setuptools.build_meta"\n\n'
        f'[project]\nname = "{dist}"\nversion = "{version}"\n\n'
        f'[tool.setuptools]\npackages = ["{package}"]\n\n'
        f'[project.entry-points."hlb.tricks"]\n{eps}'
    )
    return proj


def pip_venv(root: Path, projects: list[Path]):
    """A virtual environment in ``root`` with ``projects`` installed by pip (one call, no index),
    that sees the packages of the environment running the tests (hlbcli, torch, pip,
    setuptools) through a .pth file; returns a runner of `python -m hlbcli.cli ARGS` in it
    (``run.root`` is ``root``, its working folder)."""
    env_dir = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], check=True)
    py = env_dir / "bin" / "python"
    # wherever they live: a venv made from a venv would only see the base interpreter's
    site_dir = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                              capture_output=True, text=True, check=True).stdout.strip()
    parent = [p for p in sys.path if p.endswith("-packages") and Path(p).is_dir()]
    # addsitedir, not a bare path: the .pth files there (an editable install's) take effect too
    lines = "".join(f"import site; site.addsitedir({p!r})\n" for p in parent)
    (Path(site_dir) / "_hlb_test_parent.pth").write_text(lines)
    res = subprocess.run(
        [str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index", *map(str, projects)],
        capture_output=True, text=True,
    )
    assert res.returncode == 0, res.stderr

    def run(*args, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run([str(py), "-m", "hlbcli.cli", *map(str, args)], capture_output=True, text=True,
                              timeout=timeout, cwd=root)

    run.root = root
    return run


# --- the two tiers -------------------------------------------------------------------------------
# The fast tier (`python -m pytest -m "not slow"`, README's first test command) runs every command
# once in a few minutes; the full suite (`python -m pytest`, what CI runs) adds what is listed here:
# each a test that trains many runs, starts a Ray head or a search, or bounds a time on a machine
# that may be loaded (`timing`). Listed in one place, by file and test name (a name covers all its
# parameters). Where a file is listed without names, every test in it is slow.
SLOW = {
    "test_search.py": {"test_the_confirmation_trains_fresh_seeds_and_writes_best_only_for_a_resolved_winner",
                       "test_a_stopped_search_resumes_with_no_trial_lost_or_run_twice",
                       "test_a_clearly_worse_trial_is_pruned_before_its_last_seed"},
    "test_ray.py": {"test_same_seeds_same_records_on_both_backends",
                    "test_a_worker_killed_mid_block_is_replaced_and_keeps_its_finished_runs",
                    "test_resume_on_ray_trains_only_what_is_missing",
                    "test_ctrl_c_cancels_the_tasks_keeps_finished_runs_and_resume_completes",
                    "test_a_search_on_ray_asks_and_tells_from_the_driver"},
    "test_faults_ray.py": set(),  # Ray heads, and time bounds that a loaded machine can break: timing
    "test_tracking.py": {"test_ablate_is_a_parent_run_with_arms_and_seeds_nested",
                         "test_bench_against_tracks_each_side_as_an_arm_in_the_order_they_ran"},
    "test_progress.py": {"test_ablate_and_bench_against_are_never_silent_and_say_where_the_running_run_is_when_piped"},
    "test_machine.py": {"test_ablate_resume_on_another_machine_is_one_warning_line"},
    "test_ablate_vary.py": {"test_vary_arm_on_the_ray_backend_and_its_resume",
                            "test_vary_arm_trains_the_changed_setting_resumes_and_summarises"},
    "test_trick_names.py": {"test_swap_ablation_on_the_local_backend", "test_qualified_name_in_a_preset_and_in_a_run",
                            "test_bare_name_means_the_builtin_and_qualified_names_pick",
                            "test_bare_name_of_two_distributions_is_an_error",
                            "test_every_command_that_loads_tricks_warns_once",
                            "test_two_tricks_of_one_name_cannot_both_be_active",
                            "test_list_shows_both_with_origins_and_warns"},
    "test_alternate.py": {"test_ctrl_c_stops_both_sides_and_keeps_the_finished_pairs"},
    "test_third_party.py": {"test_two_owners_of_a_first_result_hook_is_an_error", "test_broken_trick_is_one_clear_error",
                            "test_object_trick_with_its_own_optimizer_trains",
                            "test_trick_error_from_a_hook_is_one_line_and_exit_2",
                            "test_validate_hook_runs_in_ablate_dry_run",
                            "test_tricks_list_names_the_owner_of_each_first_result_hook"},
    "test_ablate.py": {"test_ctrl_c_keeps_finished_runs_and_prints_the_partial_table",
                       "test_a_failed_arm_is_reported_and_the_others_kept"},
    "test_faults_config.py": {"test_arms_train_the_plan_as_resolved_when_the_battery_started"},
    "test_sequential.py": {"test_resume_mid_way_trains_only_what_is_missing"},
    "test_fixture_packages.py": {"test_a_swapped_in_trick_and_a_tracker_through_an_ablation"},
    "test_gpu_bench.py": set(),
    "test_speed_paths.py": set(),
    "test_out_kinds.py": set(),
    "test_faults_ablate.py": set(),
    "test_interrupt.py": set(),
    "test_report_links.py": set(),
}
#: of :data:`SLOW`, the files whose tests bound a time (marked ``timing`` as well)
TIMING = {"test_faults_ray.py"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        file, name = item.path.name, getattr(item, "originalname", item.name)
        if file in SLOW and (not SLOW[file] or name in SLOW[file]):
            item.add_marker(pytest.mark.slow)
            if file in TIMING:
                item.add_marker(pytest.mark.timing)

"""The public API is explicit and pinned; importing lrjax never imports a CLI."""

from __future__ import annotations

import inspect
import pathlib
import subprocess
import sys

import lrjax

PUBLIC = {
    "CheckpointError", "Dataset", "DatasetError", "FitConfig", "FitResult",
    "GridResult", "Hook", "METHODS", "RangeTestResult", "Schedule", "SnapshotBuffer",
    "StopOnSignals", "TrainState", "accuracy_at", "classification_loss",
    "cosine_restart_steps", "cosine_restarts", "cyclic", "data_mesh",
    "ensemble_curve", "ensemble_predict", "evaluate", "exp_range",
    "exponential_sweep", "find_divergence", "fit", "init_buffer", "linear_sweep",
    "load_dataset", "lr_grid", "lr_range_test", "make_optimizer", "make_step",
    "member_probs", "cnn", "mlp", "plot_grid", "plot_learning_curves",
    "plot_range_test",
    "scale_images", "smooth", "snapshot_steps", "split_model", "step_decay",
    "suggest", "triangular", "triangular2",
    # 0.2: the recipe schedules and the recommendation
    "linear_decay", "one_cycle", "one_cycle_momentum", "warmup_cosine", "wsd",
    "Recipe", "recommend", "recipe_grid", "plot_recipe_grid", "update_batch_stats",
    # the range test through the user's own train step (#18 item 2)
    "step_range_test",
    # 0.3: the spec objects of the range test and the grid (#18)
    "Sweep", "Divergence", "Population", "Execution", "GridConfig",
    # 0.3: one hook protocol for every driver, the trigger apart (#18)
    "Trigger",
    # 0.3: the results' timings, memory and settings as typed records (#18)
    "Timings", "MemoryEstimate", "RangeTestSettings", "SweepOver", "GridSettings",
    "GridMemory",
    # 0.3: what a result's docs name, catchable and typed without lrjax._src
    "MemoryRefused", "SweepResult",
}  # fmt: skip
SPECS = ("Sweep", "Divergence", "Population", "Execution", "GridConfig")


# The public modules and their names; everything else lives in lrjax._src.
PUBLIC_MODULES = {
    "distributed": {"initialize", "is_main", "process_count", "process_index"},
    "hooks": {"ChunkEnd", "FitRun", "Hook", "ProgressBar", "ProgressLines", "Run",
              "StopOnSignals", "Trigger"},
    "models": {"CNN", "MLP", "Augment", "cnn", "mlp"},
    "recipes": {"AUTO_FAMILIES", "FAMILIES", "OPTIMIZER_KINDS", "PEAK_RULES", "SHAPES",
                "REFERENCE_STEPS", "PeakRule", "Recipe", "build_schedule",
                "optimizer_kind", "recommend", "unit_schedule"},
}  # fmt: skip


COMMAND_LINES = {"cli", "find", "grid", "train"}


def test_public_names_are_pinned():
    names = {n for n in dir(lrjax) if not n.startswith("_")}
    modules = {n for n in names if type(getattr(lrjax, n)).__name__ == "module"}
    assert names - modules == PUBLIC
    # the implementation is lrjax._src; the command lines are modules too once a
    # test has imported them (lrjax/__init__.py does not)
    assert set(PUBLIC_MODULES) <= modules <= {*PUBLIC_MODULES, *COMMAND_LINES}
    for name, public in PUBLIC_MODULES.items():
        module = getattr(lrjax, name)
        assert {n for n in vars(module) if not n.startswith("_")} == public, name


def test_every_public_function_has_a_runnable_example():
    """STYLE.md principle 11: a ``>>>`` example, which --doctest-modules runs."""
    functions = {
        name: getattr(lrjax, name)
        for name in dir(lrjax)
        if not name.startswith("_") and inspect.isfunction(getattr(lrjax, name))
    }
    assert {"fit", "lr_range_test", "suggest"} <= set(functions)  # sees the API
    missing = sorted(n for n, f in functions.items() if ">>>" not in (f.__doc__ or ""))
    assert not missing, f"public functions without a >>> example: {missing}"


def test_every_spec_has_a_runnable_example():
    """The specs are classes, which the test above does not see."""
    missing = [n for n in SPECS if ">>>" not in (getattr(lrjax, n).__doc__ or "")]
    assert not missing, f"specs without a >>> example: {missing}"


def test_import_does_not_load_the_command_lines():
    code = (
        "import sys, lrjax; "
        "print(sorted(m for m in sys.modules if m.startswith('lrjax.cli') "
        "or m in ('lrjax.find', 'lrjax.train', 'lrjax.grid')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True,
                         text=True, check=True)  # fmt: skip
    assert out.stdout.strip() == "[]"


def test_import_and_help_do_not_load_jax():
    """``import lrjax`` is lazy (PEP 562) and the command-line modules load JAX,
    optax, flax and matplotlib inside the functions that run after parsing, so
    ``--help`` answers at once; the first public name used imports its module."""
    code = (
        "import sys, lrjax\n"
        "from lrjax.cli import find, grid, train\n"
        "for cli in (find, grid, train):\n"
        "    try:\n"
        "        cli.main(['--help'])\n"
        "    except SystemExit:\n"
        "        pass\n"
        "heavy = ('jax', 'optax', 'flax', 'matplotlib', 'orbax')\n"
        "print(sorted(m for m in sys.modules if m.partition('.')[0] in heavy))\n"
        "lrjax.one_cycle\n"
        "print('jax' in sys.modules, 'lrjax._src.schedules' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True,
                         text=True, check=True)  # fmt: skip
    lines = out.stdout.strip().splitlines()
    assert lines[-2:] == ["[]", "True True"], out.stdout[-500:]


def test_the_lazy_table_is_what_type_checkers_see():
    """``lrjax._PUBLIC`` (what ``__getattr__`` imports) and the imports under
    ``TYPE_CHECKING`` (what mypy and editors read) name the same things."""
    import ast

    tree = ast.parse(pathlib.Path(lrjax.__file__).read_text())
    block = next(
        n
        for n in tree.body
        if isinstance(n, ast.If) and isinstance(n.body[0], ast.ImportFrom)
    )
    typed = {
        (node.module, alias.name)
        for node in block.body
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }
    table = {(f"lrjax._src.{m}", n) for m, ns in lrjax._PUBLIC.items() for n in ns}
    assert typed == table | {("lrjax", m) for m in lrjax._MODULES}
    for module, name in table:  # and each is really there
        assert hasattr(__import__(module, fromlist=[name]), name), (module, name)


def test_console_scripts_run_the_command_lines():
    """``lrjax-find`` etc. ([project.scripts]) beside ``python -m lrjax.find``."""
    bindir = pathlib.Path(sys.executable).parent
    names = ("find", "train", "grid")
    # started together: each is mostly importing JAX, one core's work
    procs = {
        name: subprocess.Popen(
            [str(bindir / f"lrjax-{name}"), "--help"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in names
    }
    try:
        outs = {name: p.communicate(timeout=300) for name, p in procs.items()}
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()
    for name, (stdout, stderr) in outs.items():
        assert procs[name].returncode == 0, stderr
        assert stdout.startswith(f"usage: lrjax-{name} ")  # the script's own name

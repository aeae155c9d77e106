"""lrjax: which learning rate, on which schedule? Range tests and schedules for JAX.

The public API is re-exported here from the private implementation in
``lrjax._src`` (no import path under ``_src`` is stable). Four
public modules hold what belongs together rather than at the top:
``lrjax.recipes`` (the families and rules of ``recommend``), ``lrjax.hooks`` (what a
hook writer is handed), ``lrjax.models`` (the ready models) and
``lrjax.distributed`` (several processes). The command-line modules
(``lrjax.find``, ``lrjax.train``, ``lrjax.grid``) are deliberately not imported:
``python -m lrjax.find`` would otherwise find its module already imported.

Nothing is imported until it is used (PEP 562): ``import lrjax`` and the command
lines' ``--help`` do not load JAX; ``lrjax.fit`` imports ``lrjax._src.fit`` on
first access. ``_PUBLIC`` says where each name lives; the imports under
``TYPE_CHECKING`` say the same to type checkers and editors (a test keeps the two
equal).
"""

import importlib as _importlib
import typing as _typing

__version__ = "0.3.0"

_MODULES = ("distributed", "hooks", "models", "recipes")
# the module in lrjax._src -> the public names it defines
_PUBLIC: dict[str, tuple[str, ...]] = {
    "batches": ("scale_images",),
    "data": ("Dataset", "DatasetError", "load_dataset"),
    "ensembles": (
        "SnapshotBuffer",
        "ensemble_curve",
        "ensemble_predict",
        "init_buffer",
        "member_probs",
        "snapshot_steps",
        "update_batch_stats",
    ),
    "fit": (
        "CheckpointError",
        "FitConfig",
        "FitResult",
        "data_mesh",
        "evaluate",
        "fit",
    ),
    "hooks": ("Hook", "StopOnSignals", "Trigger"),
    "lr_grid": (
        "GridMemory",
        "GridResult",
        "GridSettings",
        "accuracy_at",
        "lr_grid",
        "recipe_grid",
    ),
    "models": ("cnn", "mlp"),
    "own_step": ("step_range_test",),
    "plots": (
        "plot_grid",
        "plot_learning_curves",
        "plot_range_test",
        "plot_recipe_grid",
    ),
    "range_test": (
        "RangeTestResult",
        "RangeTestSettings",
        "SweepOver",
        "SweepResult",
        "lr_range_test",
    ),
    "recipes": ("Recipe", "recommend"),
    "results": ("MemoryEstimate", "MemoryRefused", "Timings"),
    "schedules": (
        "Schedule",
        "cosine_restart_steps",
        "cosine_restarts",
        "cyclic",
        "exp_range",
        "exponential_sweep",
        "linear_decay",
        "linear_sweep",
        "one_cycle",
        "one_cycle_momentum",
        "step_decay",
        "triangular",
        "triangular2",
        "warmup_cosine",
        "wsd",
    ),
    "specs": ("Divergence", "Execution", "GridConfig", "Population", "Sweep"),
    "step": (
        "TrainState",
        "classification_loss",
        "make_optimizer",
        "make_step",
        "split_model",
    ),
    "suggestions": ("METHODS", "find_divergence", "smooth", "suggest"),
}
_WHERE = {name: module for module, names in _PUBLIC.items() for name in names}


if not _typing.TYPE_CHECKING:  # hidden from mypy, which then flags a misspelt name

    def __getattr__(name: str) -> _typing.Any:
        if name in _MODULES:
            return _importlib.import_module(f"lrjax.{name}")
        if name not in _WHERE:
            raise AttributeError(f"module 'lrjax' has no attribute {name!r}")
        value = getattr(_importlib.import_module(f"lrjax._src.{_WHERE[name]}"), name)
        globals()[name] = value  # the next access is a plain attribute
        return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_MODULES, *_WHERE})


if _typing.TYPE_CHECKING:
    from lrjax import distributed as distributed
    from lrjax import hooks as hooks
    from lrjax import models as models
    from lrjax import recipes as recipes
    from lrjax._src.batches import scale_images as scale_images
    from lrjax._src.data import Dataset as Dataset
    from lrjax._src.data import DatasetError as DatasetError
    from lrjax._src.data import load_dataset as load_dataset
    from lrjax._src.ensembles import SnapshotBuffer as SnapshotBuffer
    from lrjax._src.ensembles import ensemble_curve as ensemble_curve
    from lrjax._src.ensembles import ensemble_predict as ensemble_predict
    from lrjax._src.ensembles import init_buffer as init_buffer
    from lrjax._src.ensembles import member_probs as member_probs
    from lrjax._src.ensembles import snapshot_steps as snapshot_steps
    from lrjax._src.ensembles import update_batch_stats as update_batch_stats
    from lrjax._src.fit import CheckpointError as CheckpointError
    from lrjax._src.fit import FitConfig as FitConfig
    from lrjax._src.fit import FitResult as FitResult
    from lrjax._src.fit import data_mesh as data_mesh
    from lrjax._src.fit import evaluate as evaluate
    from lrjax._src.fit import fit as fit
    from lrjax._src.hooks import Hook as Hook
    from lrjax._src.hooks import StopOnSignals as StopOnSignals
    from lrjax._src.hooks import Trigger as Trigger
    from lrjax._src.lr_grid import GridMemory as GridMemory
    from lrjax._src.lr_grid import GridResult as GridResult
    from lrjax._src.lr_grid import GridSettings as GridSettings
    from lrjax._src.lr_grid import accuracy_at as accuracy_at
    from lrjax._src.lr_grid import lr_grid as lr_grid
    from lrjax._src.lr_grid import recipe_grid as recipe_grid
    from lrjax._src.models import cnn as cnn
    from lrjax._src.models import mlp as mlp
    from lrjax._src.own_step import step_range_test as step_range_test
    from lrjax._src.plots import plot_grid as plot_grid
    from lrjax._src.plots import plot_learning_curves as plot_learning_curves
    from lrjax._src.plots import plot_range_test as plot_range_test
    from lrjax._src.plots import plot_recipe_grid as plot_recipe_grid
    from lrjax._src.range_test import RangeTestResult as RangeTestResult
    from lrjax._src.range_test import RangeTestSettings as RangeTestSettings
    from lrjax._src.range_test import SweepOver as SweepOver
    from lrjax._src.range_test import SweepResult as SweepResult
    from lrjax._src.range_test import lr_range_test as lr_range_test
    from lrjax._src.recipes import Recipe as Recipe
    from lrjax._src.recipes import recommend as recommend
    from lrjax._src.results import MemoryEstimate as MemoryEstimate
    from lrjax._src.results import MemoryRefused as MemoryRefused
    from lrjax._src.results import Timings as Timings
    from lrjax._src.schedules import Schedule as Schedule
    from lrjax._src.schedules import cosine_restart_steps as cosine_restart_steps
    from lrjax._src.schedules import cosine_restarts as cosine_restarts
    from lrjax._src.schedules import cyclic as cyclic
    from lrjax._src.schedules import exp_range as exp_range
    from lrjax._src.schedules import exponential_sweep as exponential_sweep
    from lrjax._src.schedules import linear_decay as linear_decay
    from lrjax._src.schedules import linear_sweep as linear_sweep
    from lrjax._src.schedules import one_cycle as one_cycle
    from lrjax._src.schedules import one_cycle_momentum as one_cycle_momentum
    from lrjax._src.schedules import step_decay as step_decay
    from lrjax._src.schedules import triangular as triangular
    from lrjax._src.schedules import triangular2 as triangular2
    from lrjax._src.schedules import warmup_cosine as warmup_cosine
    from lrjax._src.schedules import wsd as wsd
    from lrjax._src.specs import Divergence as Divergence
    from lrjax._src.specs import Execution as Execution
    from lrjax._src.specs import GridConfig as GridConfig
    from lrjax._src.specs import Population as Population
    from lrjax._src.specs import Sweep as Sweep
    from lrjax._src.step import TrainState as TrainState
    from lrjax._src.step import classification_loss as classification_loss
    from lrjax._src.step import make_optimizer as make_optimizer
    from lrjax._src.step import make_step as make_step
    from lrjax._src.step import split_model as split_model
    from lrjax._src.suggestions import METHODS as METHODS
    from lrjax._src.suggestions import find_divergence as find_divergence
    from lrjax._src.suggestions import smooth as smooth
    from lrjax._src.suggestions import suggest as suggest

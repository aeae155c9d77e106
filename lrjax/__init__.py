"""lrjax: which learning rate, on which schedule? Range tests and schedules for JAX.

The public API is re-exported here, one name per line. The command-line modules
(``lrjax.find``, ``lrjax.train``, ``lrjax.grid``) are deliberately not imported:
``python -m lrjax.find`` would otherwise find its module already imported.
"""

from lrjax.batches import scale_images as scale_images
from lrjax.data import Dataset as Dataset
from lrjax.data import DatasetError as DatasetError
from lrjax.data import load_dataset as load_dataset
from lrjax.ensembles import SnapshotBuffer as SnapshotBuffer
from lrjax.ensembles import ensemble_curve as ensemble_curve
from lrjax.ensembles import ensemble_predict as ensemble_predict
from lrjax.ensembles import init_buffer as init_buffer
from lrjax.ensembles import member_probs as member_probs
from lrjax.ensembles import snapshot_steps as snapshot_steps
from lrjax.ensembles import update_batch_stats as update_batch_stats
from lrjax.fit import CheckpointError as CheckpointError
from lrjax.fit import FitConfig as FitConfig
from lrjax.fit import FitResult as FitResult
from lrjax.fit import data_mesh as data_mesh
from lrjax.fit import evaluate as evaluate
from lrjax.fit import fit as fit
from lrjax.hooks import Hook as Hook
from lrjax.hooks import StopOnSignals as StopOnSignals
from lrjax.hooks import Trigger as Trigger
from lrjax.lr_grid import GridMemory as GridMemory
from lrjax.lr_grid import GridResult as GridResult
from lrjax.lr_grid import GridSettings as GridSettings
from lrjax.lr_grid import accuracy_at as accuracy_at
from lrjax.lr_grid import lr_grid as lr_grid
from lrjax.lr_grid import recipe_grid as recipe_grid
from lrjax.models import cnn as cnn
from lrjax.models import mlp as mlp
from lrjax.own_step import step_range_test as step_range_test
from lrjax.plots import plot_grid as plot_grid
from lrjax.plots import plot_learning_curves as plot_learning_curves
from lrjax.plots import plot_range_test as plot_range_test
from lrjax.plots import plot_recipe_grid as plot_recipe_grid
from lrjax.range_test import RangeTestResult as RangeTestResult
from lrjax.range_test import RangeTestSettings as RangeTestSettings
from lrjax.range_test import SweepOver as SweepOver
from lrjax.range_test import lr_range_test as lr_range_test
from lrjax.recipes import Recipe as Recipe
from lrjax.recipes import recommend as recommend
from lrjax.results import MemoryEstimate as MemoryEstimate
from lrjax.results import Timings as Timings
from lrjax.schedules import Schedule as Schedule
from lrjax.schedules import cosine_restart_steps as cosine_restart_steps
from lrjax.schedules import cosine_restarts as cosine_restarts
from lrjax.schedules import cyclic as cyclic
from lrjax.schedules import exp_range as exp_range
from lrjax.schedules import exponential_sweep as exponential_sweep
from lrjax.schedules import linear_decay as linear_decay
from lrjax.schedules import linear_sweep as linear_sweep
from lrjax.schedules import one_cycle as one_cycle
from lrjax.schedules import one_cycle_momentum as one_cycle_momentum
from lrjax.schedules import step_decay as step_decay
from lrjax.schedules import triangular as triangular
from lrjax.schedules import triangular2 as triangular2
from lrjax.schedules import warmup_cosine as warmup_cosine
from lrjax.schedules import wsd as wsd
from lrjax.specs import Divergence as Divergence
from lrjax.specs import Execution as Execution
from lrjax.specs import GridConfig as GridConfig
from lrjax.specs import Population as Population
from lrjax.specs import Sweep as Sweep
from lrjax.step import TrainState as TrainState
from lrjax.step import classification_loss as classification_loss
from lrjax.step import make_optimizer as make_optimizer
from lrjax.step import make_step as make_step
from lrjax.step import split_model as split_model
from lrjax.suggestions import METHODS as METHODS
from lrjax.suggestions import find_divergence as find_divergence
from lrjax.suggestions import smooth as smooth
from lrjax.suggestions import suggest as suggest

__version__ = "0.3.0"

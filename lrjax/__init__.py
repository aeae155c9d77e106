"""lrjax: which learning rate, on which schedule? Range tests and schedules for JAX.

The public API is re-exported here, one name per line. The command-line modules
(``lrjax.find``, ``lrjax.train``, ``lrjax.grid``) are deliberately not imported:
``python -m lrjax.find`` would otherwise find its module already imported.
"""

from lrjax.data import Dataset as Dataset
from lrjax.data import DatasetError as DatasetError
from lrjax.data import load_dataset as load_dataset
from lrjax.range_test import RangeTestResult as RangeTestResult
from lrjax.range_test import lr_range_test as lr_range_test
from lrjax.suggest import METHODS as METHODS
from lrjax.suggest import find_divergence as find_divergence
from lrjax.suggest import smooth as smooth
from lrjax.suggest import suggest as suggest
from lrjax.models import mlp as mlp
from lrjax.plots import plot_grid as plot_grid
from lrjax.plots import plot_learning_curves as plot_learning_curves
from lrjax.plots import plot_range_test as plot_range_test
from lrjax.population import GridResult as GridResult
from lrjax.population import accuracy_at as accuracy_at
from lrjax.population import lr_grid as lr_grid
from lrjax.schedules import Schedule as Schedule
from lrjax.schedules import cosine_restart_steps as cosine_restart_steps
from lrjax.schedules import cosine_restarts as cosine_restarts
from lrjax.schedules import cyclic as cyclic
from lrjax.schedules import exp_range as exp_range
from lrjax.schedules import exponential_sweep as exponential_sweep
from lrjax.schedules import linear_sweep as linear_sweep
from lrjax.schedules import step_decay as step_decay
from lrjax.schedules import triangular as triangular
from lrjax.schedules import triangular2 as triangular2
from lrjax.snapshots import SnapshotBuffer as SnapshotBuffer
from lrjax.snapshots import ensemble_curve as ensemble_curve
from lrjax.snapshots import ensemble_predict as ensemble_predict
from lrjax.snapshots import init_buffer as init_buffer
from lrjax.snapshots import member_probs as member_probs
from lrjax.snapshots import snapshot_steps as snapshot_steps
from lrjax.trainer import CheckpointError as CheckpointError
from lrjax.trainer import FitResult as FitResult
from lrjax.trainer import data_mesh as data_mesh
from lrjax.trainer import fit as fit
from lrjax.trainer import stop_on_signals as stop_on_signals
from lrjax.training import TrainState as TrainState
from lrjax.training import make_evaluate as make_evaluate
from lrjax.training import make_optimizer as make_optimizer
from lrjax.training import make_step as make_step

__version__ = "0.1.0"

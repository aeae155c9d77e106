"""lrjax: which learning rate, on which schedule? Range tests and schedules for JAX.

The public API is re-exported here, one name per line. The command-line modules
(``lrjax.find``, ``lrjax.train``) are deliberately not imported.
"""

from lrjax.data import Dataset as Dataset
from lrjax.data import DatasetError as DatasetError
from lrjax.data import load_dataset as load_dataset
from lrjax.finder import METHODS as METHODS
from lrjax.finder import RangeTestResult as RangeTestResult
from lrjax.finder import find_divergence as find_divergence
from lrjax.finder import lr_range_test as lr_range_test
from lrjax.finder import smooth as smooth
from lrjax.finder import suggest as suggest
from lrjax.models import mlp as mlp
from lrjax.plots import plot_range_test as plot_range_test
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
from lrjax.training import TrainState as TrainState
from lrjax.training import make_evaluate as make_evaluate
from lrjax.training import make_optimizer as make_optimizer
from lrjax.training import make_step as make_step

__version__ = "0.1.0"

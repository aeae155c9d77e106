"""Ready models for the command lines and the benchmarks: the seed MLP, the
BatchNorm CNN, and the augmentation layer ``--augment`` puts in front of a model."""

from lrjax._src.models import CNN as CNN
from lrjax._src.models import MLP as MLP
from lrjax._src.models import Augment as Augment
from lrjax._src.models import cnn as cnn
from lrjax._src.models import mlp as mlp

"""What a hook writer needs: the protocol (``Hook``, ``Trigger``), what a hook is
handed (``Run``, ``FitRun``, ``ChunkEnd``) and the hooks lrjax ships."""

from lrjax._src.hooks import ChunkEnd as ChunkEnd
from lrjax._src.hooks import FitRun as FitRun
from lrjax._src.hooks import Hook as Hook
from lrjax._src.hooks import ProgressBar as ProgressBar
from lrjax._src.hooks import ProgressLines as ProgressLines
from lrjax._src.hooks import Run as Run
from lrjax._src.hooks import StopOnSignals as StopOnSignals
from lrjax._src.hooks import Trigger as Trigger

"""Several processes (docs/multiprocess.md): start JAX's distributed runtime, and
ask whether this process is the one that writes."""

from lrjax._src.distributed import initialize as initialize
from lrjax._src.distributed import is_main as is_main
from lrjax._src.distributed import process_count as process_count
from lrjax._src.distributed import process_index as process_index

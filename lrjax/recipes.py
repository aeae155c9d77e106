"""The recipes ``lrjax.recommend`` builds: the schedule families, their shapes,
the peak rules per optimizer kind, and the one function that shapes a family for
a budget (the same in ``lrjax-train``, ``lrjax-grid`` and the recipe grid)."""

from lrjax._src.recipes import AUTO_FAMILIES as AUTO_FAMILIES
from lrjax._src.recipes import FAMILIES as FAMILIES
from lrjax._src.recipes import OPTIMIZER_KINDS as OPTIMIZER_KINDS
from lrjax._src.recipes import PEAK_RULES as PEAK_RULES
from lrjax._src.recipes import REFERENCE_STEPS as REFERENCE_STEPS
from lrjax._src.recipes import SHAPES as SHAPES
from lrjax._src.recipes import PeakRule as PeakRule
from lrjax._src.recipes import Recipe as Recipe
from lrjax._src.recipes import build_schedule as build_schedule
from lrjax._src.recipes import optimizer_kind as optimizer_kind
from lrjax._src.recipes import recommend as recommend
from lrjax._src.recipes import unit_schedule as unit_schedule

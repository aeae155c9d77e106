"""The train state and the ONE train step: any model, any loss, any batch pytree.

Every part of lrjax (the range test, :func:`lrjax.fit`, :func:`lrjax.lr_grid`,
snapshots, benchmarks) trains through :func:`make_step`::

    step(state, batch) -> (state, metrics)

A model is a Flax NNX module, a params pytree, or a params pytree with a state:

* ``nnx.Module``: it is split once into a static graph definition, its
  ``nnx.Param`` leaves (``params``, what the gradient is taken of) and everything
  else it holds (``model_state``: BatchNorm statistics, Dropout's rng streams,
  any other ``nnx.Variable``). The step merges them inside the traced function,
  runs ``loss_fn(module, batch)`` in training mode and carries the updated
  ``model_state`` on. Evaluation merges the same arrays into an evaluation-mode
  definition (Dropout off, BatchNorm on its running averages).
* a params pytree with ``loss_fn(params, batch)`` (hand-written JAX, equinox-style
  code): ``params`` are the pytree and ``model_state`` is empty.
* a params pytree with its model state (Linen ``batch_stats``, Equinox's
  ``eqx.nn.State``) and ``loss_fn(params, model_state, batch, key) -> (loss,
  model_state[, metrics])`` (:func:`split_stateful`): ``model_state`` is a
  :class:`KeyedState` of the user's state and the base key of the update rngs;
  update ``t`` gets ``key = fold_in(base_key, t)``. Its evaluation is the
  user's ``eval_fn(params, model_state, batch) -> {name: scalar}`` (the model in
  evaluation mode: running averages, no dropout), which lrjax cannot derive
  from a training loss; a factory ``key -> (params, model_state)`` is passed
  with ``model_state="from_factory"`` (:func:`init_member`).

``loss_fn`` returns a scalar loss or ``(loss, {"name": scalar, ...})``; the step's
metrics are ``loss`` (the batch's loss BEFORE the update), ``lr`` (the lr the
update applied, read from ``optax.inject_hyperparams``) and the user's metrics.
What a batch means (uint8 to float, normalisation) belongs to the caller's model
or ``loss_fn`` (e.g. ``nnx.Sequential(lrjax.scale_images, model)``), never to a
line of this module.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import sys
from collections.abc import Callable, Mapping
from typing import Any, Literal, NamedTuple, NoReturn

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.tree_util import PyTreeDef
from jax.typing import ArrayLike

Params = Any
Batch = Any  # any pytree of arrays with a leading batch axis
Metrics = dict[str, jax.Array]
LossFn = Callable[..., Any]  # (model, batch) -> loss | (loss, metrics); see make_step
OptimizerFactory = Callable[[Any], optax.GradientTransformation]
Step = Callable[["TrainState", Batch], tuple["TrainState", Metrics]]
RESERVED = ("loss", "lr")


class TrainState(NamedTuple):
    step: jax.Array  # int32[]: completed updates; the next one applies sched(step)
    params: Params  # nnx.State of nnx.Param, or the user's params pytree
    model_state: Any  # nnx.State of the module's other variables; () when pure
    opt_state: optax.OptState  # an optax.InjectHyperparamsState


@dataclasses.dataclass(frozen=True, eq=False)
class Model:
    """How lrjax holds a model: static structure, separate from its arrays.

    ``train_def`` and ``eval_def`` are NNX graph definitions of the same module in
    training and evaluation mode; both are None for a pure params pytree.
    """

    train_def: Any = None
    eval_def: Any = None
    stateful: bool = False  # params + model_state: loss_fn(p, state, batch, key)

    @property
    def is_module(self) -> bool:
        return self.train_def is not None

    def user_state(self, model_state: Any) -> Any:
        """The ``model_state`` a caller sees: a stateful model's own state (without
        the key of its update rngs), anything else as it is."""
        return model_state.state if self.stateful else model_state

    def bind(self, params: Params, model_state: Any, *, train: bool):
        """The object ``loss_fn`` receives: a module, or the params themselves."""
        if not self.is_module:
            return params
        graphdef = self.train_def if train else self.eval_def
        # copy: Variables of this trace level, so BatchNorm may update them.
        return nnx.merge(graphdef, params, model_state, copy=True)

    def state_of(self, bound, model_state: Any) -> Any:
        """``model_state`` after ``loss_fn`` ran on ``bound`` (batch stats, rngs)."""
        if not self.is_module:
            return model_state
        # flax types split(node, f1, f2) as a variadic tuple; it has three items
        return nnx.split(bound, nnx.Param, ...)[2]  # type: ignore[misc]

    def merge(self, params: Params, model_state: Any, *, train: bool = False):
        """A new module (or the params) from arrays, e.g. a trained state."""
        return self.bind(params, model_state, train=train)


# The accepted forms of a model, each detected explicitly (see model_form).
ModelForm = Literal["module", "factory", "params", "stateful"]
MODEL_FORMS_DOC = "see docs/guide.md, section 'Linen, Equinox and other model forms'"
ACCEPTED_FORMS = (
    "an nnx.Module, a factory key -> nnx.Module, a params pytree with "
    "loss_fn(params, batch), or params with model_state and "
    "loss_fn(params, model_state, batch, key) (a factory key -> (params, "
    "model_state) with model_state='from_factory')"
)
# model_state=FROM_FACTORY: the model is a factory key -> (params, model_state).
FROM_FACTORY = "from_factory"


def _instance_of(obj: Any, module: str, name: str) -> bool:
    """``isinstance(obj, module.name)`` without importing ``module``: an object of
    a class whose module was never imported cannot be passed (equinox is optional)."""
    cls = getattr(sys.modules.get(module), name, None)
    return isinstance(cls, type) and isinstance(obj, cls)


def foreign_model(model: Any) -> str | None:
    """``"linen"``, ``"equinox"`` or ``"train_state"`` for a Linen module, an
    Equinox module or a flax ``TrainState``; None for anything else.

    Neither flax.linen nor equinox is imported for this.
    """
    for kind, module, name in (
        ("linen", "flax.linen", "Module"),
        ("equinox", "equinox", "Module"),
        ("train_state", "flax.training.train_state", "TrainState"),
    ):
        if _instance_of(model, module, name):
            return kind
    return None


def _has_only_arrays(tree: Any) -> bool:
    leaves = jax.tree.leaves(tree)
    return bool(leaves) and all(isinstance(x, jax.Array | np.ndarray) for x in leaves)


def _refuse(
    what: str, got: str, advice: str, error: type[Exception] = TypeError
) -> NoReturn:
    raise error(
        f"{what} is {got}: {advice}. lrjax takes {ACCEPTED_FORMS}; {MODEL_FORMS_DOC}"
    )


def model_form(
    model: Any,
    *,
    has_loss_fn: bool = True,
    model_state: Any = None,
    factory: bool = True,
    what: str = "model",
) -> ModelForm:
    """Which accepted form ``model`` is; anything else is refused in one line.

    The forms, each checked for explicitly (never "a factory" from "callable"):

    * ``"module"``: an ``nnx.Module``;
    * ``"factory"``: any other callable ``key -> model`` (a function, a
      ``functools.partial``), unless ``factory=False``;
    * ``"params"``: a pytree of arrays with ``loss_fn(params, batch)``, e.g. the
      ``eqx.partition`` array half of an Equinox model, or Linen's
      ``variables["params"]`` (a dict ``{"params": ...}`` of nothing else is
      accepted too: the loss receives it as it is);
    * ``"stateful"``: a params pytree with ``model_state`` and
      ``loss_fn(params, model_state, batch, key)``;
    * ``"factory"`` too: a factory ``key -> (params, model_state)`` with
      ``model_state="from_factory"`` (:data:`FROM_FACTORY`) and such a loss.

    Refused, each with what to pass instead: a bare Linen module (it is callable,
    but not ``key -> model``), a bare Equinox module without a ``loss_fn`` or
    with leaves that are not arrays, a flax ``TrainState`` (use
    :func:`lrjax.step_range_test`), Linen variables with collections besides
    ``params`` (their ``batch_stats`` would never be updated), a params pytree
    without a ``loss_fn``, anything that is not a pytree of arrays.

    Args:
      model: what the caller passed as the model.
      has_loss_fn: whether the caller gave a ``loss_fn`` (the default loss calls
        ``model(x)``, which only a module can answer).
      model_state: the caller's ``model_state`` (None: none given;
        ``"from_factory"``: the factory returns it with the params).
      factory: whether a factory is accepted here.
      what: how the message names ``model``.

    Raises:
      TypeError: ``model`` is none of the forms.
      ValueError: a form that needs a ``loss_fn`` without one, or Linen variables
        with collections besides ``params``.

    >>> model_form(nnx.Linear(2, 3, rngs=nnx.Rngs(0)))
    'module'
    >>> model_form({"w": jnp.zeros(3)})
    'params'
    >>> model_form({"params": {"w": jnp.zeros(3)}, "batch_stats": {}})
    ... # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ValueError: model is Linen variables with the collections ['batch_stats'] ...
    """
    equinox = _refuse_foreign(model, has_loss_fn, what)
    if isinstance(model_state, str):
        return _factory_of_state(model, model_state, has_loss_fn, factory, what)
    if isinstance(model, nnx.Module):
        if model_state is not None:
            raise TypeError(
                "with model_state, model must be the params pytree that the state "
                "belongs to (loss_fn(params, model_state, batch, key)), not an "
                "nnx.Module"
            )
        return "module"
    if model_state is not None:
        if not has_loss_fn:
            raise ValueError(
                "model_state needs a loss_fn(params, model_state, batch, key) -> "
                "(loss, model_state) that uses and updates it"
            )
        if callable(model) and not equinox:
            raise TypeError(
                "with model_state, model must be a pytree of arrays (the params); "
                f"got the callable {type(model).__name__!r}: a factory key -> "
                f"(params, model_state) is passed with model_state={FROM_FACTORY!r}"
            )
        return "stateful"  # split_stateful names leaves that are not arrays
    if callable(model) and not equinox:
        if not factory:
            _refuse(
                what,
                f"the callable {model!r}",
                "a factory key -> model is accepted only where a model is built "
                "(lr_range_test, fit, lr_grid), not here",
            )
        return "factory"
    _refuse_non_arrays(model, what)
    if not has_loss_fn:
        _refuse(
            what,
            f"a params pytree ({type(model).__name__})",
            "a params pytree needs loss_fn(params, batch) (the default loss calls "
            "model(x), which only an nnx.Module can answer)",
            ValueError,
        )
    return "params"


def _refuse_foreign(model: Any, has_loss_fn: bool, what: str) -> bool:
    """Refuses what looks like a model of another library but is no accepted form
    (Linen variables with other collections, a bare Linen module, a TrainState,
    an Equinox module that is not a params pytree with a loss); returns whether
    ``model`` is an Equinox module (then taken as params)."""
    if (
        isinstance(model, Mapping)
        and "params" in model
        and (others := sorted(str(k) for k in model if k != "params"))
    ):
        _refuse(
            what,
            f"Linen variables with the collections {others} besides 'params'",
            "pass variables['params'] as the model and model_state={k: v for k, v "
            "in variables.items() if k != 'params'}, with a loss_fn(params, "
            "model_state, batch, key) that calls module.apply({'params': params, "
            "**model_state}, ..., mutable=list(model_state)) and returns the "
            f"updated state (as params, {others} would never be updated)",
            ValueError,
        )
    foreign = foreign_model(model)
    if foreign == "linen":
        _refuse(
            what,
            f"a Linen module ({type(model).__name__}), which is not a factory "
            "key -> model",
            "pass variables = module.init(...) as variables['params'], with "
            "model_state={k: v for k, v in variables.items() if k != 'params'} "
            "when it has other collections (batch_stats), and a loss_fn that "
            "calls module.apply",
        )
    if foreign == "train_state":
        _refuse(
            what,
            "a flax TrainState",
            "to sweep the lr through your own train_step(state, batch), use "
            "lrjax.step_range_test(train_step, state, data, ...) with the "
            "optimizer built by optax.inject_hyperparams (docs/guide.md, section "
            "'Your own train step'); or pass state.params with a loss_fn",
        )
    equinox = foreign == "equinox"
    if equinox and not has_loss_fn and _has_only_arrays(model):
        _refuse(
            what,
            f"the array half of an Equinox module ({type(model).__name__}, as "
            "eqx.partition gives it) without a loss_fn",
            "give a loss_fn(params, batch) that calls eqx.combine(params, "
            "static); with an eqx.nn.State pass model_state=state and "
            "loss_fn(params, model_state, batch, key)",
        )
    if equinox and not (has_loss_fn and _has_only_arrays(model)):
        _refuse(
            what,
            f"an Equinox module ({type(model).__name__})"
            + ("" if has_loss_fn else " without a loss_fn"),
            "pass params, static = eqx.partition(model, eqx.is_inexact_array) "
            "and params as the model, with a loss_fn(params, batch) that calls "
            "eqx.combine(params, static); with an eqx.nn.State pass "
            "model_state=state and loss_fn(params, model_state, batch, key)",
        )
    return equinox


def _factory_of_state(
    model: Any, model_state: str, has_loss_fn: bool, factory: bool, what: str
) -> ModelForm:
    """The form of ``model`` with ``model_state=FROM_FACTORY``: a factory ``key ->
    (params, model_state)``, or a one-line error."""
    if model_state != FROM_FACTORY:
        raise ValueError(
            f"model_state must be a pytree of arrays or {FROM_FACTORY!r} (a "
            f"factory key -> (params, model_state)), got {model_state!r}"
        )
    if not has_loss_fn:
        raise ValueError(
            "model_state needs a loss_fn(params, model_state, batch, key) -> "
            "(loss, model_state) that uses and updates it"
        )
    module = foreign_model(model) == "equinox" or isinstance(model, nnx.Module)
    if module or not callable(model) or not factory:
        _refuse(
            what,
            f"{type(model).__name__} with model_state={FROM_FACTORY!r}"
            + ("" if factory else ", where no model is built"),
            f"model_state={FROM_FACTORY!r} takes a factory key -> (params, "
            "model_state) (lr_range_test, fit, lr_grid); for one model pass "
            "the params and model_state=state",
        )
    return "factory"


def _refuse_non_arrays(model: Any, what: str) -> None:
    """Refuses a ``model`` that is not a pytree of arrays, naming what it holds."""
    if _has_only_arrays(model):
        return
    leaves = jax.tree.leaves(model)
    bad = {
        type(x).__name__ for x in leaves if not isinstance(x, jax.Array | np.ndarray)
    }
    got = f"{type(model).__name__} with no arrays"
    if leaves == [model]:  # not a container: the object itself
        got = f"{type(model).__name__} {repr(model)[:60]}"
    elif bad:
        got = f"{type(model).__name__} with leaves of type {sorted(bad)}"
    _refuse(what, got, "not one of the accepted forms")


def split_model(model: Any) -> tuple[Model, Params, Any]:
    """``model -> (Model, params, model_state)`` without touching ``model``.

    The caller's module is never mutated: the modes are set on a merged copy, and
    the returned arrays are the module's own (immutable) arrays.

    Raises:
      TypeError, ValueError: ``model`` is neither an ``nnx.Module`` nor a params
        pytree of arrays (:func:`model_form`).

    >>> rngs = nnx.Rngs(0)
    >>> net = nnx.Sequential(nnx.Linear(3, 4, rngs=rngs), nnx.BatchNorm(4, rngs=rngs))
    >>> model, params, model_state = split_model(net)
    >>> sum(a.size for a in jax.tree.leaves(params))  # 3 * 4 + 4, BatchNorm's 4 + 4
    24
    >>> sum(a.size for a in jax.tree.leaves(model_state))  # its mean and var
    8
    >>> model.merge(params, model_state)(jnp.ones((2, 3))).shape  # evaluation mode
    (2, 4)
    >>> model, params, model_state = split_model({"w": jnp.zeros(3)})  # pure params
    >>> model.is_module, params["w"].shape, model_state
    (False, (3,), ())
    """
    if model_form(model, factory=False) == "module":
        graphdef, state = nnx.split(model)
        copy = nnx.merge(graphdef, state)
        copy.set_attributes(
            deterministic=False, use_running_average=False, raise_if_not_found=False
        )
        # flax types split(node, f1, f2) as a variadic tuple; it has three items
        train_def, params, rest = nnx.split(copy, nnx.Param, ...)  # type: ignore[misc]
        copy.set_attributes(
            deterministic=True, use_running_average=True, raise_if_not_found=False
        )
        eval_def = nnx.split(copy, nnx.Param, ...)[0]
        return Model(train_def, eval_def), params, rest
    return Model(), jax.tree.map(jnp.asarray, model), ()


def fresh(tree: Any) -> Any:
    """A copy of every array of ``tree`` in new buffers (safe to donate)."""
    return jax.tree.map(lambda a: jnp.asarray(a).copy(), tree)


class KeyedState(NamedTuple):
    """The ``model_state`` of a params pytree that has a model state of its own."""

    state: Any  # the user's model state (Linen collections, eqx.nn.State, ...)
    key: jax.Array  # typed key; update t's loss_fn gets fold_in(key, t)


def _array_tree(tree: Any, what: str, *, empty: bool = False) -> Any:
    """``tree`` as jnp arrays; a TypeError naming the leaves that are not arrays."""
    leaves = jax.tree.leaves(tree)
    bad = {
        type(x).__name__ for x in leaves if not isinstance(x, jax.Array | np.ndarray)
    }
    if bad or not (leaves or empty):
        raise TypeError(
            f"{what} must be a pytree of arrays; got {type(tree).__name__}"
            + (f" with leaves of type {sorted(bad)}" if bad else " with no arrays")
        )
    return jax.tree.map(jnp.asarray, tree)


def _check_call(fn: Callable, n: int, how: str) -> None:
    """Refuses ``fn`` that cannot be called with ``n`` positional arguments, as
    it will be (``how``); a callable without a signature passes.

    >>> _check_call(lambda params, batch: 0.0, 4, "loss_fn(p, s, batch, key)")
    Traceback (most recent call last):
    TypeError: loss_fn is called as loss_fn(p, s, batch, key), but its ...
    """
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):  # a builtin or an odd callable: try it
        return
    try:
        sig.bind(*range(n))
    except TypeError:
        raise TypeError(
            f"loss_fn is called as {how}, but its signature is {sig}"
        ) from None


def split_stateful(
    params: Params, model_state: Any, key: jax.Array
) -> tuple[Model, Params, KeyedState]:
    """``(Model, params, KeyedState(model_state, key))`` of a pure model with state.

    The form of Linen (``params`` and ``{"batch_stats": ...}``) and Equinox
    (``eqx.partition``'s arrays and ``eqx.nn.State``) models, trained by
    ``loss_fn(params, model_state, batch, key) -> (loss, model_state)`` or
    ``(loss, model_state, {name: scalar})``; gradients are taken w.r.t.
    ``params``, and update ``t`` gets the rng ``fold_in(key, t)``.

    Raises:
      TypeError: ``params`` or ``model_state`` holds something other than arrays.
    """
    params = _array_tree(params, "params (with model_state)")
    state = _array_tree(model_state, "model_state", empty=True)
    return Model(stateful=True), params, KeyedState(state, key)


def init_member(
    model: Any,
    member_key: jax.Array,
    form: ModelForm,
    *,
    model_state: Any = None,
    has_loss_fn: bool = True,
) -> tuple[Model, Params, Any, Any]:
    """One member's ``(Model, params, model_state, what was built)``.

    ``model`` of ``form`` (:func:`model_form`); a factory is called with
    ``fold_in(member_key, 1)``, and a stateful model's update rngs start from
    ``fold_in(member_key, 2)`` (:func:`split_stateful`). With
    ``model_state="from_factory"`` the factory returns ``(params, model_state)``.
    The arrays are the model's own: copy them (:func:`fresh`) before donating.

    Raises:
      TypeError, ValueError: the factory built something else than its form.
    """
    built = params = model
    if form == "factory":
        built = model(jax.random.fold_in(member_key, 1))
        if model_state == FROM_FACTORY:
            if not isinstance(built, tuple | list) or len(built) != 2:
                raise TypeError(
                    f"the factory (model_state={FROM_FACTORY!r}) must return "
                    f"(params, model_state); got {_structure(built)}"
                )
            params, model_state = built
            what = "the params the factory returned"
            model_form(params, model_state=model_state, factory=False, what=what)
        else:
            params = built
            what = "the model the factory returned"
            model_form(params, has_loss_fn=has_loss_fn, factory=False, what=what)
    if model_state is not None:
        rngs = jax.random.fold_in(member_key, 2)
        spec, params, rest = split_stateful(params, model_state, rngs)
    else:
        spec, params, rest = split_model(params)
    return spec, params, rest, built


def optimizer_name(optimizer: Any) -> str | None:
    """The ``__name__`` of an optimizer factory, through ``functools.partial``
    (``optax.adamw`` -> ``"adamw"``); None for a lambda or an unnamed callable.
    ``optax.sgd`` given a momentum by a partial is ``"momentum"`` (``"nesterov"``
    with ``nesterov=True``): the recipes' peak rules differ for those.

    >>> import functools
    >>> optimizer_name(optax.adamw), optimizer_name(functools.partial(optax.sgd))
    ('adamw', 'sgd')
    >>> optimizer_name(functools.partial(optax.sgd, momentum=0.9, nesterov=True))
    'nesterov'
    >>> optimizer_name(lambda lr: optax.sgd(lr)) is None
    True
    """
    keywords: dict[str, Any] = {}
    while isinstance(optimizer, functools.partial):
        keywords = {**optimizer.keywords, **keywords}  # the outer partial's win
        optimizer = optimizer.func
    name = getattr(optimizer, "__name__", None)
    if optimizer is optax.sgd and keywords.get("momentum"):
        return "nesterov" if keywords.get("nesterov") else "momentum"
    return name if isinstance(name, str) and name != "<lambda>" else None


def check_optimizer(optimizer: Any) -> None:
    """Refuses anything but a factory ``learning_rate -> GradientTransformation``.

    A transformation already built (``optax.sgd(0.1)``) is the usual slip: its lr
    is fixed, and lrjax must set the lr of every update itself.

    >>> check_optimizer(optax.sgd)  # the factory
    >>> check_optimizer(optax.sgd(0.1))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ValueError: optimizer must be a factory ... not a transformation already built ...
    """
    how = (
        "optimizer must be a factory learning_rate -> optax.GradientTransformation "
        "such as optax.sgd, not {}; give other arguments as lambda lr: "
        "optax.sgd(lr, momentum=0.9) or functools.partial(optax.sgd, momentum=0.9)"
    )
    if isinstance(optimizer, optax.GradientTransformation):
        what = f"a transformation already built ({type(optimizer).__name__})"
        raise ValueError(how.format(what))
    if not callable(optimizer):
        raise ValueError(how.format(f"{type(optimizer).__name__} {optimizer!r}"))


def make_optimizer(
    optimizer: OptimizerFactory,
    learning_rate: float | jax.Array | Callable[[jax.Array], ArrayLike],
) -> optax.GradientTransformation:
    """``optax.inject_hyperparams(optimizer)(learning_rate=learning_rate)``.

    The applied lr then lives in ``opt_state.hyperparams["learning_rate"]``: the
    lr that lrjax logs is read from there, never from a second counter.

    Args:
      optimizer: ``learning_rate -> optax.GradientTransformation``, e.g.
        ``optax.sgd`` or ``lambda lr: optax.adamw(lr, weight_decay=1e-4)``.
      learning_rate: a float, or a schedule ``step -> lr``.

    Raises:
      ValueError: ``optimizer`` is not such a factory (:func:`check_optimizer`).

    >>> tx = make_optimizer(optax.sgd, lambda step: 0.1 / (1 + step))
    >>> opt_state = tx.init({"w": jnp.zeros(2)})
    >>> applied = []
    >>> for _ in range(3):  # gradient 1: each update is -lr
    ...     updates, opt_state = tx.update({"w": jnp.ones(2)}, opt_state)
    ...     applied.append(round(float(opt_state.hyperparams["learning_rate"]), 6))
    >>> applied, round(float(updates["w"][0]), 6)
    ([0.1, 0.05, 0.033333], -0.033333)
    """
    check_optimizer(optimizer)

    def factory(learning_rate):
        return optimizer(learning_rate)

    return optax.inject_hyperparams(factory)(learning_rate=learning_rate)


def applied_lr(opt_state: optax.OptState) -> jax.Array:
    """The lr used by the last update of an ``inject_hyperparams`` state: its
    ``learning_rate``, or that of the first state inside it that has one (the
    grid's members inject their peak lr around :func:`make_optimizer`)."""
    while "learning_rate" not in opt_state.hyperparams:
        opt_state = opt_state.inner_state
    return opt_state.hyperparams["learning_rate"]


def init_state(
    params: Params, model_state: Any, tx: optax.GradientTransformation
) -> TrainState:
    """A fresh state at step 0; jit it to get buffers independent of ``params``."""
    return TrainState(jnp.zeros((), jnp.int32), params, model_state, tx.init(params))


def classification_loss(apply: Callable | None = None) -> LossFn:
    """Softmax cross-entropy with integer labels, and accuracy, on ``(x, y)`` batches.

    ``loss_fn(model, (x, y)) -> (loss, {"accuracy": ...})`` with
    ``logits = model(x)``, or ``apply(params, x)`` when ``apply`` is given: the
    one-line replacement of the earlier ``(apply, params)`` calls is
    ``loss_fn=lrjax.classification_loss(apply)`` with ``params`` as the model.
    A batch that is not an ``(x, y)`` pair (a dict, a triple) is refused with a
    one-line ``TypeError`` when the step is traced, before any update.

    >>> loss_fn = classification_loss(lambda p, x: x @ p)
    >>> loss, m = loss_fn(jnp.eye(2), (jnp.array([[5.0, 0.0]]), jnp.array([0])))
    >>> round(float(loss), 4), float(m["accuracy"])
    (0.0067, 1.0)
    """

    def loss_fn(model, batch):
        x, y = _pair(batch)
        logits = model(x) if apply is None else apply(model, x)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        return loss, {"accuracy": jnp.mean(jnp.argmax(logits, -1) == y)}

    return loss_fn


def _pair(batch: Any) -> tuple[Any, Any]:
    """The ``(x, y)`` of a batch of the default loss; anything else in one line."""
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[0], batch[1]
    if isinstance(batch, Mapping):
        got = f"a dict with keys {sorted(map(str, batch))}"
    elif isinstance(batch, (tuple, list)):
        got = f"a {type(batch).__name__} of {len(batch)}"
    else:
        got = f"a {type(batch).__name__}"
    raise TypeError(
        f"the default classification loss takes (x, y) batches, got {got}: "
        "give a loss_fn(model, batch) for batches of another form"
    )


def check_classification_data(
    model: Model, params: Params, model_state: Any, data: Any, *, batch_size: int
) -> None:
    """The in-memory ``(x, y)`` of the default loss, checked once before any update.

    The labels must be integers in ``[0, num_classes)``, ``num_classes`` being
    the model's output width (from ``jax.eval_shape`` of one batch: nothing
    runs), and float inputs must be finite. Only a module is checked: the
    default loss calls ``model(x)``.

    Raises:
      ValueError: float labels, labels out of range, or NaN/inf inputs, in one
        line naming the bad values and what is allowed.
    """
    arrays = (np.ndarray, jax.Array)
    if not (
        model.is_module
        and isinstance(data, tuple)
        and len(data) == 2
        and isinstance(data[1], arrays)
    ):
        return
    n = len(data[1])
    b = min(batch_size, n)

    def logits(params, model_state, x):
        return model.bind(params, model_state, train=False)(x)

    first = jax.tree.map(lambda a: a[:b], data[0])
    out = jax.eval_shape(logits, params, model_state, first)
    if not (hasattr(out, "shape") and out.shape and data[1].shape):
        return  # not logits and labels: the loss itself will say so
    classes = out.shape[-1]
    if not jnp.issubdtype(data[1].dtype, jnp.integer):
        raise ValueError(
            f"the default classification loss needs integer class labels in "
            f"[0, {classes}), got {data[1].dtype} labels: convert them "
            "(y.astype(np.int32)) or give a loss_fn (one-hot labels: "
            "optax.softmax_cross_entropy)"
        )
    labels = np.asarray(data[1])
    lo, hi = int(labels.min()), int(labels.max())
    bad = int(np.count_nonzero((labels < 0) | (labels >= classes)))
    if bad:
        raise ValueError(
            f"labels must be class indices in [0, {classes}) (the model has "
            f"{classes} outputs); {bad} of {n} are outside it (min {lo}, max {hi})"
        )
    for path, a in jax.tree_util.tree_flatten_with_path(data[0])[0]:
        if not jnp.issubdtype(a.dtype, jnp.inexact):
            continue
        xp = jnp if isinstance(a, jax.Array) else np  # where the data are
        bad = a.size - int(xp.count_nonzero(xp.isfinite(a)))
        if bad:
            raise ValueError(
                f"the inputs data[0]{jax.tree_util.keystr(path)} hold {bad} "
                f"non-finite values (NaN or inf) of {a.size}: clean them "
                "(e.g. np.nan_to_num)"
            )


def _structure(out: Any) -> str:
    """What a loss_fn returned, in one line: ``(float32[], float32[32,10])``."""
    if isinstance(out, tuple | list):
        inner = ", ".join(_structure(o) for o in out)
        return f"({inner})" if isinstance(out, tuple) else f"[{inner}]"
    if isinstance(out, Mapping):
        return "{" + ", ".join(f"{k!r}: {_structure(v)}" for k, v in out.items()) + "}"
    if hasattr(out, "shape") and hasattr(out, "dtype"):
        return f"{out.dtype}[{','.join(str(d) for d in out.shape)}]"
    return type(out).__name__


def _is_value(x: Any) -> bool:
    """An array or a Python/numpy number: something with a shape to check."""
    return (hasattr(x, "shape") and hasattr(x, "dtype")) or isinstance(
        x, int | float | np.number
    )


def loss_and_metrics(out: Any) -> tuple[jax.Array, Metrics]:
    """Checks and splits what a ``loss_fn`` returned into ``(loss, metrics)``.

    The structure is checked before any value is looked at: ``jnp.shape`` of a
    tuple of traced arrays would try to convert them to one numpy array.

    Raises:
      ValueError: anything but a scalar or ``(scalar, {name: scalar})`` (e.g. the
        common ``(loss, logits)``), or a metric named loss/lr.
    """
    accepted = "loss_fn must return a scalar loss or (loss, {name: scalar})"
    if isinstance(out, tuple | list):
        if len(out) != 2 or not isinstance(out[1], Mapping):
            raise ValueError(
                f"{accepted}; got {_structure(out)} (to report e.g. the accuracy, "
                "compute it inside loss_fn and return (loss, {'accuracy': acc}))"
            )
        loss, metrics = out
    else:
        loss, metrics = out, {}
    if not _is_value(loss):
        raise ValueError(f"{accepted}; got {_structure(out)}")
    shape = jnp.shape(loss)
    if shape != ():
        raise ValueError(
            "loss_fn must return a scalar loss or (loss, {name: scalar}); got a "
            f"loss of shape {shape} (reduce it, e.g. with .mean())"
        )
    for name, value in metrics.items():
        if name in RESERVED:
            raise ValueError(f"loss_fn metric names must not be {RESERVED}: {name!r}")
        if not _is_value(value) or jnp.shape(value) != ():
            raise ValueError(
                f"loss_fn metric {name!r} must be a scalar, got {_structure(value)}"
            )
    return jnp.asarray(loss, jnp.float32), {
        k: jnp.asarray(v, jnp.float32) for k, v in metrics.items()
    }


def loss_state_metrics(out: Any, model_state: Any) -> tuple[jax.Array, Any, Metrics]:
    """Checks and splits a stateful ``loss_fn``'s ``(loss, model_state[, metrics])``.

    Raises:
      ValueError: another form, a non-scalar loss or metric, or a model state of
        another structure than the one given (e.g. the whole ``variables`` dict
        with ``params`` returned in place of the mutable collections).
    """
    accepted = (
        "loss_fn(params, model_state, batch, key) must return (loss, model_state) "
        "or (loss, model_state, {name: scalar})"
    )
    if not isinstance(out, tuple | list) or len(out) not in (2, 3):
        raise ValueError(f"{accepted}; got {_structure(out)}")
    if len(out) == 3 and not isinstance(out[2], Mapping):
        raise ValueError(f"{accepted}; got {_structure(out)}")
    loss, metrics = loss_and_metrics((out[0], out[2] if len(out) == 3 else {}))
    given: PyTreeDef = jax.tree.structure(model_state)  # (jaxlib has no stub)
    got: PyTreeDef = jax.tree.structure(out[1])
    if given != got:
        raise ValueError(
            f"{accepted}, the model_state of the structure it was given: {given}; "
            f"got {got}"
        )
    return loss, out[1], metrics


def check_accumulate(accumulate_steps: Any) -> int:
    if (
        isinstance(accumulate_steps, bool)
        or not isinstance(accumulate_steps, int | np.integer)
        or accumulate_steps < 1
    ):
        raise ValueError(
            f"accumulate_steps must be an integer >= 1, got {accumulate_steps!r}"
        )
    return int(accumulate_steps)


def make_step(
    model: Model,
    loss_fn: LossFn,
    tx: optax.GradientTransformation,
    *,
    accumulate_steps: int = 1,
    unroll: bool = False,
    constrain: Callable[[Batch], Batch] | None = None,
) -> Step:
    """Builds ``step(state, batch) -> (state, metrics)``: one optimizer update.

    Args:
      model: from :func:`split_model`.
      loss_fn: ``loss_fn(model_or_params, batch) -> loss | (loss, metrics)``.
      tx: the optimizer, from :func:`make_optimizer` so the applied lr is logged.
      accumulate_steps: ``k > 1`` makes ``batch`` a stack of ``k`` micro-batches
        (every leaf ``[k, B, ...]``); their gradients are averaged into ONE update,
        so the schedule advances once per update, and ``model_state`` (batch
        statistics) passes through the micro-batches in order. The loss and
        metrics are their means.
      unroll: unroll the micro-batch loop (a conv inside a ``lax`` loop body is
        slow on XLA:CPU).
      constrain: applied to each (micro-)batch, e.g. a sharding constraint that
        makes the step data parallel.

    Gradients are taken with respect to ``params`` only (``nnx.Param``). A
    stateful model (:func:`split_stateful`) gets ``loss_fn(params, model_state,
    batch, key)`` with ``key = fold_in(base_key, step)`` (micro-batch ``i`` of an
    accumulated update: ``fold_in(key, i)``).

    One SGD update of least squares from ``w = 0``: the gradient of
    ``mean((x @ w - y)**2)`` with ``x = I``, ``y = (1, 2)`` is ``-(1, 2)``:

    >>> def loss_fn(params, batch):
    ...     x, y = batch
    ...     return jnp.mean((x @ params["w"] - y) ** 2)
    >>> model, params, model_state = split_model({"w": jnp.zeros(2)})
    >>> tx = make_optimizer(optax.sgd, 0.1)
    >>> step = jax.jit(make_step(model, loss_fn, tx))
    >>> state = TrainState(jnp.array(0), params, model_state, tx.init(params))
    >>> state, metrics = step(state, (jnp.eye(2), jnp.array([1.0, 2.0])))
    >>> [round(w, 6) for w in state.params["w"].tolist()], int(state.step)
    ([0.1, 0.2], 1)
    >>> {name: round(float(v), 6) for name, v in metrics.items()}  # loss before it
    {'loss': 2.5, 'lr': 0.1}
    """
    k = check_accumulate(accumulate_steps)
    if model.stateful:
        _check_call(loss_fn, 4, "loss_fn(params, model_state, batch, key)")
    else:
        _check_call(loss_fn, 2, "loss_fn(model, batch) (no model_state given)")

    def grads_of(params, model_state, batch, key=None):
        if constrain is not None:
            batch = constrain(batch)

        def f(p, ms, batch):
            if model.stateful:
                loss, new, metrics = loss_state_metrics(
                    loss_fn(p, ms.state, batch, key), ms.state
                )
                return loss, (metrics, ms._replace(state=new))
            bound = model.bind(p, ms, train=True)
            loss, metrics = loss_and_metrics(loss_fn(bound, batch))
            return loss, (metrics, model.state_of(bound, ms))

        (loss, (metrics, new_state)), grads = jax.value_and_grad(f, has_aux=True)(
            params, model_state, batch
        )
        return loss, metrics, new_state, grads

    def step(state: TrainState, batch: Batch):
        key = None
        if model.stateful:  # this update's rng: fold_in(base key, step)
            key = jax.random.fold_in(state.model_state.key, state.step)
        if k == 1:
            loss, metrics, model_state, grads = grads_of(
                state.params, state.model_state, batch, key
            )
        else:

            def micro(carry, x):
                ms, total = carry
                b, i = x
                micro_key = None if key is None else jax.random.fold_in(key, i)
                loss, metrics, ms, g = grads_of(state.params, ms, b, micro_key)
                return (ms, jax.tree.map(jnp.add, total, g)), (loss, metrics)

            zeros = jax.tree.map(jnp.zeros_like, state.params)
            (model_state, total), (losses, ms) = jax.lax.scan(
                micro,
                (state.model_state, zeros),
                (batch, jnp.arange(k)),
                unroll=k if unroll else 1,
            )
            grads = jax.tree.map(lambda g: g / k, total)
            loss = losses.mean()
            metrics = {n: v.mean() for n, v in ms.items()}
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        out = {
            "loss": loss,
            "lr": applied_lr(opt_state).astype(jnp.float32),
            **metrics,
        }
        return TrainState(state.step + 1, params, model_state, opt_state), out

    return step


STATEFUL_EVAL = (
    "with model_state, evaluation (val_data, test_data) needs "
    "eval_fn(params, model_state, batch) -> {name: scalar}: the model in "
    "evaluation mode (running averages, no dropout; e.g. 'loss' and 'accuracy'), "
    "which lrjax cannot derive from the training loss"
)


def make_eval_batch(
    model: Model,
    loss_fn: LossFn,
    *,
    eval_fn: Callable | None = None,
) -> Callable[[Params, Any, Batch], Metrics]:
    """``eval_batch(params, model_state, batch) -> metrics`` in evaluation mode.

    ``eval_fn(model, batch) -> {name: scalar}`` when given; otherwise the loss
    and the metrics of ``loss_fn``. The module state is not updated. A stateful
    model (:func:`split_stateful`) needs ``eval_fn(params, model_state, batch)``
    (its own state, not the rng key); its training loss cannot evaluate.
    """

    def eval_batch(params, model_state, batch):
        if model.stateful:
            if eval_fn is None:
                raise ValueError(STATEFUL_EVAL)
            out = eval_fn(params, model_state.state, batch)
        elif eval_fn is not None:
            out = eval_fn(model.bind(params, model_state, train=False), batch)
        if eval_fn is not None:
            if not isinstance(out, Mapping):
                raise ValueError(
                    f"eval_fn must return a dict of scalars, got {type(out).__name__}"
                )
            return {k: jnp.asarray(v, jnp.float32) for k, v in out.items()}
        bound = model.bind(params, model_state, train=False)
        loss, metrics = loss_and_metrics(loss_fn(bound, batch))
        return {"loss": loss, **metrics}

    return eval_batch

"""Bad input found by trying lrjax as a new user would (issue #18, item 4): each is
one clear line raised before any long work, or a correct result."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import lrjax
from lrjax import find
from lrjax._src.batches import scale_images
from lrjax._src.step import make_optimizer

from .conftest import make_images

KEY = jax.random.key(0)


@pytest.fixture(scope="module")
def images():
    x, y = make_images(256, 0)
    return x, y.astype(np.int32)


def mlp(key=KEY):
    return lrjax.mlp(784, 10, (16,), key=key)


def scaled_mlp():
    """The MLP fed uint8 images, as the command lines build it."""
    return nnx.Sequential(scale_images, mlp())


def range_test(
    data, optimizer=optax.sgd, *, num_steps=8, batch_size=None, **kw
):  # fmt: skip
    """A short range test of ``model`` (default :func:`scaled_mlp`);
    ``init_value``/``end_value`` go to its Sweep."""
    model = kw.pop("model", None) or scaled_mlp()
    lrs = {k: kw.pop(k) for k in ("init_value", "end_value") if k in kw}
    sweep = lrjax.Sweep(num_steps, batch_size=batch_size, **lrs)
    return lrjax.lr_range_test(model, optimizer, data, key=KEY, sweep=sweep, **kw)


def fit(data, optimizer=optax.sgd, config=None, **kw):
    model = kw.pop("model", None) or scaled_mlp()
    config = config or lrjax.FitConfig(epochs=1, batch_size=32, chunks_per_epoch=1)
    return lrjax.fit(model, optimizer, data, key=KEY, config=config, **kw)


# ------------------------------------------- 1. a transformation, not its factory

FACTORY = r"factory learning_rate -> optax.GradientTransformation such as optax.sgd"


def test_a_built_optimizer_is_refused_with_how_to_pass_its_arguments(images):
    hint = r"lambda lr: optax.sgd\(lr, momentum=0.9\) or functools.partial"
    for call in (range_test, fit):
        with pytest.raises(ValueError, match=FACTORY + r".*already built.*" + hint):
            call(images, optax.sgd(0.1))
    with pytest.raises(
        ValueError, match=FACTORY + r".*GradientTransformationExtraArgs"
    ):
        make_optimizer(optax.chain(optax.sgd(0.1)), 0.1)
    with pytest.raises(ValueError, match=FACTORY + r", not float 0.1"):
        range_test(images, 0.1)
    with pytest.raises(ValueError, match=FACTORY):
        lrjax.lr_grid(mlp, optax.adam(1e-3), images, images, lrs=[0.1], key=KEY)


def test_the_factory_forms_the_message_names_work(images):
    for opt in (
        lambda lr: optax.sgd(lr, momentum=0.9),
        functools.partial(optax.sgd, momentum=0.9),
    ):
        assert range_test(images, opt).steps_run == 8


# ------------------------------------------------ 2. a loss returning (loss, logits)


def loss_and_logits(model, batch):
    x, y = batch
    logits = model(x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), logits


def test_a_loss_returning_logits_gets_the_clear_message(images):
    accepted = r"loss_fn must return a scalar loss or \(loss, \{name: scalar\}\)"
    for call in (range_test, fit):
        with pytest.raises(ValueError, match=accepted + r"; got \(float32\[\], "):
            call(images, loss_fn=loss_and_logits)
    with pytest.raises(ValueError, match=r"got \(float32\[\], float32\[32,10\]\)"):
        range_test(images, loss_fn=loss_and_logits)

    def three(model, batch):
        loss, logits = loss_and_logits(model, batch)
        return loss, {"accuracy": jnp.float32(0)}, logits

    with pytest.raises(ValueError, match=accepted + r"; got \(float32\[\], \{'acc"):
        range_test(images, loss_fn=three)
    with pytest.raises(ValueError, match=accepted + r"; got \{'loss': float32\[\]\}"):
        range_test(images, loss_fn=lambda m, b: {"loss": loss_and_logits(m, b)[0]})

    def tuple_metric(model, batch):
        loss, logits = loss_and_logits(model, batch)
        return loss, {"pair": (loss, loss)}

    with pytest.raises(ValueError, match=r"metric 'pair' must be a scalar, got \("):
        range_test(images, loss_fn=tuple_metric)


# ---------------------------------------------------------- 3. FitConfig's counts


@pytest.mark.parametrize(
    "field, value, match",
    [
        ("epochs", 0, "epochs must be an integer >= 1, got 0"),
        ("batch_size", 0, "batch_size must be an integer >= 1, got 0"),
        ("steps_per_epoch", 0, "steps_per_epoch must be None or an integer >= 1"),
        ("steps_per_epoch", 2.5, "steps_per_epoch must be None or an integer >= 1"),
        ("patience", -1, "patience must be an integer >= 0, got -1"),
    ],
)
def test_fit_refuses_non_positive_counts(images, field, value, match):
    with pytest.raises(ValueError, match=match):
        fit(images, config=lrjax.FitConfig(**{field: value}))


# ------------------------------------------- 4. batch_size with an iterable of batches


def batches(x, y, size):
    for i in range(0, len(x) - size + 1, size):
        yield x[i : i + size], y[i : i + size]


def test_batch_size_equal_to_the_iterables_batches_is_accepted(images):
    x, y = images
    plain = range_test(batches(x, y, 32), num_steps=6)
    sized = range_test(batches(x, y, 32), num_steps=6, batch_size=32)
    np.testing.assert_array_equal(plain.losses, sized.losses)
    assert sized.config.batch_size == 32 and sized.steps_run == 6


def test_batch_size_other_than_the_iterables_batches_names_both(images):
    x, y = images
    with pytest.raises(
        ValueError, match=r"batch_size=64 does not match the iterable's batches of 32"
    ):
        range_test(batches(x, y, 32), batch_size=64)


# ----------------------------------------------------------- 5. NaN in the inputs


def nan_images(images):
    x, y = images
    x = x.astype(np.float32) / 255.0
    x[::20, 3, 3] = np.nan
    return x, y


def test_nan_inputs_of_the_default_loss_are_refused_before_the_sweep(images):
    x, y = nan_images(images)
    with pytest.raises(ValueError, match=r"inputs data\[0\] hold 13 non-finite"):
        range_test((x, y), model=mlp())
    with pytest.raises(ValueError, match=r"inputs data\[0\] hold 13 non-finite"):
        fit((jnp.asarray(x), y), model=mlp())


def test_a_loss_not_finite_before_any_descent_is_reported(images):
    # A loss of one's own is not checked (it may clean NaN), so these reach the
    # sweep: the result says so.
    r = range_test(nan_images(images), model=mlp(), num_steps=50,
                   loss_fn=lrjax.classification_loss())  # fmt: skip
    assert r.stop_reason == "diverged" and r.suggested_lr is None
    i = r.diverged_at_step[0]
    assert r.warning == (
        f"the loss was not finite from step {i} on (lr {r.lrs[i]:.3g}), before any "
        "descent: check the inputs for NaN/inf and the model's output, or start the "
        "sweep at a lower lr"
    )
    assert r.to_json()["warning"] == r.warning
    good = range_test(images, num_steps=50, init_value=1e-3, end_value=1e4)
    assert good.stop_reason == "diverged" and good.warning is None


NAN_MODEL = """
import jax.numpy as jnp
from flax import nnx


class Broken(nnx.Module):
    def __init__(self, num_classes, *, rngs):
        self.out = nnx.Linear(28 * 28, num_classes, rngs=rngs)

    def __call__(self, x):
        return self.out(x.reshape(x.shape[0], -1)) * jnp.nan
"""


def test_find_prints_the_nonfinite_warning(tiny_fashion_mnist, tmp_path, capsys):
    path = tmp_path / "broken.py"
    path.write_text(NAN_MODEL)
    code = find.main(["--data-dir", str(tiny_fashion_mnist), "--model",
                      f"{path}:Broken", "--out", str(tmp_path / "find"), "--steps",
                      "20", "--no-plot"])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    assert "warning:      the loss was not finite from step 0 on (lr 1e-05)" in out


# ------------------------------------------------------- 6. labels of the default loss


@pytest.mark.parametrize("bad", [10, -1])
def test_labels_out_of_range_are_refused(images, bad):
    x, y = images
    y = y.copy()
    y[[3, 7]] = bad
    lo, hi = min(bad, y.min()), max(bad, y.max())
    match = rf"labels must be class indices in \[0, 10\) \(the model has 10 outputs\); 2 of 256 are outside it \(min {lo}, max {hi}\)"  # noqa: E501
    for call in (range_test, fit):
        with pytest.raises(ValueError, match=match):
            call((x, y))


def test_float_labels_are_refused(images):
    x, y = images
    with pytest.raises(ValueError, match=r"integer class labels in \[0, 10\), got "):
        range_test((x, y.astype(np.float32)))

    def one_based(model, batch):  # labels 1..10 on disk, 0..9 for the loss
        return lrjax.classification_loss()(model, (batch[0], batch[1] - 1))

    assert range_test((x, y + 1), loss_fn=one_based).steps_run == 8  # not checked
    tens = int(np.sum(y == 9))  # label 10 once shifted: outside [0, 10)
    with pytest.raises(
        ValueError, match=rf" {tens} of 256 are outside it \(min 1, max 10"
    ):
        range_test((x, y + 1))  # the default loss: the labels as given


def test_the_default_loss_names_a_batch_that_is_not_x_y(images):
    # a dict batch used to unpack into its two keys and fail inside the model
    x, y = images
    also = ": give a loss_fn\\(model, batch\\) for batches of another form"
    dicts = r"^the default classification loss takes \(x, y\) batches, got a dict with keys \['image', 'label'\]"  # noqa: E501
    batches = {"image": x, "label": y}
    for call in (range_test, fit):
        with pytest.raises(TypeError, match=dicts + also):
            call(batches)
    stream = iter([{"image": x[:32], "label": y[:32]}] * 8)
    with pytest.raises(TypeError, match=dicts + also):
        range_test(stream)
    with pytest.raises(TypeError, match=r"got a tuple of 3" + also):
        range_test((x, y, y))

    def from_dicts(model, batch):  # the form this test's data has, as its loss
        return lrjax.classification_loss()(model, (batch["image"], batch["label"]))

    assert range_test(batches, loss_fn=from_dicts).steps_run == 8


# --------------------------------------- 7. preprocess= is gone: one line says where


def test_preprocess_is_refused_with_where_it_went(images):
    where = (
        r"preprocess was removed in 0.3.0: what a batch means belongs to the model "
        r"or the loss; put the transform in front of the model "
        r"\(nnx.Sequential\(lrjax.scale_images, model\)\) or inside loss_fn and eval_fn"
    )
    with pytest.raises(TypeError, match=r"^lr_range_test: " + where + "$"):
        range_test(images, preprocess=scale_images)
    x, y = images
    for call in (lrjax.lr_grid, lrjax.recipe_grid):
        families = {} if call is lrjax.lr_grid else {"families": {"c": None}}
        with pytest.raises(TypeError, match=rf"^{call.__name__}: " + where + "$"):
            call(scaled_mlp(), optax.sgd, images, images, lrs=[0.1], key=KEY,
                 preprocess=scale_images, **families)  # fmt: skip
    with pytest.raises(TypeError, match=r"^fit: " + where + "$"):
        fit(images, preprocess=scale_images)
    with pytest.raises(TypeError, match=r"unexpected keyword argument 'preprocess'"):
        lrjax.evaluate(scaled_mlp(), images, preprocess=scale_images)
    with pytest.raises(TypeError, match=r"takes the images, not an \(x, y\) batch"):
        scale_images(images)
    with pytest.raises(TypeError, match=r"integer images in \[0, 255\], got float32"):
        scale_images(x.astype(np.float32))
    assert scale_images(x[:2]).dtype == np.float32
    np.testing.assert_array_equal(scale_images(x[:2]), x[:2] / np.float32(255))

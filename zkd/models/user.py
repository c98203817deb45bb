"""Your own models: the contract a Flax Linen module must meet to be a zkd student or teacher,
importing a factory named in a config, and checking a module against the contract.

The contract is ``CONTRACT`` (below). ``import_factory`` resolves ``"package.module:function"``
(``config.student.factory``), ``build_user_model`` calls a factory as the contract says, and
``check_module`` verifies a module against the contract with ``jax.eval_shape`` (shapes only, no
computation). Errors are ``ModelFactoryError`` / ``ModelContractError`` (both ``ModelError``, a
``ZkdError`` and ``ValueError``), naming what is wrong, the config field and the fix.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import re
from typing import Any, Callable, Mapping, Optional

import flax.errors
import flax.linen as nn
import jax
import jax.numpy as jnp

from zkd.errors import ZkdError

CONTRACT = """\
Contract
--------
A model is a Flax Linen module (``flax.linen.Module``) whose

* ``__call__(self, x, train: bool)`` takes ``x``: float [B, H, W, C] (NHWC), images already
  normalized by zkd's data pipeline (float32), and returns ONE array: the logits
  [B, num_classes], of a floating dtype (zkd casts them to float32 inside the losses). No tuple,
  list or dict: to expose more (a second head, features), ``self.sow("intermediates", ...)``.
* variables hold only the collections ``"params"`` and, optionally, ``"batch_stats"``
  (BatchNorm running statistics). With ``train=True`` zkd applies the student with
  ``mutable=["batch_stats"]`` and keeps the statistics it returns; with ``train=False`` nothing
  may change.
* randomness (dropout, drop-path, ...) comes from the ``"dropout"`` rng stream only: in training
  zkd passes ``rngs={"dropout": key}``, a key of the student's own, folded with the step number
  (a resumed run draws what an uninterrupted one draws). ``train=False`` must be deterministic
  and need no rng (evaluation and the teacher run without one).

A factory builds such a module: ``factory(num_classes: int, **options) -> nn.Module``, called
with ``num_classes=`` as a keyword and the config's ``options``. It receives ``dtype=`` (the
computation dtype, e.g. ``jnp.bfloat16``) only when the run's ``config.dtype`` is not float32;
a factory that cannot accept ``dtype`` then is an error (add ``dtype=None`` to its parameters and
hand it to the module's layers, keeping the parameters float32).

A teacher meets the same contract, except that it only ever runs with ``train=False``.
"""

__doc__ = (__doc__ or "") + "\n" + CONTRACT  # help(zkd.models.user) shows the contract

ALLOWED_COLLECTIONS = ("params", "batch_stats")
CHECK_BATCH_SIZE = 2


class ModelError(ZkdError, ValueError):
    """Base of the errors about a user's model: the message names the config field and the fix."""


class ModelFactoryError(ModelError):
    """A factory cannot be imported or called, or does not return a Flax Linen module."""


class ModelContractError(ModelError):
    """A module breaks the contract of ``zkd.models.user.CONTRACT`` (collections, output, rngs)."""


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0]}" if text else type(err).__name__


def _options_field(where: str) -> str:
    """``config.student.options`` from ``where`` = "config.student.factory=..." (or a generic name)."""
    match = re.match(r"config\.(\w+)\.", where)
    return f"config.{match.group(1)}.options" if match else "the options"


# ----------------------------------------------------------------------------- import


def import_factory(spec: str, where: str) -> Callable[..., Any]:
    """The callable that ``spec`` = ``"package.module:function"`` names.

    The part after the colon may be a dotted attribute path (``"pkg.mod:Class.create"``).
    ``where`` names the config field in errors, e.g. ``"config.student.factory='pkg.mod:fn'"``.

    Raises:
      ModelFactoryError: no colon or an empty part; the module cannot be imported (the import
        error's text and a hint about PYTHONPATH / installing the package); an attribute is
        missing (with the closest names); the object is not callable.
    """
    if not isinstance(spec, str):
        raise ModelFactoryError(
            f"{where}: a factory is named by a string 'package.module:function', got a "
            f"{type(spec).__name__}")
    module_name, colon, attr_path = spec.strip().partition(":")
    parts = attr_path.split(".") if attr_path else []
    if not colon or not module_name or not parts or any(not p for p in parts) or ":" in attr_path:
        raise ModelFactoryError(
            f"{where}: {spec!r} is not of the form 'package.module:function' (one colon between the "
            "importable module and the factory's name, e.g. 'my_models.nets:make_net')")
    try:
        obj = importlib.import_module(module_name)
    except ImportError as err:
        if getattr(err, "name", None) and module_name.startswith(str(err.name)):
            hint = (f"is the directory holding {module_name.split('.')[0]!r} on the path? Add it to "
                    "PYTHONPATH (or sys.path), or install its package (pip install -e .)")
        else:
            hint = f"{module_name} was found but an import inside it failed; install what it needs"
        raise ModelFactoryError(
            f"{where}: cannot import module {module_name!r} ({_first_line(err)}); {hint}") from err
    except Exception as err:  # a SyntaxError, or the module's own code failing at import
        raise ModelFactoryError(
            f"{where}: importing module {module_name!r} failed: {_first_line(err)}; fix that "
            "module so that it imports") from err
    for i, part in enumerate(parts):
        owner = module_name if i == 0 else f"{module_name}:{'.'.join(parts[:i])}"
        if not hasattr(obj, part):
            names = [n for n in dir(obj) if not n.startswith("__")]
            close = difflib.get_close_matches(part, names, n=3)
            hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise ModelFactoryError(
                f"{where}: {owner!r} has no attribute {part!r}.{hint} Name a function or class "
                f"defined in {module_name!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ModelFactoryError(
            f"{where}: {spec!r} is a {type(obj).__name__}, not callable; name a function "
            "factory(num_classes, **options) -> flax.linen.Module (or a Module class)")
    return obj


# ----------------------------------------------------------------------------- build


def _short(signature: Optional[inspect.Signature]) -> str:
    """``(depth, widths, num_classes=..., **options)``: the parameters, without annotations and
    without a Linen module's ``parent`` / ``name``."""
    if signature is None:
        return "(?)"
    shown = []
    for p in signature.parameters.values():
        if p.name in ("parent", "name") and p.kind is p.POSITIONAL_OR_KEYWORD and p.default is not p.empty:
            continue
        prefix = "*" if p.kind is p.VAR_POSITIONAL else "**" if p.kind is p.VAR_KEYWORD else ""
        shown.append(prefix + p.name + ("=..." if p.default is not p.empty else ""))
    return f"({', '.join(shown)})"


def _accepts(signature: Optional[inspect.Signature], name: str) -> bool:
    if signature is None:
        return True  # cannot tell: let the call decide
    for p in signature.parameters.values():
        if p.kind is p.VAR_KEYWORD:
            return True
        if p.name == name and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
            return True
    return False


def build_user_model(factory: str | Callable[..., Any], num_classes: int, options: Optional[Mapping],
                     dtype: Any, where: str) -> nn.Module:
    """The module ``factory(num_classes=num_classes, **options)`` builds.

    Args:
      factory: a ``"package.module:function"`` string (see ``import_factory``) or the callable.
      num_classes: the dataset's number of classes (logits [B, num_classes]).
      options: keyword arguments of the factory (``config.<role>.options``); None is ``{}``.
      dtype: the run's computation dtype; passed as ``dtype=`` only when it is not float32.
      where: the config field, for errors (``"config.student.factory='pkg.mod:fn'"``).

    Raises:
      ModelFactoryError: the factory cannot be imported, does not accept these arguments
        (``num_classes``, the options, ``dtype`` when it must be passed), fails, or returns
        something other than a ``flax.linen.Module``.
    """
    if isinstance(factory, str):
        factory = import_factory(factory, where)
    elif not callable(factory):
        raise ModelFactoryError(f"{where}: the factory must be callable, got a {type(factory).__name__}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ModelFactoryError(f"{where}: num_classes must be a positive int, got {num_classes!r}")
    options_field = _options_field(where)
    if options is None:
        kwargs = {}
    elif hasattr(options, "to_dict"):
        kwargs = dict(options.to_dict())
    else:
        kwargs = dict(options)
    if "num_classes" in kwargs:
        raise ModelFactoryError(
            f"{where}: {options_field} sets num_classes; zkd passes the dataset's number of classes "
            f"({num_classes}) itself: remove it from {options_field}")
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):  # a builtin or extension type: no signature to read
        signature = None
    if dtype is not None and jnp.dtype(dtype) != jnp.float32:
        if "dtype" in kwargs:
            raise ModelFactoryError(
                f"{where}: {options_field} sets dtype={kwargs['dtype']!r} and config.dtype asks for "
                f"{jnp.dtype(dtype).name}; remove dtype from {options_field} (zkd passes config.dtype)")
        if not _accepts(signature, "dtype"):
            raise ModelFactoryError(
                f"{where}: config.dtype is {jnp.dtype(dtype).name}, so zkd calls the factory with "
                f"dtype=..., but its signature {_short(signature)} takes no dtype. Add a `dtype=None` "
                "parameter and pass it to the module's layers as their computation dtype (keep "
                "the parameters float32), or set config.dtype='float32'")
        kwargs["dtype"] = dtype
    if signature is not None:
        try:
            signature.bind(num_classes=num_classes, **kwargs)
        except TypeError as err:
            raise ModelFactoryError(
                f"{where}: the factory's signature {_short(signature)} does not accept "
                f"num_classes={num_classes} with {options_field}={ {k: v for k, v in kwargs.items() if k != 'dtype'} } "
                f"({err}). A factory is factory(num_classes, **options); match {options_field} to "
                "its keyword parameters") from err
    try:
        module = factory(num_classes=num_classes, **kwargs)
    except ZkdError:
        raise
    except Exception as err:
        raise ModelFactoryError(
            f"{where}: the factory raised {_first_line(err)} when called with "
            f"num_classes={num_classes} and {sorted(kwargs)}; fix the factory or {options_field}") from err
    if not isinstance(module, nn.Module):
        what = (f"the class {module.__name__} (call it: return {module.__name__}(...))"
                if isinstance(module, type) else f"a {type(module).__name__}")
        raise ModelFactoryError(
            f"{where}: the factory returned {what}, not a flax.linen.Module instance; a factory "
            "must return the module, e.g. `return MyNet(num_classes=num_classes, **options)`")
    return module


# ----------------------------------------------------------------------------- check


def _describe(out: Any) -> str:
    if isinstance(out, (tuple, list)):
        return f"a {type(out).__name__} of {len(out)} items"
    if isinstance(out, Mapping):
        return f"a {type(out).__name__} with keys {sorted(map(str, out))}"
    return f"a {type(out).__name__}"


def _check_logits(out: Any, num_classes: int, call: str, prefix: str) -> None:
    if not isinstance(out, jax.ShapeDtypeStruct):
        raise ModelContractError(
            f"{prefix}: {call} returned {_describe(out)}; it must return ONE array of logits "
            f"[B, num_classes={num_classes}]. Return only the logits (expose other outputs with "
            "self.sow('intermediates', name, value))")
    if tuple(out.shape) != (CHECK_BATCH_SIZE, num_classes):
        fix = ("flatten/pool to [B, num_classes]" if out.shape and out.shape[-1] == num_classes
               else "build the classifier with num_classes outputs (the factory's num_classes argument)")
        raise ModelContractError(
            f"{prefix}: {call} on a batch of {CHECK_BATCH_SIZE} returned logits of shape "
            f"{tuple(out.shape)}, expected {(CHECK_BATCH_SIZE, num_classes)} = [B, num_classes="
            f"{num_classes}]; {fix}")
    if not jnp.issubdtype(out.dtype, jnp.floating):
        raise ModelContractError(
            f"{prefix}: {call} returned logits of dtype {out.dtype}; they must be floating "
            "(float32, bfloat16, ...): return the raw scores, not class indices")


def _wrap(err: Exception, call: str, prefix: str, train: bool = False) -> ModelContractError:
    if isinstance(err, flax.errors.InvalidRngError) and train:
        fix = ("in training zkd passes one rng stream, 'dropout' (rngs={'dropout': key}): draw all "
               "randomness (dropout, drop-path, ...) from self.make_rng('dropout')")
    elif isinstance(err, flax.errors.InvalidRngError):
        fix = ("train=False must be deterministic and need no rng: make dropout / drop-path "
               "deterministic when train is False; draw randomness from the 'dropout' stream only")
    elif isinstance(err, (flax.errors.ModifyScopeVariableError, flax.errors.ScopeCollectionNotFound)):
        fix = ("only 'batch_stats' may change, and only with train=True (BatchNorm: "
               "use_running_average=not train)")
    elif isinstance(err, TypeError) and "train" in str(err):
        fix = "the module's __call__ must be __call__(self, x, train: bool)"
    else:
        fix = "fix the module so that it meets zkd.models.user.CONTRACT"
    return ModelContractError(f"{prefix}: {call} failed: {_first_line(err)}. {fix}")


def check_module(module: nn.Module, input_shape: tuple, num_classes: int, *, where: str,
                 role: str = "student") -> None:
    """Check ``module`` against ``CONTRACT`` without computing anything (``jax.eval_shape``).

    On a float32 batch [2, H, W, C] (``input_shape`` = (H, W, C)):
    ``init({"params", "dropout"}, x, train=False)`` must give only "params" / "batch_stats";
    ``apply(variables, x, train=False)`` with no rng must return one floating array
    [2, num_classes]; for ``role="student"`` also ``apply(..., train=True, rngs={"dropout": k},
    mutable=["batch_stats"])`` must work and give the same shape, changing nothing else.

    Raises:
      ModelContractError: naming the broken rule, ``where`` (the config field), ``role`` and the
        fix; an exception inside init / apply is wrapped (kept as ``__cause__``).
    """
    if role not in ("student", "teacher"):
        raise ValueError(f"role must be 'student' or 'teacher', got {role!r}")
    prefix = f"{where} ({role})"
    if not isinstance(module, nn.Module):
        raise ModelContractError(f"{prefix}: expected a flax.linen.Module instance, got {_describe(module)}")
    x = jax.ShapeDtypeStruct((CHECK_BATCH_SIZE, *tuple(input_shape)), jnp.float32)
    name = type(module).__name__
    shape = f"x float32 {list(x.shape)}"

    call = f"{name}.init({{'params', 'dropout'}}, {shape}, train=False)"
    rngs = {"params": jax.random.key(0), "dropout": jax.random.key(1)}
    try:
        variables = jax.eval_shape(lambda x: module.init(rngs, x, train=False), x)
    except ZkdError:
        raise
    except Exception as err:
        raise _wrap(err, call, prefix) from err
    extra = sorted(set(variables) - set(ALLOWED_COLLECTIONS))
    if extra:
        raise ModelContractError(
            f"{prefix}: {name} has variable collections {extra} besides params/batch_stats; zkd "
            "keeps and updates only 'params' and 'batch_stats'. Keep state in those (BatchNorm "
            "statistics in 'batch_stats'), or sow diagnostics into 'intermediates'")

    call = f"{name}.apply(variables, {shape}, train=False) with no rngs"
    try:
        out = jax.eval_shape(lambda v, x: module.apply(v, x, train=False), variables, x)
    except ZkdError:
        raise
    except Exception as err:
        raise _wrap(err, call, prefix) from err
    _check_logits(out, num_classes, call, prefix)

    if role == "teacher":
        return
    call = f"{name}.apply(variables, {shape}, train=True, rngs={{'dropout': key}}, mutable=['batch_stats'])"

    def train(v, x):
        return module.apply(v, x, train=True, rngs={"dropout": jax.random.key(2)}, mutable=["batch_stats"])

    try:
        out, updates = jax.eval_shape(train, variables, x)
    except ZkdError:
        raise
    except Exception as err:
        raise _wrap(err, call, prefix, train=True) from err
    _check_logits(out, num_classes, call, prefix)
    before = jax.tree.map(lambda s: (s.shape, s.dtype), variables.get("batch_stats", {}))
    after = jax.tree.map(lambda s: (s.shape, s.dtype), updates.get("batch_stats", before))
    if before != after:
        raise ModelContractError(
            f"{prefix}: {call} returned batch_stats of another structure than init's; the running "
            "statistics must keep their variables, shapes and dtypes from step to step")

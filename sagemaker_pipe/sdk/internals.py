"""The SageMaker SDKs' private names sagemaker-pipe hooks into, with the versions they were checked in.

Local mode has no public extension point, so the add-on subclasses or wraps these. Before a job
starts, every name (and the parameters of every method it overrides) is checked; an SDK whose
internals differ fails with one line naming its version. It never falls back to the SDK's File mode.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
from collections.abc import Iterator
from importlib import metadata
from typing import Any

from sagemaker_pipe.errors import PipeError

# (module, dotted attribute, the parameters an overridden method must take, or None for any object)
Name = tuple[str, str, tuple[str, ...] | None]

V2_PACKAGE = "sagemaker"
V2_CHECKED = "2.82.0 to 2.257.7"  # 2.257.7 run by the tests; 2.82.0's source read (same names, docker-compose)
V2_NAMES: tuple[Name, ...] = (
    ("sagemaker.local.local_session", "LocalSession._initialize", None),
    ("sagemaker.local.local_session", "LocalSagemakerClient.create_training_job",
     ("self", "TrainingJobName", "AlgorithmSpecification", "OutputDataConfig", "ResourceConfig",
      "InputDataConfig", "Environment", "kwargs")),
    ("sagemaker.local.local_session", "_SageMakerContainer", None),  # looked up by create_training_job
    ("sagemaker.local.image", "_SageMakerContainer.train",
     ("self", "input_data_config", "output_data_config", "hyperparameters", "environment", "job_name")),
    ("sagemaker.local.image", "_SageMakerContainer._generate_compose_file",
     ("self", "command", "additional_volumes", "additional_env_vars")),
    ("sagemaker.local.image", "_SageMakerContainer.retrieve_artifacts",
     ("self", "compose_data", "output_data_config", "job_name")),
    # also _SageMakerContainer._get_compose_cmd_prefix where it exists (later 2.x; 2.82 runs `docker-compose`)
    ("sagemaker.local.image", "DOCKER_COMPOSE_FILENAME", None),
)

V3_PACKAGE = "sagemaker-train"
V3_CHECKED = "1.27.0"  # run by the tests
V3_NAMES: tuple[Name, ...] = (
    ("sagemaker.train.model_trainer", "_LocalContainer", None),  # looked up by ModelTrainer.train
    ("sagemaker.train.model_trainer", "ModelTrainer.train", None),
    ("sagemaker.train.model_trainer", "ModelTrainer.training_input_mode", None),
    ("sagemaker.train.local.local_container", "_LocalContainer.train", ("self", "wait")),
    ("sagemaker.train.local.local_container", "_LocalContainer._generate_compose_file",
     ("self", "environment", "volumes")),
    ("sagemaker.train.local.local_container", "_LocalContainer.retrieve_artifacts", ("self", "compose_data")),
    ("sagemaker.train.local.local_container", "_LocalContainer._get_compose_cmd_prefix", ("self",)),
    ("sagemaker.train.local.local_container", "DOCKER_COMPOSE_FILENAME", None),
    ("sagemaker.core.utils.utils", "serialize", None),
)


class SdkMismatch(PipeError):
    """The installed SDK is not one whose local mode sagemaker-pipe knows how to extend."""


def version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def check(package: str, checked: str, names: tuple[Name, ...]) -> None:
    """Raise SdkMismatch, one line naming the SDK's version, unless every name is as expected."""
    for module_name, dotted, params in names:
        problem = _problem(module_name, dotted, params)
        if problem is not None:
            raise SdkMismatch(
                f"{package} {version(package)}: {problem}; sagemaker-pipe's local Pipe mode was checked with "
                f"{package} {checked} and does not fall back to File mode"
            )


def check_v2() -> None:
    check(V2_PACKAGE, V2_CHECKED, V2_NAMES)


def check_v3() -> None:
    check(V3_PACKAGE, V3_CHECKED, V3_NAMES)


def _problem(module_name: str, dotted: str, params: tuple[str, ...] | None) -> str | None:
    try:
        obj: object = importlib.import_module(module_name)
    except ImportError as e:
        return f"cannot import {module_name} ({e})"
    for part in dotted.split("."):
        if part in getattr(obj, "model_fields", {}):  # a pydantic field has no class attribute
            return None
        if not hasattr(obj, part):
            return f"{module_name}.{dotted} does not exist"
        obj = getattr(obj, part)
    if params is not None:
        try:
            found = tuple(inspect.signature(obj).parameters)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return f"{module_name}.{dotted} is not a function"
        if found != params and found != params[1:]:  # static methods have no self
            return f"{module_name}.{dotted} takes ({', '.join(found)}), expected ({', '.join(params)})"
    return None


@contextlib.contextmanager
def swapped(owner: Any, name: str, value: Any) -> Iterator[None]:
    """Replace one of the SDK's names for the duration of a call, and put it back."""
    original = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, original)

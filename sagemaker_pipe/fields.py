"""SageMaker's field names, and the "did you mean" that names a near miss.

A channel file may be a whole CreateTrainingJob request or `aws sagemaker describe-training-job`
output, so every top-level key of either is accepted, even the ones this tool does not use;
anything else is a typo worth stopping for (`ResourceConfg` silently ignored would serve one host).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any

# CreateTrainingJobRequest and DescribeTrainingJobResponse members (botocore's sagemaker service
# model; tests/test_config_suggestions.py checks this list against the installed botocore).
TRAINING_JOB_KEYS = frozenset({
    "AlgorithmSpecification", "AutoMLJobArn", "BillableTimeInSeconds", "BillableTokenCount", "CheckpointConfig",
    "CreationTime", "DebugHookConfig", "DebugRuleConfigurations", "DebugRuleEvaluationStatuses",
    "EnableInterContainerTrafficEncryption", "EnableManagedSpotTraining", "EnableNetworkIsolation", "Environment",
    "ExperimentConfig", "FailureReason", "FinalMetricDataList", "HyperParameters", "InfraCheckConfig",
    "InputDataConfig", "LabelingJobArn", "LastModifiedTime", "MlflowConfig", "MlflowDetails", "ModelArtifacts",
    "ModelPackageConfig", "OutputDataConfig", "OutputModelPackageArn", "ProfilerConfig",
    "ProfilerRuleConfigurations", "ProfilerRuleEvaluationStatuses", "ProfilingStatus", "ProgressInfo",
    "RemoteDebugConfig", "ResourceConfig", "RetryStrategy", "RoleArn", "SecondaryStatus",
    "SecondaryStatusTransitions", "ServerlessJobConfig", "SessionChainingConfig", "StoppingCondition", "Tags",
    "TensorBoardOutputConfig", "TrainingEndTime", "TrainingJobArn", "TrainingJobName", "TrainingJobStatus",
    "TrainingStartTime", "TrainingTimeInSeconds", "TuningJobArn", "VpcConfig", "WarmPoolStatus",
})
TOP_LEVEL_KEYS = TRAINING_JOB_KEYS | {
    "TrainingInputMode",  # this tool's shorthand for AlgorithmSpecification.TrainingInputMode
    "ResponseMetadata",  # boto3's describe_training_job() result saved as JSON
}


def did_you_mean(value: Any, choices: Iterable[str]) -> str:
    """`did you mean X?` for the closest choice, ignoring case, or "" when none is close."""
    if not isinstance(value, str):
        return ""
    by_lower = {c.lower(): c for c in choices}
    close = difflib.get_close_matches(value.lower(), list(by_lower), n=1, cutoff=0.75)
    return f"did you mean {by_lower[close[0]]}?" if close else ""


def got(value: Any, allowed: Iterable[str]) -> str:
    """`(got 'Recordio'; did you mean RecordIO?)` for a value outside an enum."""
    hint = did_you_mean(value, allowed)
    return f"(got {value!r}{'; ' + hint if hint else ''})"


def shown(key: Any) -> str:
    """A field name as typed when it is plain printable text, else its repr (one line, NULs visible)."""
    return key if isinstance(key, str) and key.isprintable() else repr(key)


def unknown(key: Any, known: Iterable[str], prefix: str = "", kind: str = "field") -> str:
    """`unknown field ChanelName (did you mean ChannelName?)`; prefix is the path to the key's mapping."""
    hint = did_you_mean(key, known)
    return f"unknown {kind} {prefix}{shown(key)}{f' ({hint})' if hint else ''}"

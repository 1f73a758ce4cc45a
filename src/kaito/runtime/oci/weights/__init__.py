"""Model weights as OCI artifacts: the format, the node cache, and push/pull (one module each)."""

from kaito.runtime.oci.registry import ANNOTATION_MODEL
from kaito.runtime.oci.weights.cache import BlobCache, default_cache_dir
from kaito.runtime.oci.weights.format import (
    ANNOTATION_FILES,
    ANNOTATION_REVISION,
    ANNOTATION_TITLE,
    ARTIFACT_TYPE,
    MEDIA_FILE,
    MEDIA_WEIGHTS,
    MEDIA_WEIGHTS_CONFIG,
    WeightFile,
    WeightsError,
    WeightsPackage,
    model_files,
    package_weights,
    weight_layers,
)
from kaito.runtime.oci.weights.transfer import (
    WeightsPullResult,
    WeightsPushResult,
    pull_weights,
    push_weights,
)

__all__ = [
    "ANNOTATION_FILES",
    "ANNOTATION_MODEL",
    "ANNOTATION_REVISION",
    "ANNOTATION_TITLE",
    "ARTIFACT_TYPE",
    "MEDIA_FILE",
    "MEDIA_WEIGHTS",
    "MEDIA_WEIGHTS_CONFIG",
    "BlobCache",
    "WeightFile",
    "WeightsError",
    "WeightsPackage",
    "WeightsPullResult",
    "WeightsPushResult",
    "default_cache_dir",
    "model_files",
    "package_weights",
    "pull_weights",
    "push_weights",
    "weight_layers",
]
